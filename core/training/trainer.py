"""One training run: data → grouped split → classifier → fit with early stopping → report → assets."""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.assets import MODEL_JSON, read_spec, sha256_of, write_meta
from core.registry import model_class
from core.training.data import Arrays, dataset, load_arrays, three_way_split
from core.training.report import classification_report
from core.tta import dihedral_mean


@dataclass
class TrainSettings:
    model_id: str
    data: Path
    out: Path
    assets_dir: Path
    backbone: str = "mobilenet_v1_0.25"
    weights: str = "none"
    mode: str = "ft"
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float | None = None
    patience: int = 8
    folds: int = 5
    fold: int = 0
    val_fraction: float = 0.2
    seed: int = 0
    cache_dir: Path = Path(".cache/training")
    limit_groups: int | None = None
    input_overrides: dict[str, Any] | None = None  # model.json "input" fields changed for this run
    tta: bool = True  # serve with (and report) 8-fold dihedral test-time augmentation
    command: str | None = None  # the command line, recorded in model.json


def _class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes)
    return {k: float(len(y) / (n_classes * counts[k])) if counts[k] else 0.0 for k in range(n_classes)}


def _limit(arrays: Arrays, per_class: int) -> Arrays:
    """At most ``per_class`` groups per class (one file each): tiny runs for tests and smoke checks."""
    keep, seen = [], {}
    for index, (label, group) in enumerate(zip(arrays.y, arrays.groups)):
        groups = seen.setdefault(label, set())
        if group not in groups and len(groups) < per_class:
            groups.add(group)
            keep.append(index)
    return arrays.subset(np.array(keep))


def train(settings: TrainSettings) -> dict[str, Any]:
    import keras

    from core.training.backbones import build_classifier

    keras.utils.set_random_seed(settings.seed)
    spec = read_spec(settings.assets_dir / settings.model_id)
    spec.meta["input"].update(settings.input_overrides or {})
    spec.meta.setdefault("inference", {})["tta"] = settings.tta  # other inference settings are kept
    model = model_class(settings.model_id)(spec)
    arrays = load_arrays(model, settings.data, settings.cache_dir)
    if settings.limit_groups:
        arrays = _limit(arrays, settings.limit_groups)
    fixed_test = model.predefined_test(arrays.groups)
    split = three_way_split(arrays, settings.folds, settings.fold, settings.val_fraction, settings.seed,
                            fixed_test)
    parts = {name: arrays.subset(index) for name, index in split.items()}
    for name, part in parts.items():
        print(f"[split] {name}: {len(part.y)} examples, {len(set(part.groups))} groups, "
              f"per class {np.bincount(part.y, minlength=len(spec.labels)).tolist()}", flush=True)

    n_classes = len(spec.labels)
    network = build_classifier(settings.backbone, settings.weights, arrays.x.shape[1:], n_classes, settings.mode)
    lr = settings.learning_rate or (1e-3 if settings.mode == "tl" else 3e-4)
    network.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
    print(f"[model] {settings.backbone} ({settings.weights}), mode {settings.mode}: "
          f"{network.count_params():,} parameters, {trainable:,} trainable, lr {lr}", flush=True)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, settings.patience // 2)),
    ]
    started = time.perf_counter()
    history = network.fit(
        dataset(parts["train"], settings.batch_size, augment=True, seed=settings.seed, fill=model.rotation_fill),
        validation_data=dataset(parts["val"], settings.batch_size, augment=False, seed=settings.seed),
        epochs=settings.epochs, class_weight=_class_weights(parts["train"].y, n_classes),
        callbacks=callbacks, verbose=2,
    )
    minutes = (time.perf_counter() - started) / 60
    # Kept if the evaluation below fails (a long run is not lost); removed once the assets are written.
    settings.out.mkdir(parents=True, exist_ok=True)
    unevaluated = settings.out / f"{Path(spec.meta['weights']['file']).stem}.unevaluated.keras"
    network.save(unevaluated)
    print(f"[weights] saved to {unevaluated}; evaluating on the held-out split", flush=True)

    model.use_network(network)
    chosen = model.calibrate(settings.data, set(parts["val"].groups))
    if chosen:
        spec.meta["inference"].update(chosen)
        print(f"[calibrate] on the validation groups: {json.dumps(chosen)}", flush=True)
    reports = _evaluate(model, network, parts["test"], settings)
    meta = _write_assets(settings, spec.meta, network, reports, history.history, minutes, fixed_test is not None)
    unevaluated.unlink(missing_ok=True)
    return meta


