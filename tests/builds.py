"""What the compiled build's ``mcplb --version`` says, read from setup.py's COMPILED list:
the image, the wheels and the benchmarks are checked against it."""

from __future__ import annotations

import re
from pathlib import Path

from mcplb import __version__

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[str]:
    """setup.py's COMPILED ("proxy/relay/http11" ...) as module names under mcplb."""
    text = (ROOT / "setup.py").read_text()
    names = re.findall(r'^\s+"(\w+(?:/\w+)+)",$', text, re.M)
    assert len(names) > 20, "setup.py's COMPILED list was not found"
    return sorted(name.replace("/", ".") for name in names)


def version_line(compiled: bool) -> str:
    """``mcplb --version`` of the compiled build (every module of COMPILED), or the pure."""
    build = "compiled: " + ", ".join(compiled_modules()) if compiled else "pure Python"
    return f"mcplb {__version__} ({build})"
