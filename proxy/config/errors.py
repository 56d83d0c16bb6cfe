"""What a config check reports: an issue (refused), a warning (reported), the error listing them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class ConfigIssue(NamedTuple):
    """One problem in a config: where it is (dotted path, 1-based line) and what is wrong."""

    path: str  # "backends[1].url", "timeouts.connect", "" for the document root
    message: str
    line: int | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text if self.line is None else f"{text} (line {self.line})"


class ConfigWarning(ConfigIssue):
    """A valid setting that is probably a mistake: reported, never refused. Builders add it
    to the same list as the issues; parse_config sorts them apart."""

    __slots__ = ()


class ConfigError(Exception):
    """Every problem found in a config; ``str()`` lists them one per line."""

    def __init__(
        self,
        issues: Iterable[ConfigIssue],
        source: str | None = None,
        warnings: Iterable[ConfigIssue] = (),
    ) -> None:
        self.issues = list(issues)
        self.source = source
        self.warnings = list(warnings)
        # Passing all to Exception keeps the error picklable (e.g. across worker processes).
        super().__init__(self.issues, source, self.warnings)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)
