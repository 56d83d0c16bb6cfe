"""bench/cpu_budget.py end to end, shortened (one round of 500 requests of each kind): the
three kinds of request go through mcplb with 200 answers (the POSTs on the session mcplb
bound at an initialize through it), and the report names the build it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.builds import source_tree, version_line

ROOT = Path(__file__).resolve().parent.parent


def test_each_kind_of_request_is_measured_on_the_build_named(tmp_path: Path) -> None:
    compiled = os.environ.get("MCPLB_BUILD") == "compiled"
    build = "compiled" if compiled else "pure"
    out = tmp_path / "budget.json"
    run = subprocess.run(
        [
            *(sys.executable, "bench/cpu_budget.py", "--rounds", "1", "--requests", "500"),
            *("--builds", build, f"--{build}", str(ROOT), "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    # Exit 2 (a run failed) also when an answer was not 200: a POST not on its session.
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert data["builds"] == {build: version_line(compiled)}
    assert set(data["median_us"]) == {"http", "mcp", "mcp-2026"}
    for kind in data["median_us"].values():
        assert set(kind) == {"reference", f"mcplb {build}"}
        assert all(0 < us < 10_000 for us in kind.values())
    lines = run.stdout.splitlines()
    assert any(line.startswith(f"measured ({'compiled' if compiled else 'pure'}") for line in lines)
    assert [line.split()[0] for line in lines if line.startswith(("http ", "mcp"))] == [
        "http",
        "mcp",
        "mcp-2026",
    ]


def test_a_tree_called_compiled_that_is_pure_stops_the_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MCPLB_BUILD")}
    pure = ROOT if os.environ.get("MCPLB_BUILD") != "compiled" else None
    if pure is None:  # build/compiled: a copy without its compiled modules
        pure = source_tree(tmp_path)
    run = subprocess.run(
        [
            *(sys.executable, "bench/cpu_budget.py", "--rounds", "1", "--requests", "200"),
            *("--builds", "compiled", "--compiled", str(pure)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "the compiled build was asked for, the process runs mcplb" in run.stderr
    assert "(pure Python)" in run.stderr
