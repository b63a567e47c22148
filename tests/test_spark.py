"""``python -m core.wsi predict``: the local and the Spark engine give the same grid on the same slide."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.wsi.__main__ import main as wsi_main
from tests.images import pyramid_tiff, section


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_spark_and_local_engines_agree(tmp_path):
    slide = tmp_path / "section.tif"
    pyramid_tiff(slide, section((1024, 768), dark_square=(400, 300, 200)), mpp=0.5, levels=2)
    grids = {}
    for engine in ("local", "spark"):
        out = tmp_path / engine
        args = ["predict", str(slide), "--engine", engine, "--out", str(out), "--option", "threshold=0.3"]
        assert wsi_main(args + (["--master", "local[2]", "--partitions", "3"] if engine == "spark" else [])) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["engine"] == engine and (out / "heatmap.png").stat().st_size > 0
        assert json.loads((out / "regions.geojson").read_text())["type"] == "FeatureCollection"
        grids[engine] = np.array(result["grid"]["probabilities"], dtype=float)
    assert np.isfinite(grids["local"]).sum() > 100
    np.testing.assert_allclose(grids["spark"], grids["local"], atol=1e-6, equal_nan=True)


def test_cli_refuses_what_it_cannot_do(tmp_path, capsys):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"no slide")
    assert wsi_main(["predict", str(junk)]) == 2
    assert "junk.svs" in capsys.readouterr().err
    image = tmp_path / "plain.tif"
    pyramid_tiff(image, section((256, 256)), mpp=0.5, levels=1)
    assert wsi_main(["predict", str(image), "--model", "leukocyte"]) == 2
    assert wsi_main(["predict", str(image), "--option", "threshold=7"]) == 2
