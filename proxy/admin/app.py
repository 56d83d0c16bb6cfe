"""The admin API (aiohttp, its own listener): metrics, health, status, drain.

With several workers, worker 0 serves it: it merges the snapshots the other workers write
every second into the shared state directory, and publishes drain decisions there for
them to apply (see WorkerState).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from mcplb import __version__
from mcplb.proxy.cluster.backends import WEIGHT_SCALE
from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.checks import parse_duration
from mcplb.proxy.config.hosts import default_allowed_hosts
from mcplb.proxy.config.schema import Config
from mcplb.proxy.observability.metrics import render
from mcplb.proxy.observability.state_dir import write_json
from mcplb.proxy.routing.host_check import HostPolicy


class Runtime(Protocol):
    """What the admin API reads of the worker's shared state (``server.runtime.Runtime``)."""

    config: Config
    cluster: Cluster
    generation: int  # successful reloads
    stopping: bool

    def snapshot(self, worker: int) -> dict[str, Any]:
        """This worker's counters and view of the backends (``metrics.render`` reads it)."""


SNAPSHOT_MAX_AGE = 5.0  # seconds; older worker files belong to dead workers


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    messages: list[str]  # what changed, or why the new config was refused
    generation: int | None = None
    pending: bool = field(default=False)  # handed to the supervisor for every worker


class WorkerState:
    """Files through which workers share counters and drain state."""

    def __init__(self, runtime: Runtime, worker: int, directory: Path | None) -> None:
        self.runtime = runtime
        self.worker = worker
        self.directory = directory
        self._control_seen = 0.0
        self._health_seen: object = None  # verdicts last written, or file mtime last read

    def publish(self) -> None:
        """Write this worker's snapshot (others read it when they serve the admin API)."""
        if self.directory is None:
            return
        write_json(
            self.directory / f"worker-{self.worker}.json",
            self.runtime.snapshot(self.worker),
        )

    def share_health(self) -> None:
        """One worker probes; the others take its verdicts from a file (every sweep tick),
        so that probes are not multiplied by the workers and all agree."""
        health = self.runtime.cluster.health
        if self.directory is None or not health.config.active.enabled:
            return
        path = self.directory / "health.json"
        if health.probing:
            verdicts = health.verdicts()
            if verdicts != self._health_seen:
                self._health_seen = verdicts
                write_json(path, verdicts)
            return
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._health_seen:
                return
            verdicts = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # not written yet, or being replaced right now
        self._health_seen = mtime
        health.adopt(verdicts)

    def snapshots(self) -> list[dict[str, Any]]:
        own = self.runtime.snapshot(self.worker)
        if self.directory is None:
            return [own]
        found = [own]
        try:
            rejected = json.loads((self.directory / "supervisor.json").read_text())
        except (OSError, ValueError):
            rejected = {}
        if rejected.get("reload_failures"):  # SIGHUP reloads the supervisor refused
            own["stats"]["reloads"]["failure"] = (
                own["stats"]["reloads"].get("failure", 0) + rejected["reload_failures"]
            )
        now = time.time()
        for path in self.directory.glob("worker-*.json"):
            if path.name == f"worker-{self.worker}.json":
                continue
            try:
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now, or gone
            if now - snapshot["time"] <= SNAPSHOT_MAX_AGE:
                found.append(snapshot)
        return found

    def set_draining(self, name: str, draining: bool, until: float | None = None) -> None:
        """Drain (or undrain) a backend; after ``until`` (wall clock) its sessions end.
        Published for the other workers (``apply_control``)."""
        cluster = self.runtime.cluster
        cluster.set_draining(name, draining, until)
        if self.directory is not None:
            state = {b.name: b.drain_until for b in cluster.backends if b.draining}
            write_json(self.directory / "control.json", {"draining": state})

    def apply_control(self) -> None:
        """Take over drain decisions made by the worker serving the admin API."""
        if self.directory is None:
            return
        control = self.directory / "control.json"
        try:
            mtime = control.stat().st_mtime
            if mtime == self._control_seen:
                return
            draining: dict[str, float | None] = json.loads(control.read_text())["draining"]
        except (OSError, ValueError, KeyError):
            return
        self._control_seen = mtime
        cluster = self.runtime.cluster
        for backend in cluster.backends:
            wanted = (backend.name in draining, draining.get(backend.name))
            if (backend.draining, backend.drain_until) != wanted:
                cluster.set_draining(backend.name, *wanted)


