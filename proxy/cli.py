"""The ``mcplb`` command: run, check, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.config import Config, ConfigError, ConfigIssue, load_config
from strategies import registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mcplb", description="Load-balancing reverse proxy for MCP servers."
    )
    parser.add_argument("--version", action="version", version=f"mcplb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = commands.add_parser("check", help="validate a config file")
    check.add_argument("--config", "-c", required=True, help="YAML config file")

    demo = commands.add_parser("demo", help="run demo MCP backends behind the proxy")
    demo.add_argument("--backends", type=int, default=3, help="number of demo backends (1-26)")
    demo.add_argument("--port", type=int, default=8080, help="proxy port")

    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.log_level)
    return _demo(args.backends, args.port)


def validated(path: str) -> Config:
    """Load a config, then check what needs code to run: the strategy plugin."""
    config = load_config(path)
    try:
        registry.build(config.strategy, config.strategy_options)
    except registry.StrategyLoadError as exc:
        issue = ConfigIssue("strategy", str(exc), config.lines.get("strategy"))
        raise ConfigError([issue], config.source) from None
    return config


def _load_or_report(path: str) -> Config | None:
    """The validated config, or None after printing every issue to stderr."""
    try:
        return validated(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{path}: {issue}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    config = _load_or_report(path)
    if config is None:
        return 1
    print(
        f"{path}: ok ({len(config.backends)} backends, strategy {config.strategy}, "
        f"listen {config.listen_host}:{config.listen_port}, workers {config.workers})"
    )
    return 0


def _run(path: str, log_level: str) -> int:
    from proxy.server import serve, setup_logging

    setup_logging(log_level)
    config = _load_or_report(path)
    return 1 if config is None else serve(config)


def _demo(backends: int, port: int) -> int:
    if not 1 <= backends <= 26:
        print("mcplb demo: --backends must be between 1 and 26", file=sys.stderr)
        return 2
    from proxy.demo import run_demo
    from proxy.server import setup_logging

    setup_logging("info")
    return run_demo(backends=backends, port=port)


if __name__ == "__main__":
    sys.exit(main())
