"""Declared model options (form or query fields of a predict call), parsed and checked in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from core.errors import BadOption

# As JSON and the OpenAPI boolean type spell them (case aside), so that a form that is valid by the
# published schema is exactly what is accepted.
_TRUE = {"true"}
_FALSE = {"false"}


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    help: str
    #: set from model.json's ``defaults`` when the model is built (see core.model_base)
    default: Any = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw: str) -> Any:
        text = raw.strip()
        raw = raw if len(raw) <= 60 else f"{raw[:60]}... ({len(raw):,} characters)"  # as messages quote it
        if self.type is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise BadOption(f"option '{self.name}' must be true or false, not '{raw}'")
        try:
            value = self.type(text)
        except ValueError:
            raise BadOption(f"option '{self.name}' must be of type {self.type.__name__}, not '{raw}'") from None
        if self.choices is not None and value not in self.choices:
            raise BadOption(f"option '{self.name}' must be one of {', '.join(map(str, self.choices))}, not '{raw}'")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise BadOption(f"option '{self.name}' must lie between {self.minimum} and {self.maximum}, not '{raw}'")
        if isinstance(value, float) and value != value:
            raise BadOption(f"option '{self.name}' must be a number, not '{raw}'")
        return value

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.minimum is not None or self.maximum is not None:
            out["range"] = [self.minimum, self.maximum]
        return out


def parse_options(declared: tuple[Option, ...], given: Mapping[str, str], ignore: set[str]) -> dict[str, Any]:
    """Values for every declared option (defaults filled in); an undeclared field is the client's mistake."""
    by_name = {option.name: option for option in declared}
    unknown = sorted(set(given) - set(by_name) - ignore)
    if unknown:
        accepted = ", ".join(sorted(by_name)) or "none"
        named = ", ".join(name if len(name) <= 40 else f"{name[:40]}..." for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise BadOption(f"unknown option(s) {named}{more}; this model accepts: {accepted}")
    return {name: option.parse(given[name]) if name in given else option.default
            for name, option in by_name.items()}
