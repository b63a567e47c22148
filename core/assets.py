"""Reading ``assets/<id>/model.json`` (the single source of a model's metadata) and checking weights."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import AssetError

MODEL_JSON = "model.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """A model's metadata as read from its ``model.json``, plus where its files live."""

    id: str
    directory: Path
    meta: dict[str, Any]

    @property
    def labels(self) -> list[dict[str, Any]]:
        return self.meta["labels"]

    @property
    def label_names(self) -> list[str]:
        return [label["name"] for label in self.labels]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def source(self) -> Path:
        """The model.json file, named in every error about its content."""
        return self.directory / MODEL_JSON

    @property
    def version(self) -> str:
        return self.meta.get("version", "0")

    @property
    def weights_path(self) -> Path:
        return self.directory / self.meta["weights"]["file"]

    def public_metadata(self) -> dict[str, Any]:
        """What ``GET /model/<id>/metadata`` shows: model.json without file-internal details."""
        meta = {key: value for key, value in self.meta.items() if key != "weights"}
        meta["id"] = self.id
        return meta


def read_spec(directory: Path) -> ModelSpec:
    path = directory / MODEL_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise AssetError(f"missing model description {path}") from None
    except json.JSONDecodeError as exc:
        raise AssetError(f"{path} is not valid JSON: {exc}") from None
    for key in ("id", "name", "labels", "weights"):
        if key not in meta:
            raise AssetError(f"{path} lacks the required key '{key}'")
    if meta["id"] != directory.name:
        raise AssetError(f"{path} has id '{meta['id']}' but lives in folder '{directory.name}'")
    return ModelSpec(id=meta["id"], directory=directory, meta=meta)


def verify_weights(spec: ModelSpec, weights: dict[str, Any] | None = None) -> None:
    """Stop with a message naming the file when the weights (model.json ``weights``, or another network's
    ``weights`` entry given here) are absent or differ from their recorded sha256."""
    weights = weights or spec.meta["weights"]
    path = spec.directory / weights["file"]
    if not path.is_file():
        raise AssetError(f"model '{spec.id}': weights file {path} is missing")
    expected = weights.get("sha256")
    actual = sha256_of(path)
    if expected != actual:
        raise AssetError(f"model '{spec.id}': weights file {path} is corrupt or replaced "
                         f"(sha256 {actual}, model.json expects {expected})")


def discover(assets_dir: Path) -> list[str]:
    """Ids of every model that has a model.json under assets_dir, sorted."""
    return sorted(p.parent.name for p in assets_dir.glob(f"*/{MODEL_JSON}"))


def write_meta(spec_dir: Path, meta: dict[str, Any]) -> None:
    (spec_dir / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
