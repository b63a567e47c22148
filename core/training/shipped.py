"""Commands that work on a model's shipped weights rather than train new ones (the domain statistics,
recalibration): their common arguments and the model with its training recipe."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from config import ROOT


def arguments(prog: str, description: str | None, argv: list[str] | None,
              flags: dict[str, str] | None = None) -> argparse.Namespace:
    """model_id, --data, --assets, --cache-dir and the command's own on/off ``flags`` (name: help), parsed
    from ``argv``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id")
    parser.add_argument("--data", type=Path, required=True, help="the model's training data folder")
    parser.add_argument("--assets", type=Path, default=ROOT / "assets")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "training")
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return args


def shipped_model(args: argparse.Namespace):
    """(spec, model, recipe) of ``args.model_id`` in ``args.assets``; the model has no network loaded yet."""
    from core.assets import read_spec
    from core.registry import model_class
    from core.training.recipe import recipe_for

    spec = read_spec(args.assets / args.model_id)
    model = model_class(args.model_id)(spec)
    return spec, model, recipe_for(model)
