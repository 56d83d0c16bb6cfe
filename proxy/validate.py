"""A config as the running proxy will use it: loaded, and its strategy and TLS files checked."""

from __future__ import annotations

from mcplb.proxy.config import Config, ConfigError, ConfigIssue, load_config
from mcplb.proxy.tls import TlsError, backend_context, server_context
from mcplb.strategies import registry


def validated(path: str) -> Config:
    """Load a config, then check what needs code or files to run: the strategy plugin and
    the TLS certificates; every problem is a ConfigError issue."""
    config = load_config(path)
    issues = []
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
            where = f"backends[{index}].ca"
            issues.append(ConfigIssue(where, str(exc), config.lines.get(where)))
    if issues:
        raise ConfigError(issues, config.source)
    return config
