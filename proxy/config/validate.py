"""A config as the running proxy will use it: loaded, and its strategy and TLS files checked."""

from __future__ import annotations

from collections.abc import Sequence

from mcplb.proxy.config.schema import Config, ConfigIssue, load_config
from mcplb.proxy.config.tls import TlsError, backend_context, server_context
from mcplb.strategies import registry


def validated(path: str) -> Config:
    """Load a config and check what needs code or files to run; a ConfigError lists every
    problem, those of the file and these together."""
    return load_config(path, checks=runtime_issues)


def runtime_issues(config: Config, found: Sequence[ConfigIssue] = ()) -> list[ConfigIssue]:
    """Whether the strategy plugin and the TLS certificates load. ``found``: the file's own
    issues; an invalid setting holds its default in ``config``, so its checks are skipped."""
    issues = []
    if not any(i.path == "strategy" or i.path.startswith("strategy_options") for i in found):
        try:
            registry.build(config.strategy, config.strategy_options)
        except registry.StrategyLoadError as exc:
            issues.append(ConfigIssue("strategy", str(exc), config.lines.get("strategy")))
    if config.listen_tls is not None:
        try:
            server_context(config.listen_tls)
        except TlsError as exc:
            issues.append(ConfigIssue("listen_tls", str(exc), config.lines.get("listen_tls")))
    for index, backend in enumerate(config.backends):
        try:
            backend_context(backend)
        except TlsError as exc:
            where = _ca_path(config, index)
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
