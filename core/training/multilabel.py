"""Training for multi-label models (``multi_label = True``, e.g. protein): weak field labels per cell.

Examples carry their labels as an integer bit mask (so the shared decoded-data cache serves them too).
Fields of the weakly labelled sources are split into folds: one is the test split, the next the validation
split (early stopping and threshold calibration); fields of exact-label sources (semi-synthetic
single-pattern cells) always train. Classes are balanced by sample weights. A field's score for a class is
the 75th percentile over its cells (a quarter of its cells show it: steadier than the maximum, which one
odd cell decides); the report is per field: micro-F1, macro-F1, per-class figures, mean average precision,
and the micro-F1 of always answering the most frequent training classes, for scale.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from core.assets import read_spec, sha256_of, write_meta
from core.multilabel import field_scores, mask_to_multi_hot
from core.registry import model_class
from core.training.data import augmenter, load_arrays, shuffled_batches

MIN_TRUSTED_FIELDS = 3  # a class seen in fewer training fields than this is reported as untrustworthy
MIN_CALIBRATION_FIELDS = 3  # a class gets its own threshold only with this many positive validation fields


def split_fields(groups: np.ndarray, exact: np.ndarray, folds: int, fold: int, seed: int) -> dict[str, np.ndarray]:
    fields = np.array(sorted(set(groups[~exact])))
    order = np.random.default_rng(seed).permutation(len(fields))
    parts = np.array_split(fields[order], folds)
    test, val = set(parts[fold]), set(parts[(fold + 1) % folds])
    in_test, in_val = np.isin(groups, list(test)), np.isin(groups, list(val))
    return {"train": np.flatnonzero(~in_test & ~in_val), "val": np.flatnonzero(in_val), "test": np.flatnonzero(in_test)}


def per_field(groups: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Field truth (its labels) and field scores (a percentile over its cells)."""
    names = sorted(set(groups))
    truth = np.stack([y[groups == g][0] for g in names])
    scores = np.stack([field_scores(p[groups == g]) for g in names])
    return names, truth, scores


