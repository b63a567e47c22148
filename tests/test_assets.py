"""A missing or corrupt asset stops start-up with a message naming the file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app import create_app
from config import ROOT
from core.errors import AssetError
from tests.conftest import config_with


@pytest.fixture()
def assets(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "assets" / "leukocyte", tmp_path / "leukocyte")
    return tmp_path


def test_corrupt_weights_stop_start_up_naming_the_file(assets):
    weights = assets / "leukocyte" / "leukocyte.keras"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=r"leukocyte\.keras is corrupt"):
        create_app(config_with(assets_dir=assets))


def test_missing_weights_stop_start_up_naming_the_file(assets):
    (assets / "leukocyte" / "leukocyte.keras").unlink()
    with pytest.raises(AssetError, match=r"leukocyte\.keras is missing"):
        create_app(config_with(assets_dir=assets))


def test_broken_model_json_names_the_file(assets):
    (assets / "leukocyte" / "model.json").write_text("{not json")
    with pytest.raises(AssetError, match=r"model\.json is not valid JSON"):
        create_app(config_with(assets_dir=assets))


def test_enabling_a_model_without_assets_is_refused(assets):
    with pytest.raises(AssetError, match="nope"):
        create_app(config_with(assets_dir=assets, models=("leukocyte", "nope")))


def test_shipped_weights_match_their_checksum_and_are_small():
    from core.assets import read_spec, verify_weights

    spec = read_spec(ROOT / "assets" / "leukocyte")
    verify_weights(spec)
    assert spec.weights_path.stat().st_size < 15 * 1024 * 1024
