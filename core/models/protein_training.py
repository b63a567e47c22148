"""Training of the protein model: a logistic regression per compartment on each cell's measures
(``core/models/protein_features.py``), each cell weakly labelled with its field's labels.

Data: folders in Kaggle's HPA layout (``train.csv`` or ``labels.csv`` with ``Id,Target``, images in ``train/``
or ``images/`` as ``<Id>_<channel>.png``). Fields of ``data.exact_label_sources`` (semi-synthetic grids whose
every cell carries the label) always train and are never evaluated.

The figure the model states is nested cross-validation by field, repeated: in each outer fold the
thresholds come from an inner cross-validation on the training fields only, the classifier from all of
them, and the held-out fields are answered exactly as serving answers them (field score = a percentile of
its cells' probabilities, ``core.multilabel``). The shipped classifier learns from every field; its
thresholds from out-of-fold scores of every field. Classes not learnt (core.training.multilabel.learnt), or
whose threshold comes out as "never", are not predicted and listed as such.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.evaluation import bootstrap_interval, expected_calibration_error, mean_sd, micro_f1
from core.imageio import grey_to_unit
from core.models.protein import CHANNELS, Field
from core.multilabel import field_scores
from core.training import domain
from core.training.linear import LinearClassifier, fit_one_vs_rest
from core.training.multilabel import LEARNT_OVER_CHANCE, MIN_FIELDS, constant_answer, field_report, fit_thresholds
from core.training.recipe import TrainingRecipe

STRENGTH = 0.1     # the logistic regressions' C: measures are few, fields fewer
REPEATS = 3        # repeated cross-validation, each with its own partition of the fields
INNER_FOLDS = 4


@dataclass
class Fields:
    ids: list[str]            # "<source>/<Id>"
    cells: list[np.ndarray]   # per field: cells × measures
    truth: np.ndarray         # fields × classes, 0/1
    exact: np.ndarray         # per field: labels hold for every cell (semi-synthetic); always trains

    def subset_cells(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cells of the fields in ``index`` and their (field) labels."""
        x = np.concatenate([self.cells[i] for i in index])
        y = np.concatenate([np.repeat(self.truth[i:i + 1], len(self.cells[i]), axis=0) for i in index])
        return x, y


