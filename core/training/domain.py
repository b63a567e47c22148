"""The domain check's statistics (core.domain), computed by the training command from a model's own split.

The mean and covariance come from the training split's network rows, the threshold from the validation
inputs (each one input, as a single-object upload is served), and the share flagged is reported on the test
inputs, which neither the network nor these statistics saw. The trainer writes them after every training run;
``python -m core.training.domain <id> --data ...`` computes them for the shipped weights, reproducing the split
recorded in model.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.training.shipped import arguments, shipped_model
from core.assets import sha256_of, write_meta
from core.domain import DomainStatistics, embedding_of, recording
from core.model_base import MicroscopyModel

FILE = "domain.npz"
THRESHOLD_PERCENTILE = 99.0
MAX_TRAINING_INPUTS = 4000
MAX_CHECKED_INPUTS = 1000
WHAT_IT_CATCHES = ("uploads whose network features differ from the training data's: another stain or imaging "
                   "modality, another magnification, another kind of specimen or image")
WHAT_IT_MISSES = ("an upload that looks like the training data but where the labels mean something else (another "
                  "disease, another lab's class definitions); how accurate the answer is on a typical upload; a "
                  "small atypical part of a large upload (the median over its objects decides)")


def rows_of(model: MicroscopyModel, inputs: np.ndarray) -> np.ndarray:
    """The embedding rows the served network produces for ``inputs`` (network inputs, through run_network)."""
    with recording() as seen:
        model.run_network(inputs)
    return seen.rows if seen.rows is not None else np.zeros((0, 0), np.float32)


def _sample(index: np.ndarray, most: int, seed: int) -> np.ndarray:
    index = np.asarray(index)
    if len(index) <= most:
        return index
    return np.sort(np.random.default_rng(seed).choice(index, most, replace=False))


def compute(model: MicroscopyModel, training: np.ndarray, validation: Sequence[np.ndarray],
            test: Sequence[np.ndarray], describe: dict[str, Any], seed: int = 0) -> tuple[DomainStatistics, dict]:
    """Statistics from ``training`` (network inputs, run in chunks) and ``validation`` (one network-input batch
    per input); the share of ``test`` inputs flagged. Returns them and their model.json section (no file yet)."""
    chunks = [rows_of(model, training[start:start + 256]) for start in range(0, len(training), 256)]
    training_rows = np.concatenate(chunks)
    statistics = DomainStatistics.fit(training_rows, [rows_of(model, x) for x in validation], THRESHOLD_PERCENTILE)
    test_statistics = np.array([statistics.statistic(rows) for rows in (rows_of(model, x) for x in test) if len(rows)])
    flagged = float(np.mean(test_statistics > statistics.threshold)) if len(test_statistics) else None
    section = {
        "embedding": embedding_of(model.network),
        "statistic": "median Mahalanobis distance of the embeddings of every object and view the network ran on "
                     "to the training split's (Ledoit-Wolf covariance); flagged beyond the "
                     f"{THRESHOLD_PERCENTILE:g}th percentile of the validation inputs' distances",
        "threshold_percentile": THRESHOLD_PERCENTILE,
        "embedding_size": int(training_rows.shape[1]),
        "training_rows": int(len(training_rows)),
        "validation_inputs": len(validation),
        "test_inputs": len(test_statistics),
        "test_flagged": round(flagged, 4) if flagged is not None else None,
        "catches": WHAT_IT_CATCHES,
        "cannot_catch": WHAT_IT_MISSES,
        **describe,
    }
    print(f"[domain] {len(training_rows)} training rows, {len(validation)} validation inputs; test inputs flagged: "
          f"{section['test_flagged']} of {len(test_statistics)}", flush=True)
    return statistics, section


def write(out: Path, statistics: DomainStatistics, section: dict[str, Any]) -> dict[str, Any]:
    """``out/domain.npz`` and its model.json ``domain`` section (file, sha256, bytes and the report)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    path.write_bytes(statistics.to_bytes())
    return {"file": FILE, "sha256": sha256_of(path), "bytes": path.stat().st_size, **section}


def from_split(model: MicroscopyModel, x: np.ndarray, groups: np.ndarray, split: dict[str, np.ndarray],
               seed: int = 0, per_input: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[DomainStatistics, dict]:
    """The statistics of a network model from its training arrays and the split it trained with: every
    validation and test example is one input."""
    train = _sample(split["train"], MAX_TRAINING_INPUTS, seed)
    val, test = _sample(split["val"], MAX_CHECKED_INPUTS, seed), _sample(split["test"], MAX_CHECKED_INPUTS, seed)
    describe = {"fitted_on": f"{len(train)} training examples of {len(set(groups[train]))} groups; threshold from "
                             f"{len(val)} validation examples of {len(set(groups[val]))} groups; test: {len(test)} "
                             f"examples of {len(set(groups[test]))} other groups"}
    return compute(model, x[train].astype(np.float32), [x[i:i + 1].astype(np.float32) for i in val],
                   [x[i:i + 1].astype(np.float32) for i in test], describe, seed)


def main(argv: list[str] | None = None) -> None:
    args = arguments("python -m core.training.domain", __doc__, argv)
    import keras

    from core.assets import verify_weights

    spec, model, recipe = shipped_model(args)
    verify_weights(spec)  # the statistics belong to these weights; their own file is about to be replaced
    model.use_network(keras.saving.load_model(spec.weights_path, compile=False))
    statistics, section = recipe.domain_statistics(args.data, args.cache_dir,
                                                              spec.meta.get("training", {}).get("settings", {}))
    spec.meta["domain"] = write(spec.directory, statistics, section)
    write_meta(spec.directory, spec.meta)
    print(f"[domain] wrote {spec.directory / FILE} and its model.json section", flush=True)


if __name__ == "__main__":
    main()