def calibrate(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, the threshold with the best F1 on validation fields where it has enough positive fields
    to say; elsewhere the shared threshold with the best micro-F1 (per-class thresholds fitted on one or
    two fields do not carry over to new fields)."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)

    def f1(t: np.ndarray, s: np.ndarray, threshold: float) -> float:
        predicted = s >= threshold
        tp = float((predicted & (t > 0)).sum())
        return 2 * tp / max(1.0, predicted.sum() + (t > 0).sum())

    shared = max(grid, key=lambda th: f1(truth, scores, th))
    return np.array([max(grid, key=lambda th: f1(truth[:, k], scores[:, k], th))
                     if truth[:, k].sum() >= MIN_CALIBRATION_FIELDS else shared
                     for k in range(truth.shape[1])], np.float32)


def most_frequent_baseline(train_y: np.ndarray, val_truth: np.ndarray, test_truth: np.ndarray) -> float:
    """Micro-F1 on the test fields of always answering the k most frequent training classes (k chosen on
    the validation fields): what the model must beat to have learnt anything from the pixels."""
    order = np.argsort(-train_y.sum(axis=0))

    def micro_f1(truth: np.ndarray, k: int) -> float:
        predicted = np.zeros_like(truth, bool)
        predicted[:, order[:k]] = True
        tp = float((predicted & (truth > 0)).sum())
        return 2 * tp / max(1.0, predicted.sum() + (truth > 0).sum())

    best_k = max(range(1, 6), key=lambda k: micro_f1(val_truth, k))
    return round(micro_f1(test_truth, best_k), 4)


def field_report(truth: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, names: list[str]) -> dict[str, Any]:
    predicted = (scores >= thresholds).astype(int)
    present = np.flatnonzero(truth.sum(axis=0) > 0)
    p, r, f, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    micro = precision_recall_fscore_support(truth, predicted, average="micro", zero_division=0)
    return {
        "fields": int(len(truth)),
        "micro_f1": round(float(micro[2]), 4), "micro_precision": round(float(micro[0]), 4),
        "micro_recall": round(float(micro[1]), 4),
        "macro_f1_classes_present": round(float(np.mean(f[present])), 4) if len(present) else None,
        "mean_average_precision": round(float(np.mean([average_precision_score(truth[:, k], scores[:, k])
                                                       for k in present])), 4) if len(present) else None,
        "per_class": {names[k]: {"precision": round(float(p[k]), 4), "recall": round(float(r[k]), 4),
                                 "f1": round(float(f[k]), 4), "support_fields": int(support[k])} for k in present},
    }


def _dataset(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, batch_size: int, seed: int, augment: bool):
    import tensorflow as tf

    data = shuffled_batches((x, y) if weights is None else (x, y, weights), batch_size, augment, seed)
    if augment:
        layers = augmenter(seed)
        data = data.map(lambda xb, *rest: (tf.clip_by_value(layers(xb, training=True), 0.0, 255.0), *rest),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def train_multilabel(settings) -> dict[str, Any]:
    import keras

    from core.training.backbones import build_classifier

    keras.utils.set_random_seed(settings.seed)
    spec = read_spec(settings.assets_dir / settings.model_id)
    spec.meta["input"].update(settings.input_overrides or {})
    model = model_class(settings.model_id)(spec)
    arrays = load_arrays(model, settings.data, settings.cache_dir)
    names = spec.label_names
    y = mask_to_multi_hot(arrays.y, len(names))
    exact_sources = set(spec.meta.get("data", {}).get("exact_label_sources", []))
    exact = np.array([g.split("/")[0] in exact_sources for g in arrays.groups])
    split = split_fields(arrays.groups, exact, settings.folds, settings.fold, settings.seed)
    for name, index in split.items():
        print(f"[split] {name}: {len(index)} cells of {len(set(arrays.groups[index]))} fields", flush=True)

    train = split["train"]
    frequency = y[train].sum(axis=0)
    inverse = np.where(frequency > 0, len(train) / np.maximum(frequency, 1), 0.0)
    weights = np.array([inverse[labels > 0].mean() if labels.any() else 1.0 for labels in y[train]], np.float32)
    weights = np.clip(weights / np.median(weights), 0.2, 10.0)  # rare classes sampled up, bounded

    network = build_classifier(settings.backbone, settings.weights, arrays.x.shape[1:], len(names), settings.mode,
                               multi_label=True)
    lr = settings.learning_rate or (1e-3 if settings.mode == "tl" else 3e-4)
    network.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, settings.patience // 2)),
    ]
    started = time.perf_counter()
    history = network.fit(
        _dataset(arrays.x[train], y[train], weights, settings.batch_size, settings.seed, augment=True),
        validation_data=_dataset(arrays.x[split["val"]], y[split["val"]], None, settings.batch_size, settings.seed,
                                 augment=False),
        epochs=settings.epochs, callbacks=callbacks, verbose=2)
    minutes = (time.perf_counter() - started) / 60

    def scores(index: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        p = network.predict(arrays.x[index].astype(np.float32), batch_size=256, verbose=0)
        return per_field(arrays.groups[index], y[index], p)

    _, val_truth, val_scores = scores(split["val"])
    thresholds = calibrate(val_truth, val_scores)
    _, test_truth, test_scores = scores(split["test"])
    report = field_report(test_truth, test_scores, thresholds, names)
    report["default_thresholds_micro_f1"] = field_report(test_truth, test_scores, np.full(len(names), 0.5),
                                                         names)["micro_f1"]
    report["most_frequent_classes_micro_f1"] = most_frequent_baseline(y[train], val_truth, test_truth)
    train_fields = {g for g in arrays.groups[train]}
    fields_per_class = [len({g for g, labels in zip(arrays.groups[train], y[train]) if labels[k]})
                        for k in range(len(names))]
    print(f"[test] fields {report['fields']}: micro-F1 {report['micro_f1']} (0.5 thresholds: "
          f"{report['default_thresholds_micro_f1']}; most frequent classes: "
          f"{report['most_frequent_classes_micro_f1']}), mAP {report['mean_average_precision']}", flush=True)

    settings.out.mkdir(parents=True, exist_ok=True)
    weights_path = settings.out / spec.meta["weights"]["file"]
    network.save(weights_path)
    meta = json.loads(json.dumps(spec.meta))
    meta["weights"].update({"sha256": sha256_of(weights_path), "bytes": weights_path.stat().st_size})
    meta["inference"] = {"tta": False, "thresholds": [float(t) for t in thresholds]}
    meta["metrics"] = {
        "split": (f"held-out HPA fields: fold {settings.fold} of {settings.folds} (every cell of a field in one "
                  f"split); thresholds calibrated on the next fold; field labels = union over its cells"),
        "test": report,
        "classes_with_too_few_training_fields": [names[k] for k, n in enumerate(fields_per_class)
                                                 if n < MIN_TRUSTED_FIELDS],
        "training_fields_per_class": dict(zip(names, fields_per_class)),
        "semi_synthetic": "part of the training cells (DULoc single-pattern grids) are semi-synthetic",
    }
    skipped = {"out", "assets_dir", "cache_dir", "command"}
    recorded = {k: str(v) for k, v in asdict(settings).items() if k not in skipped}
    meta["training"] = {"command": settings.command, "settings": recorded, "training_fields": len(train_fields),
                        "epochs_run": len(history.history.get("loss", [])), "minutes": round(minutes, 1)}
    write_meta(settings.out, meta)
    return meta


def cross_validate_multilabel(settings) -> dict[str, Any]:
    """Every fold in turn; ship fold ``settings.fold``'s model with micro-F1 and mAP mean ± std."""
    from core.training.trainer import spread, train_every_fold

    metas = train_every_fold(settings, train_multilabel)
    shipped, reports = metas[0], [meta["metrics"]["test"] for meta in metas]
    summary = {"folds": settings.folds, "split": "each fold's held-out HPA fields in turn"}
    for key in ("micro_f1", "mean_average_precision", "macro_f1_classes_present", "most_frequent_classes_micro_f1"):
        summary[key] = spread([r[key] for r in reports if r[key] is not None])
    shipped["metrics"]["cross_validation"] = summary
    write_meta(settings.out, shipped)
    print(f"[cv] micro-F1 {summary['micro_f1']['mean']} ± {summary['micro_f1']['std']}", flush=True)
    return shipped
