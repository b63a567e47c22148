"""The shared training command, end to end on a tiny drawn data set, and its backbone loading."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from core.training.__main__ import main as train_main
from tests.conftest import MOBILENET_H5, config_with, make_app, needs
from tests.images import encode, smear

CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def tiny_dataset(root: Path, cells_per_class: int = 5, files_per_cell: int = 2) -> Path:
    """The leukocyte layout (``<class>/_N_M.jpeg``) with drawn cells whose size depends on the class."""
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for cell in range(cells_per_class):
            for copy in range(files_per_cell):
                seed = 100 * label + 10 * cell + copy
                image = smear(leukocytes=((160, 120, 22 + 6 * label),), platelets=(), seed=seed)
                image.save(root / name / f"_{cell}_{copy}.jpeg", quality=95)
    return root


def test_training_command_writes_a_model_the_service_loads(tmp_path: Path):
    data = tiny_dataset(tmp_path / "data")
    out = tmp_path / "assets" / "leukocyte"
    train_main(["leukocyte", "--data", str(data), "--weights", "none", "--epochs", "1", "--batch-size", "8",
                "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    meta = json.loads((out / "model.json").read_text())
    report = meta["metrics"]["test"]
    confusion = np.array(report["confusion_matrix"]["rows_true_columns_predicted"])
    assert confusion.shape == (4, 4) and confusion.sum() == report["examples"] > 0
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-4)
    assert set(report["per_class"]) == set(CLASSES)
    assert meta["training"]["command"].startswith("python -m core.training leukocyte")
    assert meta["training"]["settings"]["weights"] == "none" and meta["inference"]["tta"] is True

    # the network's answers on the fold's validation and test files are kept for later combination studies
    with np.load(tmp_path / "cache" / "leukocyte-network-answers-fold0-of5-seed0.npz") as answers:
        assert len(answers["test"]) == report["examples"]
        assert not set(answers["test"]) & set(answers["val"]) and not set(answers["test"]) & set(answers["train"])
        for part in ("val", "test"):
            probabilities = answers[f"network_{part}"]
            assert probabilities.shape == (len(answers[part]), 4)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)

    app = make_app(config_with(assets_dir=tmp_path / "assets"))
    response = app.test_client().post("/model/leukocyte/predict", data={"image": (io.BytesIO(encode(smear())), "a.png")},
                                      content_type="multipart/form-data")
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 1


def test_a_split_seed_keeps_the_split_while_the_network_seed_changes(tmp_path: Path):
    data = tiny_dataset(tmp_path / "data", cells_per_class=6)
    cache = tmp_path / "cache"
    common = ["leukocyte", "--data", str(data), "--weights", "none", "--epochs", "1", "--batch-size", "8",
              "--cache-dir", str(cache)]
    train_main(common + ["--seed", "0", "--out", str(tmp_path / "seed0")])
    train_main(common + ["--seed", "1", "--split-seed", "0", "--out", str(tmp_path / "seed1")])
    train_main(common + ["--seed", "1", "--out", str(tmp_path / "seed1-own-split")])
    runs = {}
    for name in ("seed0", "seed1-split0", "seed1"):
        with np.load(cache / f"leukocyte-network-answers-fold0-of5-{name}.npz") as answers:
            runs[name] = {part: answers[part] for part in ("train", "val", "test")}
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(runs["seed0"][part], runs["seed1-split0"][part])
    assert any(not np.array_equal(runs["seed0"][p], runs["seed1"][p]) for p in ("val", "test"))
    assert json.loads((tmp_path / "seed1" / "model.json").read_text())["training"]["settings"]["split_seed"] == 0


def test_cross_validation_fits_each_folds_temperature_on_the_other_folds_held_out_cells(tmp_path: Path):
    data = tiny_dataset(tmp_path / "data", cells_per_class=6)
    out = tmp_path / "assets" / "leukocyte"
    train_main(["leukocyte", "--data", str(data), "--weights", "none", "--epochs", "1", "--batch-size", "8",
                "--folds", "2", "--cross-validate", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    meta = json.loads((out / "model.json").read_text())
    calibration = meta["metrics"]["calibration"]
    assert calibration["fitted_on"] == "the other 1 folds' held-out groups (cross-fitted)"
    assert meta["inference"]["temperature"] == calibration["temperature"] > 0
    assert "validation_temperature" in calibration and 0 <= calibration["ece_test_after"] <= 1
    pooled = meta["metrics"]["test"]
    assert pooled["examples"] == 6 * 4 * 2  # every file held out once


def test_unknown_backbone_and_missing_weights_file_are_clear_errors(tmp_path: Path):
    from core.training.backbones import build_classifier

    with pytest.raises(ValueError, match="unknown backbone"):
        build_classifier("alexnet", "none", (64, 64, 3), 4, "tl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_classifier("mobilenet_v1_0.25", str(tmp_path / "none.h5"), (64, 64, 3), 4, "tl")


@pytest.mark.parametrize("mode", ["tl", "ft"])
def test_modes_freeze_what_they_promise(mode):
    from core.training.backbones import build_classifier

    network = build_classifier("mobilenet_v1_0.25", "none", (64, 64, 3), 4, mode)
    backbone = network.get_layer("mobilenet_0.25_64")
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    if mode == "tl":
        assert not trainable
    else:
        assert "conv1" not in trainable and "conv_pw_1" not in trainable  # the first block stays frozen
        assert {"conv_dw_2", "conv_pw_13"} <= trainable
    assert network.get_layer("head").trainable


@needs(MOBILENET_H5)
def test_local_h5_backbone_weights_load_by_layer_name():
    import h5py

    from core.training.backbones import build_backbone

    backbone = build_backbone("mobilenet_v1_0.25", str(MOBILENET_H5), (96, 96, 3))
    with h5py.File(MOBILENET_H5) as handle:
        stored = handle["model_weights/conv_pw_13/conv_pw_13/kernel:0"][()]
    assert np.array_equal(backbone.get_layer("conv_pw_13").get_weights()[0], stored)


@pytest.mark.parametrize("name", ["mobilenet_v1_0.5", "mobilenet_v2", "efficientnet_b0", "vgg16", "resnet50"])
def test_every_listed_backbone_builds_and_freezes_its_first_block(name):
    from core.training.backbones import BACKBONES, build_classifier

    network = build_classifier(name, "none", (64, 64, 3), 2, "ft")
    backbone = next(layer for layer in network.layers if hasattr(layer, "layers"))
    first = backbone.get_layer(BACKBONES[name].first_block_end)
    later = backbone.layers[backbone.layers.index(first) + 1:]
    assert not first.trainable and any(layer.trainable and layer.weights for layer in later)
    assert network.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0).shape == (1, 2)


def test_stain_jitter_changes_the_stains_only_within_its_range():
    from skimage.color import rgb2hed

    from core.training.data import hed_jitter
    from tests.images import section

    tissue = section((64, 64), seed=3).astype(np.float32)[None].repeat(16, axis=0)
    assert np.allclose(np.asarray(hed_jitter(tissue, 0.0, 0)), tissue, atol=0.01)  # sigma 0: the image back
    jittered = np.asarray(hed_jitter(tissue, 0.1, 0))
    assert jittered.shape == tissue.shape and 0 <= jittered.min() and jittered.max() <= 255
    assert np.abs(jittered - tissue).mean(axis=(1, 2, 3)).min() > 0.2  # every image changed
    # the haematoxylin density of every image scaled by at most 1 ± 0.1 (plus a shift of at most 0.01)
    before = rgb2hed(tissue[0] / 255.0)[..., 0].mean()
    after = np.array([rgb2hed(np.clip(image / 255.0, 1e-6, 1))[..., 0].mean() for image in jittered])
    assert np.all(after >= 0.9 * before - 0.011) and np.all(after <= 1.1 * before + 0.011)
    assert after.std() > 0  # and not all alike
