"""A model's input spec: model.json's ``input`` section as a typed dataclass, checked when the model is built.

Every model reads the keys of the base class; a model with more declares a subclass (its ``Input``). A key
that is unknown, missing or of the wrong type stops start-up with a message naming the file.
"""
from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

from core.errors import AssetError

Spec = TypeVar("Spec", bound="InputSpec")


@dataclass(frozen=True)
class InputSpec:
    #: what an upload may be, in words (shown in /metadata)
    accepts: str
    #: the pixel scale the model expects, in words
    resolution: str
    #: the shape of one network input: height, width, channels of an image; or the number of measures
    network_input: tuple[int, ...]

    @property
    def network_px(self) -> int:
        return self.network_input[0]

    @classmethod
    def from_json(cls: type[Spec], data: Mapping[str, Any], source: Path) -> Spec:
        """The spec from model.json's ``input`` mapping; ``source`` names the file in errors."""
        declared = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(declared))
        missing = sorted(name for name, f in declared.items()
                         if name not in data and f.default is MISSING and f.default_factory is MISSING)
        if unknown or missing:
            problems = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + \
                       ([f"missing key(s) {', '.join(missing)}"] if missing else [])
            raise AssetError(f"{source}: 'input' has {' and '.join(problems)} (a {cls.__name__} has "
                             f"{', '.join(declared)})")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _checked(name, data[name], hints[name], source) for name in declared if name in data})


def _checked(name: str, value: Any, hint: Any, source: Path) -> Any:
    """``value`` as the declared type (lists become tuples where a tuple is declared)."""
    origin = typing.get_origin(hint) or hint
    if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        item = typing.get_args(hint)[0]
        if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            return tuple(value)
    elif origin in (int, str, dict, list) and isinstance(value, origin) and not isinstance(value, bool):
        return value
    raise AssetError(f"{source}: input key '{name}' must be {getattr(hint, '__name__', str(hint))}, "
                     f"not {type(value).__name__} {value!r}"[:300])
