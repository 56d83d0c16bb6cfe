"""A config as the running proxy will use it: loaded, checked against the machine (the files
it names exist, its strategy and TLS certificates load) and ``workers: auto`` counted.

Loading (proxy/config/loader.py) is pure; everything that looks at the machine is here, and
`mcplb check`, `mcplb run` and every reload go through :func:`validated`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from mcplb.proxy.config.checks import MAX_WORKERS, Workers
from mcplb.proxy.config.errors import ConfigIssue
from mcplb.proxy.config.loader import load_config
from mcplb.proxy.config.schema import Config
from mcplb.proxy.config.tls import TlsError, backend_context, server_context
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


def file_issues(config: Config, found: Sequence[ConfigIssue] = ()) -> list[ConfigIssue]:
    """Whether the files the config names exist: the TLS certificate and key, backend and
    Redis CAs."""
    named: list[tuple[str, str]] = []  # (path in the file, file)
    if config.listen_tls is not None:
        named += [
            ("listen_tls.cert", config.listen_tls.cert),
            ("listen_tls.key", config.listen_tls.key),
        ]
    for index, backend in enumerate(config.backends):
        if backend.ca is not None:
            named.append((_ca_path(config, index), backend.ca))
    redis = [("sticky.redis", config.sticky.redis)]
    if config.rate_limit is not None:
        redis.append(("rate_limit.redis", config.rate_limit.redis))
    named += [(f"{path}.ca", section.ca) for path, section in redis if section.ca is not None]
    return [
        ConfigIssue(where, f"no such file: {file}", config.lines.get(where))
        for where, file in named
        if file and not os.path.isfile(file)  # "": invalid, reported by the loader
    ]


def runtime_issues(config: Config, found: Sequence[ConfigIssue] = ()) -> list[ConfigIssue]:
    """Whether the strategy plugin and the TLS certificates load. ``found``: the issues so
    far; an invalid setting holds its default in ``config``, so its checks are skipped."""
    issues = []
    paths = {issue.path for issue in found}
    if not any(path == "strategy" or path.startswith("strategy_options") for path in paths):
        try:
            registry.build(config.strategy, config.strategy_options)
        except registry.StrategyLoadError as exc:
            issues.append(ConfigIssue("strategy", str(exc), config.lines.get("strategy")))
    tls_paths = {"listen_tls", "listen_tls.cert", "listen_tls.key"}
    if config.listen_tls is not None and not paths & tls_paths:
        try:
            server_context(config.listen_tls)
        except TlsError as exc:
            issues.append(ConfigIssue("listen_tls", str(exc), config.lines.get("listen_tls")))
    for index, backend in enumerate(config.backends):
        where = _ca_path(config, index)
        if where in paths:
            continue  # its CA file is missing: said already
        try:
            backend_context(backend)
        except TlsError as exc:
            issues.append(ConfigIssue(where, str(exc), config.lines.get(where)))
    return issues


def _ca_path(config: Config, index: int) -> str:
    """The path of the ``ca`` of ``config.backends[index]`` in the file: later in the list
    when invalid backends before it were left out of ``config.backends``."""
    for position in range(index, index + len(config.lines)):
        if f"backends[{position}].ca" in config.lines:
            return f"backends[{position}].ca"
        if f"backends[{position}]" not in config.lines:
            break
    return f"backends[{index}].ca"
