"""Prometheus tooling for tests: the binaries, a real server, and PromQL/dashboard helpers.

``find_binary("promtool")`` locates ``promtool``/``prometheus`` (PATH, else ``/usr/bin``) or
raises :class:`PrometheusMissing` with a message saying ``make test`` installs them (Debian
package ``prometheus``).

``server = await start_prometheus(targets=["127.0.0.1:9901"])`` runs a real Prometheus on a
free loopback port with a fresh temporary TSDB, scraping job ``mcplb`` every second (and
optionally loading rule files), and returns once ``/-/ready`` answers; ``await
server.query(promql)`` runs an instant query; ``await server.stop()`` kills it and removes
its directory. Servers still running when the interpreter exits are killed then.

The rest parses ``docs/observability.md`` (the metric names and labels of the contract) and
the PromQL in ``deploy/`` (alert rules, Grafana dashboard), so tests can check that those
only use names the contract defines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.tiers import require

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT = REPO_ROOT / "docs" / "observability.md"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = REPO_ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "mcplb.json"

SERVICE = "prometheus"  # and promtool: tests that reach this module need them
LOOPBACK = "127.0.0.1"
JOB = "mcplb"
START_TIMEOUT = 30.0  # seconds for a started Prometheus to report ready
QUERY_TIMEOUT = 5.0  # seconds for one HTTP API call

_servers: set[PrometheusServer] = set()  # not yet stopped: killed at exit


class PrometheusMissing(RuntimeError):
    """No prometheus/promtool binary on this machine."""


def find_binary(name: str) -> str:
    """``name`` (``prometheus`` or ``promtool``) on PATH, else in /usr/bin, else
    :class:`PrometheusMissing`."""
    require(name)
    found = shutil.which(name)
    if found is not None:
        return found
    fallback = f"/usr/bin/{name}"
    if os.access(fallback, os.X_OK):
        return fallback
    raise PrometheusMissing(
        f"{name} is not installed (not on PATH, not at {fallback}); the monitoring tests "
        "need the real one. `make test` installs it (apt-get install prometheus, which "
        "provides /usr/bin/prometheus and /usr/bin/promtool); or install it yourself."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --- a real Prometheus --------------------------------------------------------------------


class PrometheusServer:
    """One Prometheus process on 127.0.0.1:``port`` with its own temporary directory."""

    host = LOOPBACK

    def __init__(
        self,
        binary: str,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mcplb-prometheus-"))
        self.config_path = self.dir / "prometheus.yml"
        self.log_path = self.dir / "prometheus.log"
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": scrape_interval,
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": list(targets)}]},
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen[bytes] | None = None
        _servers.add(self)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """The last lines Prometheus wrote (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def start(self) -> None:
        """Start the process and wait (bounded) until ``/-/ready`` answers 200."""
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # a test's Ctrl-C is not Prometheus'
            )
        deadline = time.monotonic() + START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"prometheus exited with status {self.process.returncode}:\n{self.log()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    timeout = aiohttp.ClientTimeout(total=1.0)
                    async with http.get(f"{self.url}/-/ready", timeout=timeout) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    self._kill_now()
                    raise RuntimeError(
                        f"prometheus on port {self.port} not ready within {START_TIMEOUT} s:\n"
                        f"{self.log()}"
                    )
                await asyncio.sleep(0.1)

    async def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/PATH``; the ``data`` of a successful answer, else RuntimeError."""
        timeout = aiohttp.ClientTimeout(total=QUERY_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            body = await response.json(content_type=None)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus /api/v1/{path} {params}: {body}")
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result list (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = await self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def stop(self) -> None:
        """Kill the server and remove its directory."""
        self._stop_now()

    def _kill_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def _stop_now(self) -> None:
        self._kill_now()
        shutil.rmtree(self.dir, ignore_errors=True)
        _servers.discard(self)


async def start_prometheus(
    targets: Sequence[str], *, rule_files: Sequence[Path] = (), scrape_interval: str = "1s"
) -> PrometheusServer:
    """A started Prometheus scraping ``targets`` as job ``mcplb`` (PrometheusMissing if the
    binary is missing). Retries once if the free port it picked was taken meanwhile."""
    binary = find_binary("prometheus")
    for attempt in (1, 2):
        server = PrometheusServer(
            binary, targets, rule_files=rule_files, scrape_interval=scrape_interval
        )
        try:
            await server.start()
        except BaseException:
            await server.stop()
            if attempt == 2:
                raise
        else:
            return server
    raise AssertionError("unreachable")


@atexit.register
def _stop_all() -> None:
    for server in list(_servers):
        server._stop_now()


# --- the contract: docs/observability.md ---------------------------------------------------

# Series Prometheus makes itself for every target, usable next to the contract's metrics.
SYNTHETIC_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Labels every scraped series gets from Prometheus, whatever the contract says.
TARGET_LABELS = frozenset({"job", "instance"})


@dataclass(frozen=True)
class Contract:
    """The metric names and labels documented in docs/observability.md."""

    metrics: dict[str, frozenset[str]]  # exposed series name -> its labels (incl. job/instance)
    prefixes: tuple[str, ...]  # documented as ``prefix_*`` (any name, any labels)

    def known(self, name: str) -> bool:
        return (
            name in self.metrics
            or name in SYNTHETIC_METRICS
            or any(name.startswith(p) for p in self.prefixes)
        )

    def labels_of(self, name: str) -> frozenset[str] | None:
        """The labels ``name`` may carry; None when any may (``process_*``, synthetic)."""
        return self.metrics.get(name)

    @property
    def all_labels(self) -> frozenset[str]:
        return frozenset().union(*self.metrics.values()) | TARGET_LABELS


def load_contract(path: Path = CONTRACT) -> Contract:
    """Parse the metrics table (``| name | type | labels |``) of the contract."""
    metrics: dict[str, frozenset[str]] = {}
    prefixes: list[str] = []
    in_table = False
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:3] == ["name", "type", "labels"]:
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            if metrics:
                break  # the table is over
            continue
        if set(cells[0]) <= set("-: "):
            continue  # the |---|---| line
        names = re.findall(r"`([^`]+)`", cells[0])
        kind = cells[1] if len(cells) > 1 else ""
        # Labels: the backquoted names outside parentheses (which hold values and notes).
        label_cell = re.sub(r"\([^)]*\)", "", cells[2] if len(cells) > 2 else "")
        labels = frozenset(re.findall(r"`([A-Za-z_]\w*)`", label_cell)) | TARGET_LABELS
        for name in names:
            if name.endswith("*"):
                prefixes.append(name.rstrip("*"))
            elif kind == "histogram":
                metrics[f"{name}_bucket"] = labels | {"le"}
                metrics[f"{name}_sum"] = labels
                metrics[f"{name}_count"] = labels
            else:
                metrics[name] = labels
    if not metrics:
        raise ValueError(f"no metrics table found in {path}")
    return Contract(metrics, tuple(prefixes))


# --- PromQL ---------------------------------------------------------------------------------

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "atan2", "inf", "nan", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)")
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or labels)."""
    text = _without_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)  # by (...), on (...), ...
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(1)
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword or a function call
        names.add(word)
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, label) for each label matcher in ``metric{label="..."}`` selectors."""
    text = _without_strings(expr)
    for match in _SELECTOR.finditer(text):
        for label in _MATCHER_LABEL.findall(match.group(2)):
            yield match.group(1), label


def grouping_labels(expr: str) -> set[str]:
    """The labels named in by/without/on/ignoring/group_left/group_right clauses."""
    labels: set[str] = set()
    for match in _GROUPING.finditer(_without_strings(expr)):
        labels.update(x.strip() for x in match.group(1).split(",") if x.strip())
    return labels


def unknown_names(expr: str, contract: Contract) -> list[str]:
    """Problems with the metric and label names of ``expr``, as readable strings."""
    problems = [
        f"unknown metric {name!r}" for name in metric_names(expr) if not contract.known(name)
    ]
    for metric, label in selector_labels(expr):
        allowed = contract.labels_of(metric)
        if allowed is not None and label not in allowed:
            problems.append(f"{metric} has no label {label!r} (it has {sorted(allowed)})")
    for label in grouping_labels(expr) - contract.all_labels:
        problems.append(f"no metric has the label {label!r}")
    return sorted(problems)


# --- the alert rules and the dashboard --------------------------------------------------------


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    """Every rule of every group of a Prometheus rules file."""
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found: list[tuple[str, str]] = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(
                    (f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"])
                )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text or "")
        if inner:  # label_values(SELECTOR, label) is Grafana's, not PromQL: check SELECTOR
            found.append((f"variable {variable['name']!r}", inner.group(1)))
    return found


# What Grafana substitutes for its variables, so an expression can run on Prometheus.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "job": JOB,
    "backend": ".*",
}


def substitute_variables(expr: str, values: dict[str, str] = GRAFANA_VARIABLES) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``${name:format}`` replaced by ``values``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for the Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)
