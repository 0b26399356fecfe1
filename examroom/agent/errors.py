"""Errors the agent reports to people: each names the file, the key, the value and what was expected."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    file: str
    key: str          # dotted path, e.g. "mqtt.port", "device[2].pin", "row 7.id_number"
    message: str      # what is wrong and what was expected
    value: Any = None

    def __str__(self) -> str:
        shown = "" if self.value is None else f" (got {self.value!r})"
        return f"{self.file}: {self.key}: {self.message}{shown}"


class ConfigError(ValueError):
    """One or more problems in a file a person wrote; the agent does not start half-configured."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
