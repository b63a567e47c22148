"""Two leukocyte networks trained on one split with different seeds: each alone, averaged, and each combined with
the measures (1.3's logistic regression, or the one-hidden-layer perceptron 1.4 serves), without training again.

    make train-leukocyte    # seed 0: .cache/training/leukocyte-network-answers-fold<k>-of5-seed0.npz
    .venv/bin/python -m core.training leukocyte --data ../shared/data/leukocyte/train \\
        --weights ../shared/weights/mobilenet_v1_0.25_224/mobilenet_v1_0.25_224.h5 --mode ft --epochs 40 \\
        --cross-validate --no-colour-jitter --seed 1 --split-seed 0 --out /tmp/leukocyte-seed1
    .venv/bin/python -m bench.leukocyte_seeds

Each fold's measure classifiers are fitted on that fold's training cells; every answer is temperature-scaled with
the temperature fitted on the other folds' held-out answers (as the shipped model is), and every rule is scored
on the pooled held-out cells of the five folds. Writes bench/leukocyte_seeds.json.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.leukocyte_combination import CACHE, REGRESSION_STRENGTH, scores, weighted_geometric_mean
from config import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "leukocyte" / "train")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "leukocyte_seeds.json")
    args = parser.parse_args()
    from core.assets import read_spec
    from core.evaluation import fit_temperature, temper
    from core.models.leukocyte import LeukocyteModel
    from core.models.leukocyte_training import LeukocyteTraining, fit_measure_classifier
    from core.training.data import load_arrays
    from core.training.linear import fit_multinomial

    model = LeukocyteModel(read_spec(ROOT / "assets" / "leukocyte"))
    arrays = load_arrays(LeukocyteTraining(model), args.data, CACHE)
    names = {0: "seed0.npz", 1: "seed1-split0.npz"}
    paths = {(k, s): CACHE / f"leukocyte-network-answers-fold{k}-of5-{names[s]}" for k in range(5) for s in (0, 1)}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing under {CACHE}: {', '.join(missing)}; run the two trainings in the docstring")
    print(f"[measures] {len(arrays.y)} windows", flush=True)
    measures = np.concatenate([model.measures_of(arrays.x[i:i + 256]) for i in range(0, len(arrays.x), 256)])
    folds = []
    for k in range(5):
        saved = [dict(np.load(paths[(k, seed)])) for seed in (0, 1)]
        for part in ("train", "val", "test"):
            if not np.array_equal(saved[0][part], saved[1][part]):
                raise SystemExit(f"fold {k}: the two runs' {part} splits differ (was --split-seed 0 given?)")
        train, test = saved[0]["train"], saved[0]["test"]
        classes = len(model.spec.labels)
        linear = fit_multinomial(measures[train], arrays.y[train], classes, REGRESSION_STRENGTH)
        perceptron = fit_measure_classifier(measures[train], arrays.y[train], classes)
        folds.append({"test": test, "seed 0": saved[0]["network_test"], "seed 1": saved[1]["network_test"],
                      "linear": linear.probabilities(measures[test]),
                      "perceptron": perceptron.probabilities(measures[test])})
    truth = [arrays.y[fold["test"]] for fold in folds]
    y, groups = np.concatenate(truth), np.concatenate([arrays.groups[fold["test"]] for fold in folds])

    def cross_fitted(raw: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([temper(raw[k], fit_temperature(np.concatenate(raw[:k] + raw[k + 1:]),
                                                               np.concatenate(truth[:k] + truth[k + 1:])))
                               for k in range(len(raw))])

    def averaged(fold: dict) -> np.ndarray:
        return (fold["seed 0"] + fold["seed 1"]) / 2

    def both(network: Callable[[dict], np.ndarray], measures_by: str) -> Callable[[dict], np.ndarray]:
        return lambda fold: weighted_geometric_mean(network(fold), fold[measures_by], 0.5)

    rules: dict[str, Callable[[dict], np.ndarray]] = {
        "network, seed 0": lambda fold: fold["seed 0"],
        "network, seed 1": lambda fold: fold["seed 1"],
        "the two networks averaged": averaged,
        "network seed 0 + measures (logistic regression; 1.3's recipe)": both(lambda f: f["seed 0"], "linear"),
        "network seed 1 + measures (logistic regression)": both(lambda f: f["seed 1"], "linear"),
        "the two networks averaged + measures (logistic regression)": both(averaged, "linear"),
        "network seed 0 + measures (perceptron)": both(lambda f: f["seed 0"], "perceptron"),
        "network seed 1 + measures (perceptron)": both(lambda f: f["seed 1"], "perceptron"),
        "the two networks averaged + measures (perceptron)": both(averaged, "perceptron"),
    }
    results = {}
    for name, rule in rules.items():
        answers = cross_fitted([rule(fold) for fold in folds])
        results[name] = scores(y, answers, groups, model.spec.label_names)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    args.out.write_text(json.dumps({"command": "python -m bench.leukocyte_seeds", "rules": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
