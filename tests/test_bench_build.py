"""Benchmarks say what they measured (issue 23 item 7): each prints the version line of the
mcplb process it measured, pure or compiled, measures the mcplb that PYTHONPATH names even
when run from the repository root (whose pure modules shadowed PYTHONPATH=build/compiled),
and refuses to report a pure process as the compiled build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import WrongBuild, build_label, checked_build
from mcplb import __version__
from tests.support.builds import source_tree, version_line

ROOT = Path(__file__).resolve().parent.parent
GATE = [sys.executable, "bench/cpu_gate.py", "--rounds", "1", "--requests", "500"]
PURE = f"mcplb {__version__} (pure Python)"
COMPILED = f"mcplb {__version__} (compiled: proxy.relay.http11, strategies.base)"


def marked_tree(tmp_path: Path) -> Path:
    """A pure copy of the package whose version says it is this copy."""
    tree = source_tree(tmp_path)
    init = tree / "mcplb" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', f'"{__version__}+tree"'))
    return tree


def gate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CPU gate, shortened, run from the repository root as a new user would."""
    return subprocess.run(
        GATE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_pure_line_is_refused_where_the_compiled_build_was_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCPLB_BUILD", "compiled")
    with pytest.raises(WrongBuild, match="not reporting it as compiled"):
        checked_build(PURE)
    assert checked_build(COMPILED) == COMPILED
    assert build_label(COMPILED) == "compiled (2 modules)"
    assert build_label(PURE) == "pure Python"


def test_the_gate_names_the_build_of_the_process_it_measured() -> None:
    """In `make unit` the pure build, in `make unit-compiled` (MCPLB_BUILD=compiled,
    PYTHONPATH=build/compiled) the compiled one, every module of setup.py's list."""
    run = gate(dict(os.environ))
    assert run.returncode in (0, 1), run.stdout + run.stderr  # 1: above the limit (load)
    expected = version_line(compiled=os.environ.get("MCPLB_BUILD") == "compiled")
    assert f"measured: {expected}" in run.stdout.splitlines(), run.stdout


def test_from_the_root_pythonpath_names_the_mcplb_measured(tmp_path: Path) -> None:
    tree = marked_tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MCPLB_BUILD"}
    run = gate({**env, "PYTHONPATH": str(tree)})
    assert run.returncode in (0, 1), run.stdout + run.stderr
    # The copy's mcplb, not the checkout's: the working directory no longer shadows it.
    assert f"measured: mcplb {__version__}+tree (pure Python)" in run.stdout.splitlines()


def test_a_pure_run_asked_to_be_compiled_stops(tmp_path: Path) -> None:
    tree = marked_tree(tmp_path)
    run = gate({**os.environ, "PYTHONPATH": str(tree), "MCPLB_BUILD": "compiled"})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "not reporting it as compiled" in run.stderr
    assert "measured:" not in run.stdout
