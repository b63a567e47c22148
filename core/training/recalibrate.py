"""Choose a model's inference settings again for its shipped weights, and measure it again.

For when the rule that chooses a setting has changed and retraining would change the weights as well: the
recipe's ``calibrate`` runs on the validation groups of the split the training run recorded (model.json
``training.settings``), and its ``evaluate`` on that split's test groups, through the serving code. The
weights are not touched; model.json records the run under ``training.recalibrated``.

    python -m core.training.recalibrate mitosis --data ../shared/data/mitosis
"""
from __future__ import annotations

import shlex
import sys
from datetime import date

from core.training.shipped import arguments, shipped_model


def main(argv: list[str] | None = None) -> None:
    args = arguments("python -m core.training.recalibrate", __doc__, argv)
    from core.assets import write_meta

    spec, model, recipe = shipped_model(args)
    model.configure(domain_check=False)  # measured as trained; the domain check does not change answers
    model.load()  # checks every shipped file's sha256
    arrays, split = recipe.recorded_split(args.data, args.cache_dir, spec.meta.get("training", {}).get("settings", {}))
    groups = {name: set(arrays.groups[index].tolist()) for name, index in split.items()}
    chosen = recipe.calibrate(args.data, groups["val"]) or {}
    for section, values in chosen.items():
        spec.meta.setdefault(section, {}).update(values)
    model.apply_defaults()
    print(f"[recalibrate] chosen on {len(groups['val'])} validation groups: {chosen}", flush=True)
    evaluation = recipe.evaluate(args.data, groups["test"])
    if evaluation is not None:
        spec.meta.setdefault("metrics", {})["detection"] = evaluation
        print(f"[recalibrate] measured on {len(groups['test'])} test groups", flush=True)
    spec.meta.setdefault("training", {})["recalibrated"] = {
        "command": "python -m core.training.recalibrate " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": date.today().isoformat(), "sections": sorted(chosen) + (["metrics.detection"] if evaluation else [])}
    write_meta(spec.directory, spec.meta)
    print(f"[recalibrate] wrote {spec.directory / 'model.json'}", flush=True)


if __name__ == "__main__":
    main()