class ProteinTraining(TrainingRecipe):
    def sources(self, data_dir: Path) -> list[Path]:
        """The data dir itself when it is in Kaggle's layout, else each subfolder that is (model.json's
        ``data.sources`` names which: the shared data holds only 2018-scheme sets there)."""
        def usable(folder: Path) -> bool:
            return any((folder / name).is_file() for name in ("train.csv", "labels.csv"))

        if usable(data_dir):
            return [data_dir]
        named = self.model.spec.meta.get("data", {}).get("sources")
        return [p for p in sorted(data_dir.iterdir())
                if p.is_dir() and usable(p) and (named is None or p.name in named)]

    def fields(self, data_dir: Path) -> Fields:
        """Every field's cells measured exactly as serving measures them, with its labels."""
        defaults = {option.name: option.default for option in self.model.declared_options()}
        exact_sources = set(self.model.spec.meta.get("data", {}).get("exact_label_sources", []))
        n_classes = len(self.model.spec.labels)
        ids, cells, truth, exact = [], [], [], []
        for source in self.sources(data_dir):
            table = source / ("train.csv" if (source / "train.csv").is_file() else "labels.csv")
            images = source / ("train" if (source / "train").is_dir() else "images")
            with open(table, newline="") as handle:
                for row in csv.DictReader(handle):
                    planes = []
                    for name in CHANNELS:
                        with Image.open(images / f"{row['Id']}_{name}.png") as image:
                            planes.append(grey_to_unit(image))
                    measures, _ = self.model.preprocess(Field(np.stack(planes, axis=-1)), defaults)
                    if not len(measures):
                        continue  # no cell found: nothing to learn from or to answer
                    labels = np.zeros(n_classes, np.int8)
                    labels[[int(v) for v in row["Target"].replace("|", " ").split()]] = 1
                    ids.append(f"{source.name}/{row['Id']}")
                    cells.append(measures)
                    truth.append(labels)
                    exact.append(source.name in exact_sources)
        return Fields(ids, cells, np.array(truth), np.array(exact, bool))

    # ---- fitting ---------------------------------------------------------------------------------------
    def fit(self, fields: Fields, index: np.ndarray) -> LinearClassifier:
        """The classifier from the weakly labelled fields in ``index`` and every exact-label field; classes
        with fewer than MIN_FIELDS positive weak fields are left out (their source says little)."""
        learnable = [k for k in range(fields.truth.shape[1]) if fields.truth[index, k].sum() >= MIN_FIELDS]
        x, y = fields.subset_cells(np.concatenate([index, np.flatnonzero(fields.exact)]))
        return fit_one_vs_rest(x, y, learnable, STRENGTH)

    @staticmethod
    def scores(classifier: LinearClassifier, fields: Fields, index: np.ndarray) -> np.ndarray:
        """Field scores as serving computes them, fields in ``index`` × classes."""
        return np.stack([field_scores(classifier.probabilities(fields.cells[i])) for i in index])

    def out_of_fold(self, fields: Fields, index: np.ndarray, folds: int, seed: int) -> np.ndarray:
        """Scores of the fields in ``index``, each from a classifier that did not see it."""
        scores = np.zeros((len(index), fields.truth.shape[1]))
        order = np.random.default_rng(seed).permutation(len(index))
        for part in np.array_split(order, folds):
            classifier = self.fit(fields, index[np.setdiff1d(order, part)])
            scores[part] = self.scores(classifier, fields, index[part])
        return scores

    # ---- the training command --------------------------------------------------------------------------
    def train(self, settings) -> dict[str, Any]:
        from core.training.trainer import write_assets

        started = time.perf_counter()
        names = self.model.spec.label_names
        fields = self.fields(settings.data)
        weak = np.flatnonzero(~fields.exact)
        print(f"[data] {len(weak)} weakly labelled fields, {int(fields.exact.sum())} exact-label (semi-synthetic) "
              f"fields, {sum(len(c) for c in fields.cells)} cells", flush=True)
        if len(weak) < settings.folds:
            raise SystemExit(f"{len(weak)} weakly labelled fields cannot make {settings.folds} folds")
        report = self.nested_report(fields, weak, settings.folds, settings.seed, names)

        classifier = self.fit(fields, weak)
        thresholds = fit_thresholds(fields.truth[weak], self.out_of_fold(fields, weak, settings.folds, settings.seed))
        not_predicted = [names[k] for k in np.flatnonzero(~np.isfinite(thresholds))]
        print(f"[model] predicts {len(names) - len(not_predicted)} of {len(names)} classes; not: "
              f"{', '.join(not_predicted)}", flush=True)

        spec = self.model.spec
        meta = json.loads(json.dumps(spec.meta))
        meta["inference"] = {
            "tta": False,
            "thresholds": [round(float(t), 2) if np.isfinite(t) else None for t in thresholds],
            "not_predicted": {"classes": not_predicted,
                              "why": f"fewer than {MIN_FIELDS} weakly labelled fields show them, or on fields the "
                                     f"classifier had not seen its scores ranked them barely above chance (average "
                                     f"precision less than {LEARNT_OVER_CHANCE:.0%} of the way from prevalence to 1) or "
                                     f"answering them lowered micro-F1: never answered"},
        }
        meta["metrics"] = report
        meta["training"] = {
            "command": settings.command,
            "settings": {"data": Path(settings.data).name, "folds": settings.folds, "seed": settings.seed,
                         "repeats": REPEATS, "inner_folds": INNER_FOLDS, "logistic_regression_C": STRENGTH},
            "cells": int(sum(len(c) for c in fields.cells)),
            "minutes": round((time.perf_counter() - started) / 60, 1),
        }
        network = classifier.to_keras()
        self.model.use_network(network)
        statistics, section = self.domain_from_fields(fields, settings.seed)
        meta["domain"] = domain.write(settings.out, statistics, section)
        meta = write_assets(settings.out, meta, network)
        print(f"[assets] wrote {settings.out}", flush=True)
        return meta

    def domain_statistics(self, data_dir: Path, cache_dir: Path, settings: dict[str, Any]):
        return self.domain_from_fields(self.fields(data_dir), settings.get("seed", 0))

    @staticmethod
    def domain_split(count: int, seed: int) -> list[np.ndarray]:
        """Fields (by index) for the domain check: 60 % fit it, 20 % set its threshold, 20 % test it."""
        order = np.random.default_rng(seed).permutation(count)
        return np.split(order, [round(0.6 * count), round(0.8 * count)])

    def held_out_groups(self, data_dir: Path, cache_dir: Path, settings: dict[str, Any]) -> set[str]:
        """The domain check's test fields (the classifier itself learns from every field)."""
        fields = self.fields(data_dir)
        return {fields.ids[i] for i in self.domain_split(len(fields.ids), settings.get("seed", 0))[2]}

    def uploads(self, data_dir: Path) -> list[tuple[dict[str, Path], str]]:
        found = []
        for source in self.sources(data_dir):
            table = source / ("train.csv" if (source / "train.csv").is_file() else "labels.csv")
            images = source / ("train" if (source / "train").is_dir() else "images")
            with open(table, newline="") as handle:
                found += [({name: images / f"{row['Id']}_{name}.png" for name in CHANNELS}, f"{source.name}/{row['Id']}")
                          for row in csv.DictReader(handle)]
        return found

    def domain_from_fields(self, fields: Fields, seed: int):
        """The domain check on cell measures (this model's embedding is its input): fields split 60/20/20
        at random, every cell of the first part fitting, each field of the others one input."""
        train, val, test = self.domain_split(len(fields.ids), seed)
        describe = {"fitted_on": f"the cells of {len(train)} fields; threshold from {len(val)} other fields; test: "
                                 f"{len(test)} further fields (fields drawn at random, semi-synthetic ones included)"}
        return domain.compute(self.model, fields.subset_cells(train)[0].astype(np.float32),
                              [fields.cells[i].astype(np.float32) for i in val],
                              [fields.cells[i].astype(np.float32) for i in test], describe, seed)

    def nested_report(self, fields: Fields, weak: np.ndarray, folds: int, seed: int, names: list[str]
                      ) -> dict[str, Any]:
        """Repeated nested cross-validation by field (see the module docstring), with the constant answer
        fitted and scored on the same folds."""
        truth = fields.truth[weak]
        scores = np.zeros((REPEATS,) + truth.shape)
        decisions = np.zeros((REPEATS,) + truth.shape, bool)
        constant = np.zeros((REPEATS,) + truth.shape, bool)
        for repeat in range(REPEATS):
            order = np.random.default_rng(seed + repeat).permutation(len(weak))
            for part in np.array_split(order, folds):
                train = weak[np.setdiff1d(order, part)]
                thresholds = fit_thresholds(fields.truth[train],
                                            self.out_of_fold(fields, train, INNER_FOLDS, seed + repeat))
                scores[repeat, part] = self.scores(self.fit(fields, train), fields, weak[part])
                decisions[repeat, part] = scores[repeat, part] >= thresholds
                constant[repeat, part] = constant_answer(fields.truth[train])
            print(f"[cv] repeat {repeat + 1}/{REPEATS}: micro-F1 {micro_f1(truth, decisions[repeat]):.3f} "
                  f"(constant answer {micro_f1(truth, constant[repeat]):.3f})", flush=True)

        def pooled(answers: np.ndarray, chosen: list[int] | None = None) -> float:
            """Micro-F1 over the repeats' answers for the fields ``chosen`` (all by default)."""
            chosen = list(range(len(truth))) if chosen is None else chosen
            return micro_f1(np.concatenate([truth[chosen]] * REPEATS), answers[:, chosen].reshape(-1, truth.shape[1]))

        def interval(answers: np.ndarray) -> list[float]:
            low, high = bootstrap_interval(range(len(weak)), lambda chosen: pooled(answers, chosen))
            return [round(low, 4), round(high, 4)]

        per_repeat = [field_report(truth, scores[r], decisions[r], names) for r in range(REPEATS)]
        positive = truth.astype(bool)
        calibration = expected_calibration_error(
            np.stack([1 - scores.reshape(-1), scores.reshape(-1)], axis=1),
            np.concatenate([positive.reshape(-1)] * REPEATS).astype(int))
        report = field_report(np.concatenate([truth] * REPEATS), scores.reshape(-1, truth.shape[1]),
                              decisions.reshape(-1, truth.shape[1]), names, copies=REPEATS)
        report.update({
            "micro_f1_interval_95": interval(decisions),
            "constant_answer_micro_f1": round(pooled(constant), 4),
            "constant_answer_micro_f1_interval_95": interval(constant),
            "gain_over_constant_answer_interval_95": [round(v, 4) for v in bootstrap_interval(
                range(len(weak)), lambda chosen: pooled(decisions, chosen) - pooled(constant, chosen))],
            "constant_answer": sorted({names[k] for k in np.flatnonzero(constant.any(axis=(0, 1)))}),
            "per_repeat_micro_f1": mean_sd([r["micro_f1"] for r in per_repeat]),
            "field_score_calibration_error": round(calibration, 4),
        })
        print(f"[test] {len(weak)} fields x {REPEATS} repeats: micro-F1 {report['micro_f1']} "
              f"{report['micro_f1_interval_95']} vs constant answer {report['constant_answer_micro_f1']} "
              f"{report['constant_answer_micro_f1_interval_95']} (gain {report['gain_over_constant_answer_interval_95']}); macro-F1 {report['macro_f1']}, "
              f"mAP {report['mean_average_precision']} (classes with >= {MIN_FIELDS} fields)", flush=True)
        return {
            "split": f"nested cross-validation by field, {folds} outer folds x {REPEATS} repeats over the weakly "
                     f"labelled HPA fields (every cell of a field in one split; thresholds from an inner "
                     f"{INNER_FOLDS}-fold cross-validation on the training fields only); semi-synthetic "
                     f"exact-label fields train only; figures pooled over the repeats, intervals by resampling "
                     f"fields",
            "test": report,
        }


RECIPE = ProteinTraining
