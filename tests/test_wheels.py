"""The wheel `make wheel` builds (in a copy of the source tree): installed in a fresh
virtualenv it runs the compiled modules and relays a request; without a C compiler it
falls back to the pure build, says so in one line, and does not fail."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import AppFactory
from tests.support.builds import compiled_modules, source_tree, version_line
from tests.support.peers import free_port, wait_for_port
from tests.support.rawhttp import request

ROOT = Path(__file__).resolve().parent.parent
FALLBACK = "building the pure-Python modules instead (mcplb --version says so)"
BUILD_SWITCH = "MCPLB_MYPYC"  # setup.py's mypyc switch: these tests make their own builds


def clean_environ() -> dict[str, str]:
    """This environment without what points at a build: the compiled pass sets PYTHONPATH,
    and pip in a fresh venv would find mcplb there, call it installed and install nothing."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", BUILD_SWITCH)}


def make_wheel(src: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`make wheel` in the copy, with this interpreter (its venv has the compile extra)."""
    shutil.copy2(ROOT / "Makefile", src / "Makefile")
    (src / ".stamp").touch()  # the venv exists: this one
    return subprocess.run(
        ["make", "-C", str(src), "wheel", f"PY={sys.executable}", "STAMP=.stamp"],
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def hello() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="from-backend")

    app = web.Application()
    app.router.add_get("/", answer)
    return app


# mypyc compiles the request path: a minute or more of the 2-core machine.
@pytest.mark.timeout(1200)
async def test_compiled_wheel_installs_in_a_fresh_venv_and_relays(
    tmp_path: Path, serve_app: AppFactory
) -> None:
    src = source_tree(tmp_path)
    built = await asyncio.to_thread(make_wheel, src)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert FALLBACK not in built.stdout + built.stderr
    (wheel,) = (src / "dist").glob("mcplb-*.whl")
    assert "-cp3" in wheel.name and "linux" in wheel.name  # a platform wheel
    said = f"dist/{wheel.name}: compiled ({len(compiled_modules())} modules)"
    assert said in built.stdout.splitlines()
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("mcplb-")}
    assert top == {"mcplb"}  # mypyc's shared library too: mcplb/native__mypyc...
    assert [n for n in names if n.startswith("mcplb/native__mypyc.") and n.endswith(".so")]
    for module in compiled_modules():
        path = "mcplb/" + module.replace(".", "/")
        assert [n for n in names if n.startswith(path + ".") and n.endswith(".so")], module
        assert path + ".py" in names  # the sources stay beside them

    venv, environ = tmp_path / "venv", clean_environ()
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "venv", str(venv)],
        env=environ,
        check=True,
        timeout=120,
    )
    install = await asyncio.to_thread(
        subprocess.run,
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    mcplb = venv / "bin" / "mcplb"
    version = subprocess.run(
        [str(mcplb), "--version"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.strip() == version_line(compiled=True)

    backend, port = await serve_app(hello()), free_port()
    config = tmp_path / "mcplb.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nbackends:\n  - {{name: a, url: 'http://127.0.0.1:{backend}'}}\n"
    )
    log = tmp_path / "mcplb.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [str(mcplb), "run", "--config", str(config)],
            cwd=tmp_path,
            env=environ,
            stdout=out,
            stderr=out,
        )
    try:
        await wait_for_port("127.0.0.1", port)
        response = await request(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (response.status, response.body) == (200, b"from-backend")
        proxy.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.wait, 20) == 0
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait(5)
    # The process that served said which build it was, first thing.
    assert version_line(compiled=True) in log.read_text()


def test_without_a_compiler_the_build_is_pure_and_says_so(tmp_path: Path) -> None:
    src = source_tree(tmp_path)
    missing = str(tmp_path / "no-such-compiler" / "cc")
    built = make_wheel(src, CC=missing)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    said = [line for line in output.splitlines() if FALLBACK in line]
    assert said == [f"mcplb: no C compiler found (CC={missing!r}): {FALLBACK}"]
    (wheel,) = (src / "dist").glob("mcplb-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    assert f"dist/{wheel.name}: pure Python" in built.stdout.splitlines()
    zipfile.ZipFile(wheel).extractall(tmp_path / "installed")
    version = subprocess.run(
        [sys.executable, "-P", "-m", "mcplb.proxy.cli", "--version"],
        env={"PYTHONPATH": str(tmp_path / "installed"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.strip() == version_line(compiled=False), version.stderr
