"""What the compiled build's ``mcplb --version`` says, read from setup.py's COMPILED list
(the image, the wheels and the benchmarks are checked against it), and a copy of the
package's source tree to build or import from."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mcplb import __version__

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "mcplb/__init__.py", "mcplb/py.typed")
FOLDERS = ("proxy", "strategies", "healthcheck")


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


def source_tree(tmp: Path) -> Path:
    """What the wheel is built from (the Dockerfile's build context): the package's files,
    no compiled module, no build directory; mcplb/ linking to the folders as in a checkout."""
    src = tmp / "src"
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
        (src / "mcplb" / folder).symlink_to(Path("..") / folder)
    return src
