"""Documents and helpers shared by the config tests (tests/test_config_*.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config
from mcplb.proxy.config.validate import file_issues

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
BACKEND = "backends:\n  - name: a\n    url: http://127.0.0.1:9001\n"
# Appended to documents with workers > 1 that are not about sessions: without it, the store
# defaults to "signed", which needs keys.
NO_SESSIONS = "sticky: {mcp_sessions: false}\n"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, **environ: str) -> Config:
    """The config of ``text``, the files it names checked as `check` and `run` do."""
    return parse_config(doc(text), environ=environ, checks=file_issues)


def errors(text: str, **environ: str) -> list[str]:
    """The issues parse_config and the file checks report for ``text``, as strings."""
    with pytest.raises(ConfigError) as info:
        parse_config(doc(text), environ=environ, checks=file_issues)
    return [str(issue) for issue in info.value.issues]


def error(text: str, **environ: str) -> str:
    """The single issue parse_config reports for ``text``."""
    found = errors(text, **environ)
    assert len(found) == 1, found
    return found[0]


def with_top(line: str) -> str:
    """A valid document plus one top-level line (which lands on line 1)."""
    return line + "\n" + BACKEND


def with_backend(extra: str) -> str:
    """A document with one backend whose entry gets ``extra`` lines appended (from line 4)."""
    return "backends:\n  - name: a\n    url: http://127.0.0.1:9001\n" + extra


DURATION_HINT = 'expected seconds or a number with unit ms, s, m or h (e.g. "250ms", "2s", "1m30s")'


def pem_file(tmp_path: Path, name: str = "ca.pem") -> Path:
    """An existing file (the loader checks only that it exists)."""
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


# --- concurrency limits -------------------------------------------------------


def section_doc(section: str, body: str) -> str:
    """BACKEND (lines 1-3) then "``section``:" on line 4 and ``body`` from line 5."""
    return BACKEND + f"{section}:\n" + textwrap.indent(doc(body), "  ")


RETRY_CONDITION_HINT = "must be one of connect_failure, reset, 502, 503, 504"


# --- rate limiting ------------------------------------------------------------

RATE_HINT = 'must be requests per second, or a string such as "600/m" or "5/s"'
RATE_KEY_HINT = 'must be "address", "principal" or "header:NAME", e.g. "header:X-Api-Key"'
