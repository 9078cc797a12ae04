from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigIssue"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str  # "services[0].routes[1].max_body"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used. ``issues`` lists every problem found, each with a location."""

    def __init__(self, issues: list[ConfigIssue] | str, file: str = "<config>") -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(file, None, "", issues)]
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))