def create_admin_app(
    runtime: Runtime,
    state: WorkerState,
    started: float,
    reload: Callable[[], Awaitable[ReloadResult]] | None = None,
) -> web.Application:
    admin = runtime.config.admin
    patterns = admin.allowed_hosts or default_allowed_hosts(admin.listen_host)
    app = web.Application(middlewares=[same_site_only(HostPolicy(patterns))])
    app.add_routes(AdminApi(runtime, state, started, reload).routes())
    return app


# A state-changing request's body must be JSON, a type a browser cannot send cross-site
# without a CORS preflight (which the admin API never answers); without a body, any type
# but those a page may send without a preflight (tools send none, or octet-stream).
_JSON_TYPES = ("application/json",)
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def same_site_only(hosts: HostPolicy) -> Any:
    """The admin API's defence against web pages (DNS rebinding, cross-site requests).

    Every request: its ``Host`` must be one the admin listener serves (loopback names on a
    loopback listener, like the proxy's own listener), else 421: a page whose domain was
    re-pointed at 127.0.0.1 sends its own name. Every state-changing request (not GET or
    HEAD): an ``Origin``, when sent, must be the admin API's own (``http://`` + its Host),
    and a body must be JSON (an empty one not typed as a form or text), else 403. A browser sends
    ``Origin`` on every cross-site POST, and without a preflight it can only send the
    "simple" types (text/plain, form encodings), so neither check can be met from a page.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        raw = request.headers.getall("Host", [])
        host = raw[0].encode("utf-8", "surrogateescape") if len(raw) == 1 else None
        if not hosts.allows(host):
            return _refusal(421, "misdirected_request", "this host name is not served here")
        if request.method in ("GET", "HEAD"):
            return await handler(request)
        origin = request.headers.getall("Origin", [])
        if origin and (len(origin) > 1 or origin[0].lower() != f"http://{raw[0]}".lower()):
            return _refusal(403, "forbidden", "cross-site requests are refused")
        kind = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        has_body = (request.content_length or 0) > 0 or "Transfer-Encoding" in request.headers
        if kind in _SIMPLE_TYPES or (has_body and kind not in _JSON_TYPES):
            return _refusal(403, "forbidden", "send the body as application/json")
        return await handler(request)

    return middleware


def _refusal(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


class AdminApi:
    """The admin API's handlers, one per route (``routes``)."""

    def __init__(
        self,
        runtime: Runtime,
        state: WorkerState,
        started: float,
        reload: Callable[[], Awaitable[ReloadResult]] | None,
    ) -> None:
        """``started``: monotonic time of the start; ``reload``: None when the proxy
        cannot reload (no config file)."""
        self.runtime = runtime
        self.state = state
        self.started = started
        self.reload = reload
        self.token = runtime.config.admin.token  # admin settings need a restart to change
        self.protect_metrics = runtime.config.admin.protect_metrics
        self._digests: dict[int, str | None] = {}  # config generation -> keyed digest of its file

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/status", self.status),
            web.post("/backends/{name}/drain", self.drain),
            web.post("/backends/{name}/undrain", self.undrain),
            web.post("/reload", self.reload_config),
        ]

    def _denied(self, request: web.Request) -> web.Response | None:
        """The 401 answer when the request lacks the admin token; None when allowed."""
        if self.token is None:
            return None  # only reachable on loopback: the loader refuses anything else
        if not _token_matches(request.headers.get("Authorization", ""), self.token):
            return web.json_response(
                {"error": "unauthorized", "message": "send Authorization: Bearer <admin.token>"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    async def metrics(self, request: web.Request) -> web.Response:
        denied = self._denied(request) if self.protect_metrics else None
        if denied is not None:
            return denied
        body = render(self.state.snapshots())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        available = sum(1 for b in runtime.cluster.backends if b.available)
        # After SIGTERM, "stopping": a load balancer in front must stop sending here.
        status = "stopping" if runtime.stopping else "ready" if available else "unavailable"
        body = {"status": status, "available_backends": available}
        return web.json_response(body, status=200 if status == "ready" else 503)

    async def status(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        snapshots = self.state.snapshots()
        config = self.runtime.config
        generation = self.runtime.generation
        return web.json_response(
            {
                "version": __version__,
                "uptime_seconds": round(time.monotonic() - self.started, 3),
                "workers": config.workers,
                "config": {
                    **self._config_file(),
                    "generation": generation,
                    "worker_generations": {
                        str(s["worker"]): s.get("generation", 0) for s in snapshots
                    },
                },
                "strategy": config.strategy,
                "backends": self._backend_rows(snapshots),
            }
        )

    def _config_file(self) -> dict[str, Any]:
        """Where the config came from and its keyed digest; nothing without a token."""
        if self.token is None:
            return {}
        generation, source = self.runtime.generation, self.runtime.config.source
        if generation not in self._digests:
            self._digests[generation] = _config_digest(source, self.token)
        return {"path": source, "hmac_sha256": self._digests[generation]}

    def _backend_rows(self, snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per backend: this worker's view of its state, every worker's counts."""
        # Without a token nobody is known: leave out where backends are.
        private = self.token is not None
        health = self.runtime.cluster.health.status()
        stats = [s["stats"]["backends"] for s in snapshots]
        table = []
        for backend in self.runtime.cluster.backends:
            # Right after a reload, other workers may not know a new backend yet.
            views = [
                s["backends"][backend.name] for s in snapshots if backend.name in s["backends"]
            ]
            counted = [s[backend.name]["requests"] for s in stats if backend.name in s]
            requests = sum(n for rows in counted for _, _, n in rows)
            errors = sum(n for rows in counted for _, code, n in rows if code == "5xx")
            row: dict[str, Any] = {"name": backend.name}
            if private:
                row["url"] = backend.config.url
            row.update(
                {
                    "state": _state(backend.draining, health.get(backend.name)),
                    "available": backend.available,
                    "draining": backend.draining,
                    "weight": backend.config.weight,
                    # Lower than weight while slow start ramps a readmitted backend up.
                    "ramped_weight": round(backend.weight / WEIGHT_SCALE, 2),
                    "in_flight": sum(v["in_flight"] for v in views),
                    "streams": sum(v["streams"] for v in views),
                    "sessions": sum(v["sessions"] for v in views),
                    "requests_total": requests,
                    "errors_total": errors,
                }
            )
            table.append(row)
        return table

    async def reload_config(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        if self.reload is None:
            return web.json_response(
                {"error": "not_supported", "message": "this proxy cannot reload"}, status=501
            )
        result = await self.reload()
        if not result.ok:
            return web.json_response(
                {
                    "error": "invalid_config",
                    "message": "the new config was refused; the running one stays",
                    "issues": result.messages,
                },
                status=400,
            )
        body = {"reloaded": not result.pending, "changes": result.messages}
        if result.generation is not None:
            body["generation"] = result.generation
        return web.json_response(body, status=202 if result.pending else 200)

    async def drain(self, request: web.Request) -> web.Response:
        return self._set_draining(request, True)

    async def undrain(self, request: web.Request) -> web.Response:
        return self._set_draining(request, False)

    def _set_draining(self, request: web.Request, draining: bool) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        backends = self.runtime.cluster.backends
        backend = backends.get(name)
        if backend is None or backend not in backends.backends:  # unknown or removed
            return web.json_response(
                {"error": "not_found", "message": f"no backend named {name!r}"}, status=404
            )
        until = None
        if draining and "deadline" in request.query:
            try:
                until = time.time() + parse_duration(request.query["deadline"])
            except ValueError as exc:
                return web.json_response({"error": "bad_request", "message": str(exc)}, status=400)
        self.state.set_draining(name, draining, until)
        return web.json_response({"name": name, "draining": draining, "deadline": until})


def _state(draining: bool, health: dict[str, Any] | None) -> str:
    if draining:
        return "draining"
    if health is None:
        return "unknown"  # being added by a reload right now
    if health["ejected"]:
        return "ejected"
    label: str = health["state"]
    return "healthy" if label == "unchecked" else label


def _token_matches(sent: str, token: str) -> bool:
    """Whether an Authorization value is ``Bearer <token>``, in constant time."""
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare the raw bytes
    # (a bad header is a wrong token, not a server error).
    raw = sent.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(raw, f"Bearer {token}".encode())


def _config_digest(source: str | None, token: str) -> str | None:
    """HMAC-SHA256 of the config file keyed with the admin token, to compare the files of
    several instances (``openssl dgst -sha256 -hmac "$TOKEN" FILE``). Not a plain hash: the
    file holds the token and the session keys, and a plain hash would let anyone who sees
    it test guesses of them offline."""
    if source is None:
        return None
    try:
        data = Path(source).read_bytes()
    except OSError:
        return None
    return hmac.new(token.encode(), data, hashlib.sha256).hexdigest()
