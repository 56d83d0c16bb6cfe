"""Loading a config: YAML text -> a checked Config, or a ConfigError listing every problem.

Loading is pure: nothing but the text (and the environment's ${VAR} values) decides the
result. What depends on the machine (files named in it exist, how many CPUs "workers: auto"
means, the strategy's code loads) is proxy/config/validate.py, which `check` and `run` call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from mcplb.proxy.config.errors import ConfigError, ConfigIssue, ConfigWarning
from mcplb.proxy.config.fields import Context, read_section
from mcplb.proxy.config.rules import LIST_RULES, RULES
from mcplb.proxy.config.schema import Config
from mcplb.proxy.config.yaml_tree import read_tree

# Checks that need more than the text (files, the strategy's code, TLS): they see the built
# config, also when it has other errors (passed along), so that one run lists every problem.
ExtraChecks = Callable[[Config, Sequence[ConfigIssue]], Iterable[ConfigIssue]]


def _parse(
    text: str,
    source: str | None,
    environ: Mapping[str, str],
    issues: list[ConfigIssue],
    lines: dict[str, int],
) -> Config | None:
    """The Config of ``text``; only meaningful if no issues were added."""
    root = read_tree(text, environ, issues, lines)
    if root is None:
        return None
    context = Context(issues, lines, RULES, LIST_RULES)
    read = read_section(Config, root, "", context, values=context.top)
    return Config(**{**read.values, "source": source, "lines": lines})


def parse_config(
    text: str,
    source: str | None = None,
    environ: Mapping[str, str] | None = None,
    checks: ExtraChecks | None = None,
) -> Config:
    """Parse and validate YAML config text; raise ConfigError listing every problem found.

    ``source`` is the file name kept in ``Config.source``; ``environ`` (default ``os.environ``)
    supplies ``${VAR}`` expansions; ``checks`` adds the issues of checks beyond the file.
    """
    found: list[ConfigIssue] = []
    lines: dict[str, int] = {}
    try:
        config = _parse(text, source, os.environ if environ is None else environ, found, lines)
    except RecursionError:
        found.append(ConfigIssue("", "the document is nested too deeply"))
        config = None
    if config is not None and checks is not None:
        found.extend(checks(config, list(found)))
    found.sort(key=lambda issue: issue.line or 0)
    warnings = [issue for issue in found if isinstance(issue, ConfigWarning)]
    issues = [issue for issue in found if not isinstance(issue, ConfigWarning)]
    if issues or config is None:
        raise ConfigError(issues, source, warnings)
    return dataclasses.replace(config, warnings=tuple(warnings)) if warnings else config


def file_mtime(path: str | None) -> float | None:
    """When the config file last changed (None if there is none), to notice edits."""
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    checks: ExtraChecks | None = None,
) -> Config:
    """Read and parse a config file; an unreadable file is reported as a ConfigError too."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue("", f"cannot read {source}: {reason}")], source) from exc
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError([ConfigIssue("", f"cannot read {source}: {reason}")], source) from exc
    return parse_config(text, source, environ, checks)
