"""Train a model of the registry on its data and write its weights and report into its assets folder."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from config import ROOT


def _key_value(item: str) -> tuple[str, Any]:
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.training", description=__doc__)
    parser.add_argument("model_id", help="a model with assets/<id>/model.json and core/models/<id>.py")
    parser.add_argument("--data", type=Path, required=True, help="training data folder (the model's layout)")
    parser.add_argument("--weights", default="none",
                        help="backbone initialisation: imagenet (download), a local weights file, or none")
    parser.add_argument("--backbone", default="mobilenet_v1_0.25")
    parser.add_argument("--mode", choices=("tl", "ft"), default="ft",
                        help="tl: train the new head only; ft: fine-tune all but the first block")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 tl, 3e-4 ft)")
    parser.add_argument("--patience", type=int, default=8, help="early stopping: epochs without val-loss gain")
    parser.add_argument("--folds", type=int, default=5, help="the test split is one of this many grouped folds")
    parser.add_argument("--fold", type=int, default=0, help="which fold is the test split")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="groups kept for early stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=None,
                        help="shuffle the folds with this seed instead of --seed: networks of several seeds on one "
                             "split can then be compared and averaged (bench/leukocyte_seeds.py)")
    parser.add_argument("--assets", type=Path, default=ROOT / "assets", help="where model.json is read from")
    parser.add_argument("--out", type=Path, default=None, help="where to write weights + model.json "
                        "(default: the model's assets folder)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "training")
    parser.add_argument("--limit-groups", type=int, default=None,
                        help="use at most this many groups per class, one file each (smoke runs)")
    parser.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of model.json's input spec for this run (JSON value), e.g. "
                             "--input 'network_input=[32,32,3]'; the written model.json keeps it")
    parser.add_argument("--stain-jitter", type=float, default=0.0, metavar="SIGMA",
                        help="HED stain augmentation for stained tissue: each image's stain densities scaled by "
                             "U(1-SIGMA, 1+SIGMA) and shifted by U(-SIGMA/10, SIGMA/10), e.g. 0.05; 0 (default): none")
    parser.add_argument("--no-colour-jitter", dest="colour_jitter", action="store_false",
                        help="train without the brightness, contrast, saturation and hue jitter (geometry only): "
                             "for data from one lab, where colour itself tells classes apart")
    parser.add_argument("--no-tta", dest="tta", action="store_false",
                        help="serve without 8-fold dihedral test-time augmentation")
    parser.add_argument("--cross-validate", action="store_true",
                        help="also train on every other fold and record accuracy mean ± std over the folds")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core.training.trainer import TrainSettings, cross_validate, train

    settings = TrainSettings(
        model_id=args.model_id, data=args.data, out=args.out or args.assets / args.model_id,
        assets_dir=args.assets, backbone=args.backbone, weights=args.weights, mode=args.mode,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience,
        folds=args.folds, fold=args.fold, val_fraction=args.val_fraction, seed=args.seed,
        split_seed=args.split_seed,
        cache_dir=args.cache_dir, limit_groups=args.limit_groups, tta=args.tta, stain_sigma=args.stain_jitter,
        colour_jitter=args.colour_jitter,
        input_overrides=dict(_key_value(item) for item in args.input),
        command="python -m core.training " + shlex.join(argv if argv is not None else sys.argv[1:]),
    )
    (cross_validate if args.cross_validate else train)(settings)


if __name__ == "__main__":
    main()
