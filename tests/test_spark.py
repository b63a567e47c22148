"""``python -m core.wsi predict``: the local and the Spark engine give the same answer on the same slide."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.wsi.__main__ import main as wsi_main
from tests.images import pyramid_tiff, section
from tests.test_mitosis import he_field


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


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or newer)")
def test_spark_and_local_find_the_same_mitoses_once_across_block_borders(tmp_path):
    """Two blocks of 4,096 px at 0.25 um/px; two nuclei lie within a window's margin of the border between them."""
    nuclei = ((300, 300), (4080, 600), (4112, 900), (4300, 400))
    rgb = np.full((1200, 4400, 3), 244, np.uint8)
    rgb[100:1100, 100:4350] = np.asarray(he_field((4400, 1200), blobs=nuclei))[100:1100, 100:4350]
    slide = tmp_path / "mitoses.tif"
    pyramid_tiff(slide, rgb, mpp=0.25)
    points = {}
    for engine in ("local", "spark"):
        out = tmp_path / engine
        args = ["predict", str(slide), "--model", "mitosis", "--engine", engine, "--out", str(out),
                "--option", "threshold=0"]
        assert wsi_main(args + (["--master", "local[2]", "--partitions", "2"] if engine == "spark" else [])) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["engine"] == engine
        points[engine] = sorted((m["x"], m["y"], m["probability"], m["subtype"]) for m in result["predictions"])
    assert points["spark"] == points["local"] and len(points["local"]) == len(nuclei)
    found = np.array([(x, y) for x, y, _, _ in points["local"]])
    assert all(np.hypot(*(found - n).T).min() <= 3 for n in nuclei)


def test_cli_refuses_what_it_cannot_do(tmp_path, capsys):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"no slide")
    assert wsi_main(["predict", str(junk)]) == 2
    assert "junk.svs" in capsys.readouterr().err
    image = tmp_path / "plain.tif"
    pyramid_tiff(image, section((256, 256)), mpp=0.5, levels=1)
    assert wsi_main(["predict", str(image), "--model", "leukocyte"]) == 2
    assert wsi_main(["predict", str(image), "--option", "threshold=7"]) == 2
