"""One training run: data → grouped split → classifier → fit with early stopping → evaluation → assets.

Every network model shares this pipeline; what differs (targets, split, evaluation) is its task's
(core.training.tasks). A model whose recipe trains something else (a classifier on measures) trains
through its recipe's ``train`` instead.
"""
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
from core.training import domain
from core.training.data import Arrays, dataset, load_arrays
from core.training.recipe import recipe_for
from core.training.tasks import SingleLabel


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
    seed: int = 0  # the network's initialisation, augmentation and order; also the split's unless split_seed
    split_seed: int | None = None  # the folds' and the validation groups' shuffle, when not ``seed``

    @property
    def seed_of_split(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed
    cache_dir: Path = Path(".cache/training")
    limit_groups: int | None = None
    input_overrides: dict[str, Any] | None = None  # model.json "input" fields changed for this run
    stain_sigma: float = 0.0  # HED stain jitter in training (core.training.data.hed_jitter); 0: none
    colour_jitter: bool = True  # brightness, contrast, saturation and hue jitter in training
    tta: bool = True  # serve with (and report) 8-fold dihedral test-time augmentation (single-label)
    command: str | None = None  # the command line, recorded in model.json


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
    """Train, evaluate on the held-out split and write weights + model.json into ``settings.out``."""
    own = _recipe_training(settings)
    return own if own is not None else _train_fold(settings)[0]


def _recipe_training(settings: TrainSettings) -> dict[str, Any] | None:
    """model.json as written by a recipe that trains its model itself (which cross-validates as it sees fit),
    or None for a network trained here."""
    model = model_class(settings.model_id)(read_spec(settings.assets_dir / settings.model_id))
    return recipe_for(model).train(settings)


def _train_fold(settings: TrainSettings) -> tuple[dict[str, Any], SingleLabel]:
    """model.json as written, and the task (which keeps the held-out predictions of a single-label model)."""
    import keras

    from core.training.backbones import build_classifier

    keras.utils.set_random_seed(settings.seed)
    spec = read_spec(settings.assets_dir / settings.model_id)
    spec.meta["input"].update(settings.input_overrides or {})
    model = model_class(settings.model_id)(spec)
    recipe = recipe_for(model)
    task = SingleLabel(recipe, settings)
    arrays = load_arrays(recipe, settings.data, settings.cache_dir)
    if settings.limit_groups:
        arrays = _limit(arrays, settings.limit_groups)
    split = task.split(arrays)
    for name, index in split.items():
        print(f"[split] {name}: {len(index)} examples of {len(set(arrays.groups[index]))} groups", flush=True)
    targets = task.targets(arrays)
    train_index, val_index = split["train"], split["val"]

    network = build_classifier(settings.backbone, settings.weights, arrays.x.shape[1:], len(spec.labels),
                               settings.mode)
    lr = settings.learning_rate or (1e-3 if settings.mode == "tl" else 3e-4)
    network.compile(optimizer=keras.optimizers.Adam(lr), loss=task.loss, metrics=task.metrics)
    trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
    print(f"[model] {settings.backbone} ({settings.weights}), mode {settings.mode}: "
          f"{network.count_params():,} parameters, {trainable:,} trainable, lr {lr}", flush=True)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, settings.patience // 2)),
    ]
    started = time.perf_counter()
    history = network.fit(
        dataset(arrays.x[train_index], targets[train_index], task.sample_weights(targets[train_index]),
                settings.batch_size, augment=True, seed=settings.seed, fill=recipe.rotation_fill,
                stain_sigma=settings.stain_sigma, colour_jitter=settings.colour_jitter),
        validation_data=dataset(arrays.x[val_index], targets[val_index], None, settings.batch_size,
                                augment=False, seed=settings.seed),
        epochs=settings.epochs, callbacks=callbacks, verbose=2,
    ).history
    minutes = (time.perf_counter() - started) / 60
    # Kept if the evaluation below fails (a long run is not lost); removed once the assets are written.
    settings.out.mkdir(parents=True, exist_ok=True)
    unevaluated = settings.out / f"{Path(spec.meta['weights']['file']).stem}.unevaluated.keras"
    network.save(unevaluated)
    print(f"[weights] saved to {unevaluated}; evaluating on the held-out split", flush=True)

    model.use_network(network)
    companions = recipe.train_companions(settings, {name: set(arrays.groups[index].tolist())
                                                    for name, index in split.items()})
    updates, metrics = task.evaluate(network, arrays, targets, split, model)
    meta = json.loads(json.dumps(spec.meta))  # a copy
    for section, values in updates.items():
        meta.setdefault(section, {}).update(values)
    meta.update(companions)
    statistics, section = domain.from_split(model, arrays.x, arrays.groups, split, settings.seed)
    meta["domain"] = domain.write(settings.out, statistics, section)
    # A section of model.json trained by a command of its own (e.g. the chromosome ``detector``) keeps its
    # figures (metrics[<section>]) when the main network is trained again.
    kept = {name: figures for name, figures in spec.meta.get("metrics", {}).items()
            if name in spec.meta and name not in metrics}
    meta["metrics"] = {"split": task.split_note(meta), **kept, **metrics}
    meta["training"] = _training_record(settings, history, minutes)
    meta = write_assets(settings.out, meta, network)
    if settings.out.resolve() != (settings.assets_dir / settings.model_id).resolve():
        print(f"[assets] wrote {settings.out / meta['weights']['file']} and {settings.out / MODEL_JSON}", flush=True)
    unevaluated.unlink(missing_ok=True)
    return meta, task


