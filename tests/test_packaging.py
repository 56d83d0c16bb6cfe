"""The project installs as one package, ``mcplb``; the MCP SDK is only the demo's."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_only_the_mcplb_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mcplb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("mcplb-")}
    assert top == {"mcplb"}
    for module in ("proxy/relay/connection.py", "strategies/base.py", "healthcheck/monitor.py"):
        assert f"mcplb/{module}" in names
    for typed in ("mcplb/py.typed", "mcplb/proxy/py.typed", "mcplb/strategies/py.typed"):
        assert typed in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mcplb = mcplb.proxy.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_mcp_sdk_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("mcp") for dep in project["dependencies"])
    assert any(dep.startswith("mcp") for dep in project["optional-dependencies"]["demo"])


def test_run_path_never_imports_the_sdk() -> None:
    code = (
        "import sys, mcplb.proxy.cli, mcplb.proxy.server.worker, mcplb.proxy.relay.connection;"
        "print(any(m == 'mcp' or m.startswith('mcp.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
