"""What a network's training task decides: targets, split, weights, loss and evaluation.

The trainer (core.training.trainer) runs one pipeline and asks the task for these.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation import expected_calibration_error, f1_counts, fit_temperature, mean_sd, temper
from core.training.data import Arrays
from core.training.recipe import TrainingRecipe
from core.training.report import classification_report, pooled_report
from core.tta import dihedral_mean


class SingleLabel:
    """One label per example (softmax): grouped folds or the data set's own test split, class-balanced."""

    loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    fold_keys = ("accuracy", "balanced_accuracy", "group_accuracy")

    def __init__(self, recipe: TrainingRecipe, settings):
        self.recipe, self.settings = recipe, settings
        self.predefined = False
        #: the test split's truth, (calibrated) probabilities and groups, for pooling over folds
        self.held_out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        #: the same for the network alone, when the model combines it with a companion (else None)
        self.held_out_network: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        #: the test split's answers before the temperature (models with temperature scaling)
        self.held_out_untempered: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def targets(self, arrays: Arrays) -> np.ndarray:
        return arrays.y

    def split(self, arrays: Arrays) -> dict[str, np.ndarray]:
        self.predefined = self.recipe.predefined_test(arrays.groups) is not None
        s = self.settings
        return self.recipe.split(arrays, s.folds, s.fold, s.val_fraction, s.seed_of_split)

    def split_note(self, meta: dict[str, Any]) -> str:
        held_out = "the data set's own held-out split" if self.predefined else \
            f"fold {self.settings.fold} of {self.settings.folds}, stratified by class"
        return (f"held-out test split: {held_out}; {meta.get('data', {}).get('split', 'grouped')}; "
                f"never used for training or early stopping")

    def sample_weights(self, y: np.ndarray) -> np.ndarray:
        """Each example weighted by the inverse frequency of its class (the classes count equally)."""
        counts = np.bincount(y)
        return (len(y) / (len(counts) * counts[y])).astype(np.float32)

    def evaluate(self, network, arrays: Arrays, targets: np.ndarray, split: dict[str, np.ndarray], model
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model.json sections chosen on the validation groups, metrics on the test groups)."""
        s = self.settings
        updates = {"inference": {"tta": s.tta}}
        chosen = self.recipe.calibrate(s.data, set(arrays.groups[split["val"]]))
        for section, values in (chosen or {}).items():
            updates.setdefault(section, {}).update(values)
        if chosen:
            print(f"[calibrate] on the validation groups: {json.dumps(chosen)}", flush=True)
            for section, values in chosen.items():
                model.spec.meta.setdefault(section, {}).update(values)
            model.apply_defaults()  # serves with what was chosen (e.g. an option's default)
        test = arrays.subset(split["test"])
        names = model.spec.label_names

        def predict(batch: np.ndarray) -> np.ndarray:
            return network.predict(batch.astype(np.float32), batch_size=8 * s.batch_size, verbose=0)

        def in_chunks(fn, x: np.ndarray, size: int = 256) -> np.ndarray:
            # 8 float views of a whole test set at 192 px are ~10 GB: evaluate a chunk at a time
            return np.concatenate([fn(x[start:start + size]) for start in range(0, len(x), size)])

        def network_answer(x: np.ndarray, views: bool) -> np.ndarray:
            return in_chunks(lambda part: dihedral_mean(predict, part), x) if views else in_chunks(predict, x)

        network_plain, network_served = network_answer(test.x, False), network_answer(test.x, s.tta)
        plain, probabilities = (self.recipe.combine(network_plain, test.x),
                                self.recipe.combine(network_served, test.x))
        # the network alone, where the model combines it with a companion: what the combination adds
        self.held_out_network = None if np.array_equal(probabilities, network_served) else \
            (test.y, network_served, test.groups)
        calibration = None
        if self.recipe.temperature_scaling:
            val = arrays.subset(split["val"])
            network_val = network_answer(val.x, s.tta)
            self.save_network_answers(split, network_val, network_served)
            temperature = fit_temperature(self.recipe.combine(network_val, val.x), val.y)
            updates["inference"]["temperature"] = temperature
            tempered = temper(probabilities, temperature)
            self.held_out_untempered = (test.y, probabilities, test.groups)
            calibration = {"temperature": temperature, "fitted_on": "the validation groups",
                           "ece_test_before": expected_calibration_error(probabilities, test.y),
                           "ece_test_after": expected_calibration_error(tempered, test.y)}
            print(f"[calibrate] temperature {temperature}: test ECE {calibration['ece_test_before']} -> "
                  f"{calibration['ece_test_after']}", flush=True)
            probabilities, plain = tempered, temper(plain, temperature)
        self.held_out = (test.y, probabilities, test.groups)
        reports = {"plain": classification_report(test.y, plain, test.groups, names)}
        if s.tta:
            reports["tta"] = classification_report(test.y, probabilities, test.groups, names)
        for name, report in reports.items():
            per_group = f"; per-group accuracy {report['group_accuracy']:.4f}" if "group_accuracy" in report else ""
            print(f"[test] {name}: accuracy {report['accuracy']:.4f} on {report['examples']} examples of "
                  f"{report['groups']} held-out groups{per_group}", flush=True)
        metrics = {"test": reports["tta" if s.tta else "plain"]}
        if s.tta:
            metrics["test_without_tta"] = reports["plain"]
        if calibration:
            metrics["calibration"] = calibration
        if self.held_out_network is not None:
            metrics["test_network_only"] = classification_report(test.y, network_served, test.groups, names)
        detection = self.recipe.evaluate(s.data, set(test.groups))
        if detection is not None:
            metrics["detection"] = detection
            print(f"[test] detection: {json.dumps({k: v for k, v in detection.items() if k != 'per_group'})}",
                  flush=True)
        return updates, metrics

    def save_network_answers(self, split: dict[str, np.ndarray], val: np.ndarray, test: np.ndarray) -> None:
        """The network's served probabilities on this fold's validation and test examples (with the split's
        example indices into the cached arrays), in the cache folder: a later study of how to combine or
        calibrate them (e.g. with a companion fitted on the same training groups) needs no retraining."""
        s = self.settings
        suffix = "" if s.seed_of_split == s.seed else f"-split{s.seed_of_split}"
        name = f"{self.recipe.model.spec.id}-network-answers-fold{s.fold}-of{s.folds}-seed{s.seed}{suffix}.npz"
        path = Path(s.cache_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, train=split["train"], val=split["val"], test=split["test"], network_val=val, network_test=test)
        print(f"[answers] the network's validation and test probabilities saved to {path}", flush=True)

    def cross_fit_temperature(self, meta: dict[str, Any], others: list["SingleLabel"]) -> None:
        """Replace this fold's temperature, fitted on its few validation groups, by one fitted on the other
        folds' held-out answers (before their temperature): several times the groups, none of this fold's
        test groups, each answered by a model that never saw it. Argmax answers are unchanged; the held-out
        probabilities, model.json ``inference.temperature`` and ``metrics.calibration`` are updated."""
        y, raw, groups = self.held_out_untempered
        temperature = fit_temperature(np.concatenate([t.held_out_untempered[1] for t in others]),
                                      np.concatenate([t.held_out_untempered[0] for t in others]))
        tempered = temper(raw, temperature)
        self.held_out = (y, tempered, groups)
        meta.setdefault("inference", {})["temperature"] = temperature
        meta["metrics"]["calibration"] = {
            **meta["metrics"].get("calibration", {}), "temperature": temperature,
            "fitted_on": f"the other {len(others)} folds' held-out groups (cross-fitted)",
            "validation_temperature": meta["metrics"].get("calibration", {}).get("temperature"),
            "ece_test_after": expected_calibration_error(tempered, y)}
        print(f"[calibrate] fold {self.settings.fold}: temperature {temperature} from the other folds' held-out "
              f"answers: test ECE {meta['metrics']['calibration']['ece_test_before']} -> "
              f"{meta['metrics']['calibration']['ece_test_after']}", flush=True)

    def summarise_folds(self, metas: list[dict[str, Any]], held_out: list[tuple] | None = None,
                        held_out_network: list[tuple] | None = None) -> dict[str, Any]:
        """Mean ± sd of the folds' figures; with every fold's held-out predictions of single-label groups, the
        pooled report (``pooled``; ``pooled_network_only`` for the network alone where the model combines it)."""
        reports = [meta["metrics"]["test"] for meta in metas]
        summary: dict[str, Any] = {"folds": len(metas), "split": "each fold's held-out cells/groups in turn"}
        floor = next((o.default for o in self.recipe.model.declared_options() if o.name == "min_confidence"), None)
        for key, parts in (("pooled", held_out), ("pooled_network_only", held_out_network)):
            if not parts or not all(parts):
                continue
            y, p, groups = (np.concatenate(part) for part in zip(*parts))
            if all(len(set(y[groups == g])) == 1 for g in set(groups)):  # one label per group (a cell)
                summary[key] = pooled_report(y, p, groups, self.recipe.model.spec.label_names, floor)
                if self.recipe.temperature_scaling and key == "pooled":
                    summary[key]["ece"] = expected_calibration_error(p, y)
        for key in self.fold_keys:
            if all(key in report for report in reports):
                summary[key] = mean_sd([report[key] for report in reports])
        detections = [meta["metrics"].get("detection") for meta in metas]
        if all(detections):
            summary["detection"] = pool_detection(detections)
        return summary


def pool_detection(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Object counts summed over the folds' held-out groups, F1 of the sums, count errors per group, and
    every other whole-number field of the per-group records summed (``totals``)."""
    pooled = f1_counts(*(sum(fold[key] for fold in folds) for key in ("tp", "fp", "fn")))
    groups = {name: group for fold in folds for name, group in fold["per_group"].items()}
    errors = [group["count_error"] for group in groups.values() if "count_error" in group]
    if errors:
        pooled["count_error_mean"] = round(float(np.mean(errors)), 4)
        pooled["count_error_max"] = round(float(np.max(errors)), 4)
    pooled["totals"] = {key: sum(group[key] for group in groups.values())
                        for key, value in next(iter(groups.values())).items() if isinstance(value, int)}
    pooled["per_group"] = groups
    return pooled
