"""The deploy files: Dockerfile (hadolint, and its own commands replayed in a fresh
virtualenv: no container engine here), Kubernetes manifests (kubernetes-validate, the
ConfigMaps through ``mcplb check``, and what the manifests must agree on with the config),
the systemd unit (``systemd-analyze verify`` where systemd is installed)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config
from tests.conftest import AppFactory
from tests.support.builds import version_line
from tests.support.peers import free_port, wait_for_port
from tests.support.rawhttp import request

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "mcplb.service"
KUBERNETES_VERSION = "1.35.0"  # a current release kubernetes-validate has the schemas of
CONFIG_IN_IMAGE = "/etc/mcplb/config.yaml"
# Where the Dockerfile puts things in the image; the replay puts them under a temp dir.
IMAGE_PATHS = ("/opt/mcplb", "/opt/build", "/src", "/etc/mcplb")
TOOLS = Path(sys.executable).parent  # hadolint and kubernetes-validate: the dev extra's


# --- Dockerfile --------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        result.append((word.upper(), rest.strip()))
        current = ""
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_hadolint_finds_nothing() -> None:
    out = subprocess.run(
        [str(TOOLS / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_final_stage_is_slim_non_root_and_runs_mcplb() -> None:
    *_, final = stages(DOCKERFILE.read_text())
    assert re.fullmatch(r"python:[\d.]+-slim(-\w+)? *", final[0][1])  # FROM, not a build stage
    kinds = {kind for kind, _ in final}
    # Nothing installed or compiled there: the build stage's virtualenv is copied in.
    assert not [args for kind, args in final if kind == "RUN" and "pip" in args]
    assert not [args for kind, args in final if kind == "RUN" and "apt-get" in args]
    assert any(kind == "COPY" and args.startswith("--from=build ") for kind, args in final)
    (user,) = [args for kind, args in final if kind == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)  # numeric: runAsNonRoot can check it
    labels = " ".join(args for kind, args in final if kind == "LABEL")
    for label in ("title", "version", "licenses", "description"):
        assert f"org.opencontainers.image.{label}=" in labels
    (entrypoint,) = [json.loads(args) for kind, args in final if kind == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for kind, args in final if kind == "CMD"]  # exec form: JSON
    assert entrypoint == ["mcplb", "run"]
    assert cmd == ["--config", CONFIG_IN_IMAGE]
    assert "STOPSIGNAL" not in kinds  # SIGTERM, the default, starts mcplb's shutdown


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` (relative) out of the build context: the
    last pattern that matches it, or one of its parent directories, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        for candidate in candidates:
            name_only = glob.startswith("**/") and fnmatch.fnmatch(
                candidate.rsplit("/", 1)[-1], glob[3:]
            )
            if name_only or fnmatch.fnmatch(candidate, glob):
                ignored = not negated
    return ignored


def build_context() -> Iterator[str]:
    """The files `docker build .` would send: the checkout's files minus .dockerignore."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in tracked:
        if (ROOT / path).is_file() and not dockerignored(path, patterns):
            yield path


