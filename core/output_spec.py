"""A model's answer, as model.json's ``output`` section declares it: the fields of each prediction and the fields
of the answer besides ``predictions``, each with a type and a description.

It is what the OpenAPI document shows as the model's response schema and what ``/metadata`` tells a client;
a test holds every model's real answers to it. An unknown type stops start-up with a message naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from core.errors import AssetError

#: the types a field may declare, and the JSON values each admits
TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,),
    "string[]": (list,), "number[]": (list,), "integer[]": (list,), "object[]": (list,), "number[][]": (list,),
}


@dataclass(frozen=True)
class Field:
    type: str
    description: str

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (from an answer) has this type; null stands for "not applicable" in every type."""
        if value is None:
            return True
        if isinstance(value, bool) and self.type not in ("boolean",):
            return False
        if not isinstance(value, TYPES[self.type]):
            return False
        if self.type.endswith("[]"):
            return all(Field(self.type[:-2], "").admits(item) for item in value)
        return True


@dataclass(frozen=True)
class OutputSpec:
    prediction: dict[str, Field]   # the fields of each element of ``predictions``
    answer: dict[str, Field]       # the answer's other fields

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, source: Path) -> "OutputSpec":
        if not isinstance(data, Mapping) or set(data) != {"prediction", "answer"}:
            raise AssetError(f"{source}: 'output' must have exactly 'prediction' and 'answer', each mapping a "
                             f"field name to its type and description")

        def fields_of(section: str) -> dict[str, Field]:
            out = {}
            for name, declared in data[section].items():
                kind = declared.get("type") if isinstance(declared, Mapping) else None
                if kind not in TYPES or not isinstance(declared.get("description"), str):
                    raise AssetError(f"{source}: output field '{section}.{name}' needs a type ({', '.join(TYPES)}) "
                                     f"and a description")
                out[name] = Field(kind, declared["description"])
            return out

        return cls(fields_of("prediction"), fields_of("answer"))

    def mismatches(self, answer: Mapping[str, Any]) -> list[str]:
        """What in a model's ``answer`` (its ``predict`` result) the declaration does not cover, in words."""
        problems = []
        for name, value in answer.items():
            if name == "predictions":
                continue
            if name not in self.answer:
                problems.append(f"undeclared answer field '{name}'")
            elif not self.answer[name].admits(value):
                problems.append(f"answer field '{name}' is not {self.answer[name].type}: {value!r}"[:200])
        for prediction in answer.get("predictions", []):
            for name, value in prediction.items():
                if name not in self.prediction:
                    problems.append(f"undeclared prediction field '{name}'")
                elif not self.prediction[name].admits(value):
                    problems.append(f"prediction field '{name}' is not {self.prediction[name].type}: {value!r}"[:200])
        return sorted(set(problems))