def _evaluate(model, network, test: Arrays, settings: TrainSettings) -> dict[str, dict[str, Any]]:
    """Reports on the held-out split: per example (plain and with TTA), and per object where the model locates."""
    names = model.spec.label_names

    def predict(batch: np.ndarray) -> np.ndarray:
        return network.predict(batch.astype(np.float32), batch_size=8 * settings.batch_size, verbose=0)

    def in_chunks(fn, x: np.ndarray, size: int = 256) -> np.ndarray:
        # 8 float views of a whole test set at 192 px are ~10 GB: evaluate a chunk at a time
        return np.concatenate([fn(x[start:start + size]) for start in range(0, len(x), size)])

    reports = {"plain": classification_report(test.y, in_chunks(predict, test.x), test.groups, names)}
    if settings.tta:
        tta = in_chunks(lambda part: dihedral_mean(predict, part), test.x)
        reports["tta"] = classification_report(test.y, tta, test.groups, names)
    for name, report in reports.items():
        per_group = f"; per-group accuracy {report['group_accuracy']:.4f}" if "group_accuracy" in report else ""
        print(f"[test] {name}: accuracy {report['accuracy']:.4f} on {report['examples']} examples of "
              f"{report['groups']} held-out groups{per_group}", flush=True)
    model.use_network(network)  # the serving code path, on the held-out groups' whole images
    detection = model.evaluate_detection(settings.data, set(test.groups))
    if detection is not None:
        reports["detection"] = detection
        print(f"[test] detection: {json.dumps({k: v for k, v in detection.items() if k != 'per_group'})}",
              flush=True)
    return reports


def _write_assets(settings: TrainSettings, meta: dict[str, Any], network, reports: dict[str, dict[str, Any]],
                  history: dict[str, list[float]], minutes: float, predefined_test: bool = False) -> dict[str, Any]:
    settings.out.mkdir(parents=True, exist_ok=True)
    weights_path = settings.out / meta["weights"]["file"]
    network.save(weights_path)
    meta = json.loads(json.dumps(meta))  # a copy
    meta["weights"]["sha256"] = sha256_of(weights_path)
    meta["weights"]["bytes"] = weights_path.stat().st_size
    held_out = "the data set's own held-out split" if predefined_test else \
        f"fold {settings.fold} of {settings.folds}, stratified by class"
    meta["metrics"] = {
        "split": (f"held-out test split: {held_out}; {meta.get('data', {}).get('split', 'grouped')}; "
                  f"never used for training or early stopping"),
        "test": reports["tta" if settings.tta else "plain"],
    }
    if settings.tta:
        meta["metrics"]["test_without_tta"] = reports["plain"]
    if "detection" in reports:
        meta["metrics"]["detection"] = reports["detection"]
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()
                if k not in {"out", "assets_dir", "cache_dir", "command"}}
    recorded["data"] = Path(settings.data).name
    meta["training"] = {
        "command": settings.command,
        "settings": recorded,
        "epochs_run": len(history.get("loss", [])),
        "best_val_loss": round(float(min(history.get("val_loss", [float("nan")]))), 4),
        "minutes": round(minutes, 1),
    }
    write_meta(settings.out, meta)
    if settings.out.resolve() != (settings.assets_dir / settings.model_id).resolve():
        print(f"[assets] wrote {weights_path} and {settings.out / MODEL_JSON}", flush=True)
    return meta


def train_every_fold(settings: TrainSettings, train_fn) -> list[dict[str, Any]]:
    """model.json of the shipped fold (written to ``settings.out``) first, then of every other fold, each
    trained the same way in a scratch folder."""
    metas = [train_fn(settings)]
    with tempfile.TemporaryDirectory() as scratch:
        for fold in range(settings.folds):
            if fold != settings.fold:
                print(f"[cv] fold {fold} of {settings.folds}", flush=True)
                metas.append(train_fn(replace(settings, fold=fold, out=Path(scratch) / str(fold), command=None)))
    return metas


def spread(values: list[float]) -> dict[str, Any]:
    array = np.array(values, float)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)), 4),
            "per_fold": [float(v) for v in array]}


def cross_validate(settings: TrainSettings) -> dict[str, Any]:
    """Train on every grouped fold in turn; ship fold ``settings.fold``'s model with the folds' mean ± std."""
    metas = train_every_fold(settings, train)
    shipped = metas[0]
    reports = [meta["metrics"]["test"] for meta in metas]
    detections = [meta["metrics"].get("detection") for meta in metas]
    summary = {"folds": settings.folds, "split": "each fold's held-out cells/groups in turn"}
    for key in ("accuracy", "balanced_accuracy", "group_accuracy"):
        if all(key in report for report in reports):
            summary[key] = spread([report[key] for report in reports])
    if all(detections):
        summary["detection"] = _pool_detection(detections)
    shipped["metrics"]["cross_validation"] = summary
    write_meta(settings.out, shipped)
    print(f"[cv] accuracy {summary['accuracy']['mean']:.4f} ± {summary['accuracy']['std']:.4f} over "
          f"{settings.folds} folds", flush=True)
    return shipped


def _pool_detection(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Object counts summed over the folds' held-out groups, F1 of the sums, count errors per group, and
    every other whole-number field of the per-group records summed (``totals``)."""
    tp, fp, fn = (sum(fold[key] for fold in folds) for key in ("tp", "fp", "fn"))
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    groups = {name: group for fold in folds for name, group in fold["per_group"].items()}
    pooled = {"tp": tp, "fp": fp, "fn": fn, "precision": round(precision, 4), "recall": round(recall, 4),
              "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4)}
    errors = [group["count_error"] for group in groups.values() if "count_error" in group]
    if errors:
        pooled["count_error_mean"] = round(float(np.mean(errors)), 4)
        pooled["count_error_max"] = round(float(np.max(errors)), 4)
    pooled["totals"] = {key: sum(group[key] for group in groups.values())
                        for key, value in next(iter(groups.values())).items() if isinstance(value, int)}
    pooled["per_group"] = groups
    return pooled