class Replay:
    """Runs a Dockerfile's instructions on this machine, the image's paths under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root
        self.context = sorted(build_context())
        shim = root / "shim"
        shim.mkdir()
        # "python" in RUN lines is the image's interpreter: this machine's (not a venv's).
        base = getattr(sys, "_base_executable", sys.executable)
        (shim / "python").write_text(f'#!/bin/sh\nexec "{base}" "$@"\n')
        (shim / "python").chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        self.env["PATH"] = f"{shim}{os.pathsep}{self.env.get('PATH', '')}"
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.output: list[str] = []  # what each RUN printed

    def packages(self, command: str) -> None:
        """The build stage's apt-get: the compiler mypyc needs. Not run here (no root, no
        apt on the host): its programs must be here already, as they are in the image."""
        steps = [step.strip() for step in command.split("&&")]
        assert steps[0] == "apt-get update" and steps[-1] == "rm -rf /var/lib/apt/lists/*"
        (install,) = steps[1:-1]
        words = install.split()
        assert words[:4] == ["apt-get", "install", "-y", "--no-install-recommends"], install
        assert set(words[4:]) == {"gcc", "libc6-dev"}, install
        assert shutil.which("gcc") is not None, "the image's compiler: apt-get install gcc"

    def place(self, text: str) -> str:
        for path in sorted(IMAGE_PATHS, key=len, reverse=True):
            text = re.sub(rf"(?<![\w/]){re.escape(path)}(?=/|\b|$)", f"{self.root}{path}", text)
        return text

    def run(self, instruction: str, args: str) -> None:
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                value = re.sub(r"\$\{(\w+)\}", lambda m: self.env.get(m[1], ""), value)
                self.env[key] = self.place(value)
            # Only keeps pip's cache out of an image layer; here the cache saves a download.
            self.env.pop("PIP_NO_CACHE_DIR", None)
        elif instruction == "WORKDIR":
            self.cwd = Path(self.place(args))
            self.cwd.mkdir(parents=True, exist_ok=True)
        elif instruction == "RUN":
            command = self.place(args)
            if command.startswith("apt-get update"):
                self.packages(command)
                return
            # Only what runs inside the temp dir: the image's Python, or its own programs;
            # and ln between the files copied there (no absolute path).
            for step in command.split("&&"):
                program, *words = step.split()
                if program == "ln":
                    assert not [w for w in words if w.startswith("/")], step
                    continue
                assert program == "python" or Path(program).is_relative_to(self.root), step
            out = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert out.returncode == 0, f"RUN {args}\n{out.stdout}{out.stderr}"
            self.output.append(out.stdout + out.stderr)
        elif instruction == "COPY":
            words = args.split()
            if words[0].startswith("--from="):
                # The other stage's files are where the replay put them already.
                assert [self.place(w) for w in words[1:-1]] == [self.place(words[-1])]
                return
            self.copy(words[:-1], words[-1])
        elif instruction == "ENTRYPOINT":
            self.entrypoint = [self.place(word) for word in json.loads(args)]
        elif instruction == "CMD":
            self.cmd = [self.place(word) for word in json.loads(args)]
        # FROM, ARG, LABEL, USER, EXPOSE: nothing to do on this machine.

    def copy(self, sources: list[str], destination: str) -> None:
        target = Path(self.place(destination))
        if not target.is_absolute():
            target = self.cwd / destination
        for source in sources:
            files = [p for p in self.context if p == source or p.startswith(source + "/")]
            assert files, f"COPY {source}: not in the build context (.dockerignore?)"
            for path in files:
                if path == source:  # a file: into the directory, or as the named file
                    dest = target / Path(path).name if destination.endswith("/") else target
                else:  # a directory's contents
                    dest = target / Path(path).relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, dest)


def name_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="backend-ok")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


# The build stage compiles the request path with mypyc: a minute or two of the 2-core CPU.
BUILD_SWITCH = "MCPLB_MYPYC"  # setup.py's switch: this test makes its own compiled build


@pytest.mark.timeout(900)
async def test_dockerfile_commands_make_a_working_proxy(
    tmp_path: Path, serve_app: AppFactory
) -> None:
    """The Dockerfile's own COPY, RUN, ENV, ENTRYPOINT and CMD, replayed in a temp dir:
    the image holds the compiled build, and serves."""
    replay = Replay(tmp_path)
    text = DOCKERFILE.read_text()
    assert f"ENV {BUILD_SWITCH}=1" in text, "the build stage must turn the mypyc build on"
    *build, final = stages(text)
    for instruction, args in [i for stage in build for i in stage] + final:
        if instruction == "RUN" and (instruction, args) in final:
            # The final stage only makes the image's user: never on this machine.
            assert re.fullmatch(r"groupadd [^;&|]* && useradd [^;&|]*", args), args
            continue
        await asyncio.to_thread(replay.run, instruction, args)
    venv = tmp_path / IMAGE_PATHS[0].lstrip("/")
    # Installed, not run from the checkout; without the demo's MCP SDK.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u, mcplb;"
            "print(mcplb.__file__); print(u.find_spec('mcp') is None)",
        ],
        cwd=tmp_path,
        env=replay.env,
        capture_output=True,
        text=True,
        check=True,
    )
    location, no_sdk = probe.stdout.split()
    assert Path(location).is_relative_to(venv) and no_sdk == "True"
    mcplb = shutil.which(replay.entrypoint[0], path=replay.env["PATH"])
    assert mcplb == str(venv / "bin/mcplb")
    # The compiled build, every module of setup.py's list (the build stage printed it too).
    version = subprocess.run(
        [mcplb, "--version"], cwd=tmp_path, env=replay.env, capture_output=True, text=True
    )
    assert version.stdout.strip() == version_line(compiled=True), version.stdout
    assert version_line(compiled=True) in replay.output[-1]

    backend = await serve_app(name_app())
    port, admin = free_port(), free_port()
    env = {
        **replay.env,
        # The image's default config takes these (deploy/docker/config.yaml).
        "MCPLB_BACKEND_URL": f"http://127.0.0.1:{backend}",
        "MCPLB_LISTEN": f"127.0.0.1:{port}",
        "MCPLB_ADMIN_LISTEN": f"127.0.0.1:{admin}",
    }
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            replay.entrypoint + replay.cmd, cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        await wait_for_port("127.0.0.1", admin)
        response = await request(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (response.status, response.body) == (200, b"backend-ok")
        ready = await request(admin, b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert ready.status == 200
        proxy.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.wait, 10) == 0, log.read_text()
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait(5)


def test_dockerignore_keeps_out_what_the_image_does_not_need() -> None:
    context = set(build_context())
    assert {"pyproject.toml", "proxy/relay/connection.py", "deploy/docker/config.yaml"} <= context
    assert not [p for p in context if p.startswith(("tests/", ".venv/", "bench/", ".git/"))]


# --- Kubernetes --------------------------------------------------------------------------


def manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, over the files a kustomization lists."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for doc in documents(directory / name):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def test_manifests_validate_strictly() -> None:
    validate = [str(TOOLS / "kubernetes-validate"), "--strict", "--quiet"]
    out = subprocess.run(
        [*validate, "--kubernetes-version", KUBERNETES_VERSION, *map(str, manifests())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(manifests()) >= 10


def test_kustomizations_list_every_manifest() -> None:
    listed: set[Path] = set()
    for path in KUBERNETES.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for name in kustomization["resources"]:
            assert (path.parent / name).is_file(), f"{path}: {name}"
            listed.add((path.parent / name).resolve())
        for component in kustomization.get("components", []):
            assert (path.parent / component / "kustomization.yaml").is_file()
    assert listed == {p.resolve() for p in manifests()}
    # The edge's optional Redis is a Component it names (commented out by default).
    assert "#   - ../redis" in (KUBERNETES / "edge" / "kustomization.yaml").read_text()


def container_env(
    container: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, str]:
    """The container's environment, secrets taken from the Secret manifests."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = objects["Secret", ref["name"]]["stringData"][ref["key"]]
    return env


