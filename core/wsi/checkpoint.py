"""A slide job's finished blocks on disk, so that a job re-run after a restart or a dead worker resumes from
its last finished block instead of from zero.

One JSON line per block (its index in the plan, its finding and its domain statistic), appended and flushed
as each block finishes; the first line names the plan and the weights, and a checkpoint written for another
plan or other weights is ignored. Findings are what :meth:`SlideModel.analyse_block` returns: NumPy arrays,
tuples, lists, dicts and plain numbers, encoded here without pickle.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def encode(value: Any) -> Any:
    """``value`` as JSON (arrays and tuples tagged, NaN and infinities as strings)."""
    if isinstance(value, np.ndarray):
        return {"ndarray": encode(value.tolist()), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"tuple": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {"dict": {key: encode(item) for key, item in value.items()}}
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return {"float": str(float(value))}
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "ndarray" in value:
        return np.array(decode(value["ndarray"]), dtype=value["dtype"]).reshape(value["shape"])
    if "tuple" in value:
        return tuple(decode(item) for item in value["tuple"])
    if "float" in value:
        return float(value["float"])
    return {key: decode(item) for key, item in value["dict"].items()}


class BlockCheckpoint:
    def __init__(self, path: Path, plan_key: str):
        self.path, self.plan_key = path, plan_key

    def load(self) -> dict[int, tuple[Any, float | None]]:
        """Every block finished for this plan: index → (finding, domain statistic); {} for none."""
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return {}
        if not lines or json.loads(lines[0]).get("plan") != self.plan_key:
            return {}
        done = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a process killed while writing it
                break
            done[row["block"]] = (decode(row["finding"]), decode(row["statistic"]))
        return done

    def start(self, done: dict[int, tuple[Any, float | None]]) -> None:
        """Write the checkpoint afresh with the blocks in ``done`` (what :meth:`load` gave): a line cut short
        by a killed process is not left in the middle."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join([json.dumps({"plan": self.plan_key}) + "\n"] +
                                   [self._line(index, *row) for index, row in sorted(done.items())]))
        partial.replace(self.path)

    def add(self, index: int, finding: Any, statistic: float | None) -> None:
        with open(self.path, "a") as handle:
            handle.write(self._line(index, finding, statistic))

    @staticmethod
    def _line(index: int, finding: Any, statistic: float | None) -> str:
        return json.dumps({"block": index, "finding": encode(finding), "statistic": encode(statistic)}) + "\n"

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
