"""Ways of combining the leukocyte network with its measure classifier, compared without training again.

    .venv/bin/python -m bench.leukocyte_combination [--data ../shared/data/leukocyte/train]

Reads the network answers `make train-leukocyte` keeps for every fold (``.cache/training/leukocyte-network-
answers-fold<k>-of5-seed0.npz``: validation and test probabilities, with the split's indices into the cached
arrays), fits each fold's measure classifier (the served one) on that fold's training cells as the training
command does, and pools every rule's answers on the held-out cells of all folds. Whatever a rule fits (a weight,
a regression, a temperature) it fits on the fold's validation cells, or on the other folds' held-out cells, never
on the cells it is scored on. Writes bench/leukocyte_combination.json.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from config import ROOT

CACHE = ROOT / ".cache" / "training"
#: scikit-learn's C of the measures' logistic regression that leukocyte 1.3 served (1.4 serves a perceptron)
REGRESSION_STRENGTH = 1.0
#: a rule: (network on val, measures classifier on val, truth on val, network on test, measures on test) → test
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def weighted_geometric_mean(network: np.ndarray, by_measures: np.ndarray, weight: float) -> np.ndarray:
    logs = weight * np.log(np.clip(network, 1e-12, 1)) + (1 - weight) * np.log(np.clip(by_measures, 1e-12, 1))
    combined = np.exp(logs - logs.max(axis=1, keepdims=True))
    return combined / combined.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-12, 1)).mean())


def scores(y: np.ndarray, answers: np.ndarray, groups: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy per file and per cell with their 95 % intervals (whole cells resampled), recall per cell, ECE."""
    from core.evaluation import expected_calibration_error
    from core.training.report import pooled_report

    report = pooled_report(y, answers, groups, label_names)
    return {"files": report["accuracy"], "files_interval_95": report["accuracy_interval_95"],
            "cells": report["per_group"]["accuracy"], "cells_interval_95": report["per_group"]["accuracy_interval_95"],
            "recall_per_cell": report["per_group"]["recall"], "ece": expected_calibration_error(answers, y)}


def rules() -> dict[str, Rule]:
    from core.evaluation import fit_temperature, temper
    from core.training.linear import fit_multinomial

    def tempered_on_val(combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Rule:
        return lambda nv, mv, yv, nt, mt: temper(combine(nt, mt), fit_temperature(combine(nv, mv), yv))

    def weight_chosen_on_val(nv, mv, yv, nt, mt):
        def loss(w: float) -> float:
            combined = weighted_geometric_mean(nv, mv, w)
            return negative_log_likelihood(temper(combined, fit_temperature(combined, yv)), yv)
        weight = min(np.linspace(0, 1, 11), key=loss)
        return tempered_on_val(lambda a, b: weighted_geometric_mean(a, b, weight))(nv, mv, yv, nt, mt)

    def regression_on_val(nv, mv, yv, nt, mt):
        def features(a, b):
            return np.log(np.clip(np.hstack([a, b]), 1e-6, 1))
        return fit_multinomial(features(nv, mv), yv, nv.shape[1], 0.1).probabilities(features(nt, mt))

    return {
        "the network alone": tempered_on_val(lambda a, b: a),
        "the measures alone": tempered_on_val(lambda a, b: b),
        "geometric mean (equal weights)": tempered_on_val(lambda a, b: weighted_geometric_mean(a, b, 0.5)),
        "a weight (0 to 1, steps of 0.1) chosen on the validation cells": weight_chosen_on_val,
        "a regression on both log-probabilities (C 0.1) fitted on the validation cells": regression_on_val,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "leukocyte" / "train")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "leukocyte_combination.json")
    args = parser.parse_args()
    from core.assets import read_spec
    from core.evaluation import fit_temperature, temper
    from core.models.leukocyte import LeukocyteModel
    from core.models.leukocyte_training import LeukocyteTraining, fit_measure_classifier
    from core.training.data import load_arrays
    from core.training.linear import fit_multinomial

    model = LeukocyteModel(read_spec(ROOT / "assets" / "leukocyte"))
    arrays = load_arrays(LeukocyteTraining(model), args.data, CACHE)
    files = sorted(CACHE.glob("leukocyte-network-answers-fold*-of5-seed0.npz"))
    if len(files) != 5:
        raise SystemExit(f"{len(files)} of 5 folds' answers under {CACHE}: run `make train-leukocyte` first")
    print(f"[measures] {len(arrays.y)} windows", flush=True)
    measures = np.concatenate([model.measures_of(arrays.x[i:i + 256]) for i in range(0, len(arrays.x), 256)])
    folds, regression = [], []
    for path in files:
        with np.load(path) as saved:
            train, val, test = saved["train"], saved["val"], saved["test"]
            network_val, network_test = saved["network_val"], saved["network_test"]
        classes = len(model.spec.labels)
        classifier = fit_measure_classifier(measures[train], arrays.y[train], classes)
        folds.append((val, test, network_val, network_test, classifier.probabilities(measures[val]),
                      classifier.probabilities(measures[test])))
        regression.append(fit_multinomial(measures[train], arrays.y[train], classes, REGRESSION_STRENGTH)
                          .probabilities(measures[test]))
    y_test = np.concatenate([arrays.y[test] for _, test, *_ in folds])
    groups = np.concatenate([arrays.groups[test] for _, test, *_ in folds])
    results = {}
    for name, rule in rules().items():
        answers = np.concatenate([rule(nv, mv, arrays.y[val], nt, mt) for val, _, nv, nt, mv, mt in folds])
        results[name] = scores(y_test, answers, groups, model.spec.label_names)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    # the served combination, its temperature cross-fitted (each fold's from the other folds' held-out answers,
    # as the training command does), with the served measure classifier and with 1.3's regression in its place
    truth = [arrays.y[test] for _, test, *_ in folds]

    def cross_fitted(raw: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([temper(raw[k], fit_temperature(np.concatenate(raw[:k] + raw[k + 1:]),
                                                               np.concatenate(truth[:k] + truth[k + 1:])))
                               for k in range(len(raw))])

    served = [weighted_geometric_mean(nt, mt, 0.5) for _, _, _, nt, _, mt in folds]
    with_regression = [weighted_geometric_mean(fold[3], r, 0.5) for fold, r in zip(folds, regression)]
    for name, raw in (("geometric mean, temperature cross-fitted (served)", served),
                      ("geometric mean with 1.3's logistic regression, temperature cross-fitted", with_regression)):
        results[name] = scores(y_test, cross_fitted(raw), groups, model.spec.label_names)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    args.out.write_text(json.dumps({"command": "python -m bench.leukocyte_combination", "rules": results},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
