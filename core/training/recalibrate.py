"""Choose a model's inference settings again for its shipped weights, and measure it again.

For when the rule that chooses a setting has changed and retraining would change the weights as well: the
recipe's ``calibrate`` runs on the validation groups of the split the training run recorded (model.json
``training.settings``), and its ``evaluate`` on that split's test groups, through the serving code. The
main network's weights are not touched; with ``--companions`` the networks a model serves beside it (e.g. the
mitosis subtype classifier, model.json ``subtype``) are trained again first, on the same split, as their
model.json section says. model.json records the run under ``training.recalibrated``.

    python -m core.training.recalibrate mitosis --data ../shared/data/mitosis [--companions]
"""
from __future__ import annotations

import shlex
import sys
from datetime import date
from types import SimpleNamespace

from core.training.shipped import arguments, shipped_model


def train_companions_again(spec, recipe, groups: dict[str, set[str]], data) -> list[str]:
    """The recipe's companion networks trained again on ``groups`` with the recorded backbone and seed,
    written over the shipped ones; the model.json sections they replaced."""
    import keras

    recorded = spec.meta["training"]["settings"]
    settings = SimpleNamespace(data=data, out=spec.directory, backbone=recorded["backbone"],
                               weights=recorded["weights"], mode=recorded["mode"],
                               batch_size=recorded["batch_size"], seed=recorded["seed"])
    keras.utils.set_random_seed(settings.seed)
    sections = recipe.train_companions(settings, groups)
    spec.meta.update(sections)
    return sorted(sections)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = arguments("python -m core.training.recalibrate", __doc__, argv,
                     {"--companions": "train the companion networks (e.g. the mitosis subtype classifier) again first"})
    from core.assets import write_meta

    spec, model, recipe = shipped_model(args)
    model.configure(domain_check=False)  # measured as trained; the domain check does not change answers
    model.load()  # checks every shipped file's sha256
    arrays, split = recipe.recorded_split(args.data, args.cache_dir, spec.meta.get("training", {}).get("settings", {}))
    groups = {name: set(arrays.groups[index].tolist()) for name, index in split.items()}
    retrained = train_companions_again(spec, recipe, groups, args.data) if args.companions else []
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
        "command": "python -m core.training.recalibrate " + shlex.join(argv),
        "date": date.today().isoformat(),
        "sections": retrained + sorted(chosen) + (["metrics.detection"] if evaluation else [])}
    write_meta(spec.directory, spec.meta)
    print(f"[recalibrate] wrote {spec.directory / 'model.json'}", flush=True)


if __name__ == "__main__":
    main()
