"""A config as the running proxy will use it: loaded, checked against the machine (the files
it names exist, its strategy and TLS certificates load) and ``workers: auto`` counted.

Loading (proxy/config/loader.py) is pure; everything that looks at the machine is here, and
`mcplb check`, `mcplb run` and every reload go through :func:`validated`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Sequence

from mcplb.proxy.config.checks import MAX_WORKERS, Workers
from mcplb.proxy.config.errors import ConfigIssue
from mcplb.proxy.config.loader import file_mtime, load_config
from mcplb.proxy.config.schema import Config
from mcplb.proxy.config.tls import (
    TlsError,
    backend_context,
    check_shared_backend_tls,
    server_context,
)
from mcplb.strategies import registry


def validated(path: str) -> Config:
    """Load a config and check what needs code or files to run; a ConfigError lists every
    problem, those of the file and these together. Its ``workers`` is a number."""
    config = load_config(path, checks=machine_issues)
    return dataclasses.replace(config, workers=worker_count(config.workers))


def worker_count(workers: Workers) -> int:
    """The number of worker processes: "auto" is one per CPU (at most MAX_WORKERS)."""
    return min(os.cpu_count() or 1, MAX_WORKERS) if workers == "auto" else workers


def machine_issues(config: Config, found: Sequence[ConfigIssue] = ()) -> list[ConfigIssue]:
    """The issues of :func:`file_issues` and :func:`runtime_issues`, with the same ``found``."""
    files = file_issues(config, found)
    return files + runtime_issues(config, [*found, *files])


_BACKEND_FILES = ("ca", "client_cert", "client_key")


def file_issues(config: Config, found: Sequence[ConfigIssue] = ()) -> list[ConfigIssue]:
    """Whether the files the config names exist."""
    return [
        ConfigIssue(where, f"no such file: {file}", config.lines.get(where))
        for where, file in named_files(config)
        if file and not os.path.isfile(file)  # "": invalid, reported by the loader
    ]


def watched_state(config: Config) -> tuple[float | None, ...]:
    """When the config file and each file it names last changed. With ``watch_config``, a
    change to any of them reloads: a certificate rotated in place (a Kubernetes Secret
    volume swaps its files) applies without a restart or a signal."""
    return tuple(map(file_mtime, [config.source, *(file for _, file in named_files(config))]))


def named_files(config: Config) -> list[tuple[str, str]]:
    """(path in the config, file) of every file the config names: the listener's
    certificate, key and client CA; the CAs and client certificates and keys for backends."""
    named: list[tuple[str, str]] = []
    if config.listen_tls is not None:
        named += [
            ("listen_tls.cert", config.listen_tls.cert),
            ("listen_tls.key", config.listen_tls.key),
        ]
        if config.listen_tls.client_ca is not None:
            named.append(("listen_tls.client_ca", config.listen_tls.client_ca))
    if config.backend_tls is not None:
        for name in _BACKEND_FILES:
            file = getattr(config.backend_tls, name)
            if file is not None:
                named.append((f"backend_tls.{name}", file))
    for index, backend in enumerate(config.backends):
        for name in _BACKEND_FILES:
            file = getattr(backend, name)
            if file is not None:
                named.append((_backend_path(config, index, name), file))
    redis = [("sticky.redis", config.sticky.redis)]
    if config.rate_limit is not None:
        redis.append(("rate_limit.redis", config.rate_limit.redis))
    named += [(f"{path}.ca", section.ca) for path, section in redis if section.ca is not None]
    return named


# What tracing imports (proxy/observability/otlp_export.py): the ``otel`` extra.
OTEL_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
OTEL_EXTRA = "pip install 'mcplb[otel]'"


def missing_otel() -> str | None:
    """The first module of the ``otel`` extra that cannot be imported, if any."""
    for module in OTEL_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def runtime_issues(config: Config, found: Sequence[ConfigIssue] = ()) -> list[ConfigIssue]:
    """Whether the strategy plugin, the TLS certificates and tracing's packages load.
    ``found``: the issues so far; an invalid setting holds its default in ``config``, so
    its checks are skipped."""
    issues = []
    if config.tracing.enabled:
        missing = missing_otel()
        if missing is not None:
            message = (
                f"tracing needs the OpenTelemetry packages ({missing} is not installed): "
                f"{OTEL_EXTRA}, or set tracing.enabled: false"
            )
            where = "tracing.enabled" if "tracing.enabled" in config.lines else "tracing"
            issues.append(ConfigIssue(where, message, config.lines.get(where)))
    paths = {issue.path for issue in found}
    if not any(path == "strategy" or path.startswith("strategy_options") for path in paths):
        try:
            registry.build(config.strategy, config.strategy_options)
        except registry.StrategyLoadError as exc:
            issues.append(ConfigIssue("strategy", str(exc), config.lines.get("strategy")))
    tls_paths = {"listen_tls", "listen_tls.cert", "listen_tls.key", "listen_tls.client_ca"}
    if config.listen_tls is not None and not paths & tls_paths:
        try:
            server_context(config.listen_tls)
        except TlsError as exc:
            where = "listen_tls.client_ca" if exc.setting == "client_ca" else "listen_tls"
            issues.append(ConfigIssue(where, str(exc), config.lines.get(where)))
    shared = {f"backend_tls.{name}" for name in _BACKEND_FILES} | {"backend_tls"}
    shared_ok = not paths & shared
    if config.backend_tls is not None and shared_ok:
        try:
            check_shared_backend_tls(config.backend_tls)
        except TlsError as exc:
            issues.append(_issue(config, f"backend_tls.{exc.setting}", str(exc)))
            shared_ok = False
    for index, backend in enumerate(config.backends):
        own = {name: _backend_path(config, index, name) for name in _BACKEND_FILES}
        if paths & set(own.values()) or not shared_ok:
            continue  # a file is missing or invalid: said already
        try:
            backend_context(backend, config.backend_tls)
        except TlsError as exc:
            setting = exc.setting or "ca"
            mine = backend.client_cert if setting.startswith("client_") else backend.ca
            if mine is not None:  # else the file of backend_tls, said above
                issues.append(_issue(config, own[setting], str(exc)))
    return issues


def _issue(config: Config, where: str, message: str) -> ConfigIssue:
    return ConfigIssue(where, message, config.lines.get(where))


def _backend_path(config: Config, index: int, name: str) -> str:
    """The path of key ``name`` of ``config.backends[index]`` in the file: later in the
    list when invalid backends before it were left out of ``config.backends``."""
    for position in range(index, index + len(config.lines)):
        if f"backends[{position}].{name}" in config.lines:
            return f"backends[{position}].{name}"
        if f"backends[{position}]" not in config.lines:
            break
    return f"backends[{index}].{name}"