def _training_record(settings: TrainSettings, history: dict[str, list[float]], minutes: float) -> dict[str, Any]:
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()
                if k not in {"out", "assets_dir", "cache_dir", "command"}}
    recorded["data"] = Path(settings.data).name
    return {
        "command": settings.command,
        "settings": recorded,
        "epochs_run": len(history.get("loss", [])),
        "best_val_loss": round(float(min(history.get("val_loss", [float("nan")]))), 4),
        "minutes": round(minutes, 1),
    }


def save_network(network, out: Path, file: str) -> dict[str, Any]:
    """The network saved as ``out/file``; its model.json ``weights`` entry (file, sha256, bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / file
    network.save(path)
    return {"file": file, "sha256": sha256_of(path), "bytes": path.stat().st_size}


def write_assets(out: Path, meta: dict[str, Any], network) -> dict[str, Any]:
    """The network's weights and model.json (with the weights' sha256 and size) into ``out``."""
    meta["weights"] = save_network(network, out, meta["weights"]["file"])
    write_meta(out, meta)
    return meta


def cross_validate(settings: TrainSettings) -> dict[str, Any]:
    """Train on every fold in turn; ship fold ``settings.fold``'s model (written to ``settings.out``) with the
    folds' figures (mean ± sd) in its model.json; the other folds train in a scratch folder."""
    own = _recipe_training(settings)
    if own is not None:
        return own
    runs = [_train_fold(settings)]
    with tempfile.TemporaryDirectory() as scratch:
        for fold in range(settings.folds):
            if fold != settings.fold:
                print(f"[cv] fold {fold} of {settings.folds}", flush=True)
                runs.append(_train_fold(replace(settings, fold=fold, out=Path(scratch) / str(fold), command=None)))
    metas = [meta for meta, _ in runs]
    tasks = [task for _, task in runs]
    if len(tasks) > 1 and all(task.held_out_untempered is not None for task in tasks):
        for meta, task in runs:
            task.cross_fit_temperature(meta, [other for other in tasks if other is not task])
    summary = runs[0][1].summarise_folds(metas, [getattr(task, "held_out", None) for _, task in runs],
                                         [getattr(task, "held_out_network", None) for _, task in runs])
    shipped = metas[0]
    shipped["metrics"]["cross_validation"] = summary
    if "pooled" in summary:  # the claim: every group predicted once by a model that never saw it
        shipped["metrics"]["shipped_fold_test"] = shipped["metrics"]["test"]
        shipped["metrics"]["test"] = summary.pop("pooled")
        shipped["metrics"]["split"] = (f"leave-groups-out cross-validation, {settings.folds} folds pooled: every "
                                       f"group ({shipped.get('data', {}).get('split', 'grouped')}) held-out once, "
                                       f"predicted by a model trained without it; intervals resample whole groups")
    write_meta(settings.out, shipped)
    headline = next(key for key in ("accuracy", "micro_f1") if key in summary)
    print(f"[cv] {headline} {summary[headline]['mean']:.4f} ± {summary[headline]['std']:.4f} over "
          f"{settings.folds} folds", flush=True)
    return shipped
