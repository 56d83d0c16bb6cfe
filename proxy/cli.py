"""The ``mcplb`` command: run, check, schema, demo, top."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mcplb import __version__
from mcplb.proxy.config.errors import ConfigError, ConfigIssue
from mcplb.proxy.config.schema import Config
from mcplb.proxy.config.validate import validated, worker_count


def build() -> str:
    """Which build is running: modules of the request path compiled with mypyc (setup.py's
    COMPILED, as extension modules next to their sources), or the pure-Python modules,
    which are the reference and the fallback."""
    from importlib.machinery import EXTENSION_SUFFIXES
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent  # holds proxy/, strategies/, healthcheck/
    compiled = sorted(
        {
            ".".join((*path.relative_to(root).parts[:-1], path.name.split(".")[0]))
            for folder in ("proxy", "strategies", "healthcheck")
            for suffix in EXTENSION_SUFFIXES
            for path in (root / folder).rglob(f"*{suffix}")
        }
    )
    return "compiled: " + ", ".join(compiled) if compiled else "pure Python"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mcplb",
        description="Load-balancing reverse proxy for MCP servers.",
        # Keeps the --version line whole (the compiled build lists its modules).
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mcplb {__version__} ({build()})")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="application log level (default: log.level of the config, info)",
    )

    check = commands.add_parser("check", help="validate a config file")
    check.add_argument("--config", "-c", required=True, help="YAML config file")

    demo = commands.add_parser("demo", help="run demo MCP backends behind the proxy")
    demo.add_argument("--backends", type=int, default=3, help="number of demo backends (1-26)")
    demo.add_argument("--port", type=int, default=8080, help="proxy port")

    commands.add_parser(
        "schema", help="print the config's JSON Schema (as mcplb.schema.json, for editors and CI)"
    )

    top = commands.add_parser("top", help="live view of a running proxy (from its admin API)")
    top.add_argument("--admin", default="http://127.0.0.1:9901", help="admin API URL")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")

    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.log_level)
    if args.command == "schema":
        from mcplb.proxy.config.json_schema import schema_text

        sys.stdout.write(schema_text())
        return 0
    if args.command == "top":
        from mcplb.proxy.admin.top import run_top

        return run_top(args.admin, once=args.once, interval=args.interval)
    return _demo(args.backends, args.port)


def _load_or_report(path: str) -> Config | None:
    """The validated config, or None; every issue and warning printed to stderr, by line."""
    try:
        config = validated(path)
    except ConfigError as exc:
        _report(path, exc.issues, exc.warnings)
        return None
    _report(path, [], config.warnings)
    return config


def _report(path: str, issues: Sequence[ConfigIssue], warnings: Sequence[ConfigIssue]) -> None:
    marked = [(issue, "") for issue in issues] + [(w, "warning: ") for w in warnings]
    for issue, mark in sorted(marked, key=lambda item: item[0].line or 0):
        print(f"{path}: {mark}{issue}", file=sys.stderr)


def _check(path: str) -> int:
    config = _load_or_report(path)
    if config is None:
        return 1
    # Discovered backends come at run time: say where from, not just "0 backends".
    dns = None if config.discovery is None else config.discovery.dns
    found = "" if dns is None else f" + DNS {dns.record} {dns.name}"
    print(
        f"{path}: ok ({len(config.backends)} backends{found}, strategy {config.strategy}, "
        f"listen {config.listen_host}:{config.listen_port}, workers {config.workers})"
    )
    # What `run` will get: it raises the soft limit to the hard one at start.
    import resource

    from mcplb.proxy.server.open_files import OpenFiles, hard_limit

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits = OpenFiles(soft, max(soft, hard_limit()))
    print(f"{path}: {limits.describe(worker_count(config.workers))}")
    return 0


def _run(path: str, log_level: str | None) -> int:
    import logging

    from mcplb.proxy.server.open_files import raise_open_files
    from mcplb.proxy.server.supervisor import serve
    from mcplb.proxy.server.worker import setup_logging

    config = _load_or_report(path)
    if config is None:
        return 1
    setup_logging(log_level or config.log.level)
    log = logging.getLogger("mcplb")
    log.info("mcplb %s (%s)", __version__, build())
    log.info("%s", raise_open_files().describe(worker_count(config.workers)))
    return serve(config)


def _demo(backends: int, port: int) -> int:
    if not 1 <= backends <= 26:
        print("mcplb demo: --backends must be between 1 and 26", file=sys.stderr)
        return 2
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        # The MCP SDK is the demo's only user; `mcplb run` does not need it.
        print(
            "mcplb demo needs the MCP SDK, which is not installed here.\n"
            "Install it with: pip install 'mcplb[demo]'   (from a checkout: pip install '.[demo]')",
            file=sys.stderr,
        )
        return 2
    from mcplb.proxy.demo.run import run_demo
    from mcplb.proxy.server.worker import setup_logging

    setup_logging("info")
    return run_demo(backends=backends, port=port)


if __name__ == "__main__":
    sys.exit(main())