def mcplb_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["image"] == "mcplb"
    ]
    return container


def configmap_config(
    objects: dict[tuple[str, str], dict[str, Any]], deployment: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """The config text the mcplb container mounts, and its environment."""
    container = mcplb_container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/mcplb"]
    configmap = objects["ConfigMap", volumes[mount["name"]]["configMap"]["name"]]
    assert container["args"] == ["--config", CONFIG_IN_IMAGE]
    return configmap["data"]["config.yaml"], container_env(container, objects)


def redis_component_env() -> dict[str, str]:
    """The env vars the Redis component adds to mcplb (its JSON patch)."""
    component = yaml.safe_load((KUBERNETES / "redis" / "kustomization.yaml").read_text())
    (patch,) = component["patches"]
    env = {}
    for operation in yaml.safe_load(patch["patch"]):
        assert operation["path"] == "/spec/template/spec/containers/0/env/-"
        env[operation["value"]["name"]] = operation["value"]["value"]
    return env


@pytest.mark.parametrize("variant", ["edge", "edge+redis", "sidecar"])
def test_configmap_config_passes_mcplb_check(variant: str, tmp_path: Path) -> None:
    directory = KUBERNETES / variant.split("+")[0]
    objects = resources(directory)
    deployment = objects["Deployment", "mcplb" if variant != "sidecar" else "mcp-server"]
    text, env = configmap_config(objects, deployment)
    if variant == "edge+redis":
        env.update(redis_component_env())
    path = tmp_path / "config.yaml"
    path.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MCPLB_")}
    out = subprocess.run(
        [str(TOOLS / "mcplb"), "check", "--config", str(path)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    if variant.startswith("edge"):
        assert "+ DNS A mcp-headless," in out.stdout
    stores = {"edge": "signed", "edge+redis": "redis", "sidecar": "memory"}
    assert parse_config(text, environ=env).sticky.store == stores[variant]


def probe_port(container: dict[str, Any], probe: str) -> int:
    port = container[probe]["httpGet"]["port"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(named.get(port, port))


@pytest.mark.parametrize("variant", ["edge", "sidecar"])
def test_deployment_fits_its_config(variant: str) -> None:
    objects = resources(KUBERNETES / variant)
    deployment = objects["Deployment", "mcplb" if variant == "edge" else "mcp-server"]
    text, env = configmap_config(objects, deployment)
    config: Config = parse_config(text, environ=env)
    pod = deployment["spec"]["template"]
    container = mcplb_container(deployment)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"]["path"] == path
        assert probe_port(container, probe) == config.admin.listen_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.listen_port and config.listen_host == "0.0.0.0"
    # The kubelet's SIGKILL only after mcplb's own shutdown; a delay for the endpoints.
    timeouts = config.timeouts
    assert pod["spec"]["terminationGracePeriodSeconds"] > timeouts.shutdown_delay + timeouts.grace
    assert timeouts.shutdown_delay >= 5
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    user = security.get("runAsUser", pod["spec"]["securityContext"].get("runAsUser"))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and user == 10001
    assert {"requests", "limits"} <= set(container["resources"])
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [o for (kind, _), o in objects.items() if kind == "Service"]
    entry = [s for s in services if s["spec"]["selector"].items() <= labels.items()]
    assert [s["spec"]["ports"][0]["targetPort"] for s in entry] == ["http"]
    if variant == "sidecar":
        (server,) = [c for c in pod["spec"]["containers"] if c is not container]
        # The server outlives mcplb's delay and drain.
        assert server["lifecycle"]["preStop"]["sleep"]["seconds"] >= timeouts.shutdown_delay
        return
    assert deployment["spec"]["replicas"] >= 2
    pdb = objects["PodDisruptionBudget", "mcplb"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler", "mcplb"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "mcplb",
    )
    assert hpa["spec"]["minReplicas"] >= 2
    # Discovery names the MCP servers' headless Service, on its port.
    assert config.discovery is not None
    dns = config.discovery.dns
    headless = objects["Service", dns.name.split(".")[0]]
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [dns.port]
    # One process per pod, sessions shared across replicas without a per-pod memory.
    assert config.workers == 1 and config.sticky.store != "memory"


# --- systemd -----------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_runs_reloads_and_stops_mcplb() -> None:
    settings = unit_settings()
    (start,) = settings["ExecStart"]
    assert shlex.split(start)[1:] == ["run", "--config", CONFIG_IN_IMAGE]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["KillMode"] == ["mixed"]  # SIGTERM to the supervisor only
    defaults = parse_config("backends: [{name: a, url: 'http://127.0.0.1:1'}]").timeouts
    assert int(settings["TimeoutStopSec"][0]) > defaults.grace + defaults.shutdown_delay
    for hardening in ("NoNewPrivileges", "ProtectSystem", "DynamicUser", "PrivateTmp"):
        assert settings[hardening][0] in ("yes", "strict"), hardening


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Runs only where systemd is installed (every Debian-like CI runner is)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at this checkout's mcplb.
    unit = tmp_path / "mcplb.service"
    unit.write_text(UNIT.read_text().replace("/opt/mcplb/bin/mcplb", str(TOOLS / "mcplb")))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
