"""``mcplb top``: a live terminal view of a running mcplb, read from its admin listener.

Every ``interval`` seconds it fetches ``GET /status`` (JSON) and ``GET /metrics``
(Prometheus text format, see docs/observability.md) and draws one table row per backend.
Rates (req/s, errors/s) and the p99 first-byte latency come from the difference between
two consecutive scrapes, so the first frame of the interactive view shows ``-`` for them.

The module is split in two:

* pure, sans-IO functions: :func:`parse_metrics`, :func:`histogram_quantile`,
  :func:`render` (and the helpers they use), which turn data into text and are unit
  tested on their own;
* the I/O shell: :func:`fetch` (two HTTP GETs with ``urllib``) and :func:`run_top`, the
  loop behind the CLI subcommand (plain ANSI escapes, no curses).

When ``admin.token`` is set, ``/status`` (and ``/metrics`` with ``admin.protect_metrics``)
need it: ``mcplb top`` sends ``Authorization: Bearer $MCPLB_ADMIN_TOKEN`` when that
environment variable is set (not a command-line flag: others on the host see those).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from mcplb.proxy.cluster.backends import WEIGHT_SCALE  # mcplb_backend_weight's scale

__all__ = [
    "AdminError",
    "Metrics",
    "Snapshot",
    "fetch",
    "format_duration",
    "format_latency",
    "histogram_quantile",
    "parse_metrics",
    "render",
    "run_top",
]

REQUESTS = "mcplb_requests_total"
FIRST_BYTE = "mcplb_response_first_byte_seconds"
PROXY_ERRORS = "mcplb_proxy_errors_total"
LOOP_LAG = "mcplb_event_loop_lag_seconds"
WORKERS = "mcplb_workers"
GAUGES = {
    "in_flight": "mcplb_in_flight_requests",
    "streams": "mcplb_open_streams",
    "sessions": "mcplb_sessions_active",
    "ramped_weight": "mcplb_backend_weight",  # configured x WEIGHT_SCALE, ramped
}
TOKEN_ENV = "MCPLB_ADMIN_TOKEN"
QUANTILE = 0.99
ERROR_PREFIX = "ERROR: "
SHORT_SHA = 12
FETCH_TIMEOUT = 5.0

# ANSI: home, clear to end of line, clear to end of screen, clear screen, cursor off/on.
HOME = "\x1b[H"
CLEAR_EOL = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
CLEAR_SCREEN = "\x1b[2J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"

Labels = Mapping[str, str]


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """One scrape of ``/metrics``: every sample, grouped by sample name.

    Sample names are the exposed ones (``mcplb_requests_total``,
    ``mcplb_response_first_byte_seconds_bucket``...), not the family names the parser
    strips suffixes from.
    """

    samples: Mapping[str, Sequence[tuple[Labels, float]]] = field(default_factory=dict)

    def sum_by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Sum the samples of ``name`` per value of ``label`` (samples without it skipped).

        ``match`` keeps only samples whose labels have those values.
        """
        sums: dict[str, float] = {}
        for labels, value in self.samples.get(name, ()):
            key = labels.get(label)
            if key is None or any(labels.get(k) != v for k, v in match.items()):
                continue
            sums[key] = sums.get(key, 0.0) + value
        return sums

    def total(self, name: str) -> float:
        """The sum of every sample of ``name`` (0 when absent)."""
        return sum(value for _, value in self.samples.get(name, ()))

    def value(self, name: str) -> float | None:
        """The single value of an unlabelled gauge (the max if there are several)."""
        values = [value for _, value in self.samples.get(name, ())]
        return max(values) if values else None

    def buckets(self, histogram: str, label: str) -> dict[str, dict[float, float]]:
        """Cumulative bucket counts of ``histogram`` per ``label`` value: {key: {le: n}}."""
        out: dict[str, dict[float, float]] = {}
        for labels, value in self.samples.get(f"{histogram}_bucket", ()):
            key, le = labels.get(label), labels.get("le")
            if key is None or le is None:
                continue
            try:
                bound = float(le)
            except ValueError:
                continue
            per = out.setdefault(key, {})
            per[bound] = per.get(bound, 0.0) + value
        return out


def parse_metrics(text: str) -> Metrics:
    """Parse the Prometheus text exposition format (raises ``ValueError`` on bad input)."""
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Metrics(samples)


# --- arithmetic ----------------------------------------------------------------------


def counter_delta(now: float, before: float | None) -> float:
    """Increase of a counter between two scrapes; a reset (restart) counts from zero."""
    if before is None or now < before:
        return now
    return now - before


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` ({upper bound: count}), Prometheus style.

    Linear interpolation inside the bucket that holds the rank, from the previous bound
    (0 for the first bucket); a rank in the ``+Inf`` bucket answers the highest finite
    bound. ``None`` when there is no observation (or no ``+Inf`` bucket to count them).
    """
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    counts: list[float] = []
    for bound in bounds:  # cumulative counts are monotonic; deltas of resets may not be
        counts.append(max(buckets[bound], counts[-1] if counts else 0.0))
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    upper = bounds[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = bounds[index - 1], counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def bucket_deltas(
    now: Mapping[float, float], before: Mapping[float, float] | None
) -> dict[float, float]:
    """Per-bound increase of cumulative buckets between two scrapes."""
    if before is None or any(now.get(le, 0.0) < n for le, n in before.items()):
        return dict(now)  # first scrape, or the counters were reset: count from zero
    return {le: n - before.get(le, 0.0) for le, n in now.items()}


# --- formatting ----------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``45s``, ``12m03s``, ``3h04m05s``, ``2d03h04m``."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def format_latency(seconds: float | None) -> str:
    """``-`` (no data), ``850us``, ``12.3ms``, ``2.50s``."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def format_rate(rate: float | None) -> str:
    """``-`` (no previous scrape) or a rate with two decimals."""
    return "-" if rate is None else f"{rate:.2f}"


def _int_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int) -> list[str]:
    """Columns padded to their widest cell: the first ``left`` left-aligned, the rest right."""
    body = [list(row) for row in rows]
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(header), *(line(r) for r in body)]


# --- rendering -----------------------------------------------------------------------


COLUMNS = (
    "BACKEND",
    "STATE",
    "AVAIL",
    "WEIGHT",
    "RAMPED",
    "REQ/S",
    "ERR/S",
    "INFLIGHT",
    "STREAMS",
    "SESSIONS",
    "P99 TTFB",
)


def _availability(backend: Mapping[str, Any]) -> str:
    if backend.get("draining"):
        return "draining"
    available = backend.get("available")
    return "-" if available is None else ("yes" if available else "no")


@dataclass(frozen=True)
class _Window:
    """What the counters did between two scrapes ``elapsed`` seconds apart."""

    elapsed: float
    requests: Mapping[str, float]  # per backend, all methods and codes
    errors: Mapping[str, float]  # per backend, the 5xx class
    proxy_errors: float  # answers the proxy made itself (no backend)
    p99: Mapping[str, float | None]  # per backend, first byte, of this window's observations

    def rate(self, counts: Mapping[str, float], name: str) -> float:
        """Per second; a backend the latest scrape does not name made no requests."""
        return counts.get(name, 0.0) / self.elapsed


def _increases(now: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Per key increase of counters (keyed as in ``now``) between two scrapes."""
    return {key: counter_delta(value, before.get(key)) for key, value in now.items()}


def _window(now: Metrics, before: Metrics, elapsed: float) -> _Window:
    buckets_before = before.buckets(FIRST_BYTE, "backend")
    proxy = _increases(now.sum_by(PROXY_ERRORS, "code"), before.sum_by(PROXY_ERRORS, "code"))
    return _Window(
        elapsed=elapsed,
        requests=_increases(now.sum_by(REQUESTS, "backend"), before.sum_by(REQUESTS, "backend")),
        errors=_increases(
            now.sum_by(REQUESTS, "backend", code="5xx"),
            before.sum_by(REQUESTS, "backend", code="5xx"),
        ),
        proxy_errors=sum(proxy.values()),
        p99={
            name: histogram_quantile(QUANTILE, bucket_deltas(buckets, buckets_before.get(name)))
            for name, buckets in now.buckets(FIRST_BYTE, "backend").items()
        },
    )


def _live(
    backend: Mapping[str, Any], name: str, key: str, gauges: Mapping[str, Mapping[str, float]]
) -> str:
    value = backend.get(key)  # /status is per request; metrics are the fallback
    if value is None and key == "ramped_weight":
        scaled = gauges[key].get(name)
        value = None if scaled is None else round(scaled / WEIGHT_SCALE, 2)
    return _int_text(value if value is not None else gauges.get(key, {}).get(name))


def _row(
    backend: Mapping[str, Any],
    gauges: Mapping[str, Mapping[str, float]],
    window: _Window | None,
) -> list[str]:
    name = str(backend.get("name", "?"))
    return [
        name,
        str(backend.get("state", "?")),
        _availability(backend),
        _live(backend, name, "weight", gauges),
        _live(backend, name, "ramped_weight", gauges),
        format_rate(None if window is None else window.rate(window.requests, name)),
        format_rate(None if window is None else window.rate(window.errors, name)),
        _live(backend, name, "in_flight", gauges),
        _live(backend, name, "streams", gauges),
        _live(backend, name, "sessions", gauges),
        format_latency(None if window is None else window.p99.get(name)),
    ]


def _about(status: Mapping[str, Any], metrics: Metrics) -> str:
    """The first header line: version, uptime, workers, config and strategy."""
    config = status.get("config")
    config = config if isinstance(config, Mapping) else {}
    digest = str(config.get("hmac_sha256") or "")[:SHORT_SHA]
    workers = status.get("workers")
    if workers is None:
        workers = metrics.value(WORKERS)
    uptime = status.get("uptime_seconds")
    parts = [
        f"mcplb {status.get('version', '?')}",
        f"up {format_duration(float(uptime)) if uptime is not None else '?'}",
        f"workers {_int_text(workers)}",
    ]
    if config.get("path"):  # shown only to holders of the admin token
        parts.append(f"config {config['path']}" + (f" @ {digest}" if digest else ""))
    if status.get("strategy"):
        parts.append(f"strategy {status['strategy']}")
    return " | ".join(parts)


def _totals(window: _Window | None, metrics: Metrics, backends: Sequence[Mapping[str, Any]]) -> str:
    """The second header line: request and error rates, loop lag, backends available.

    The rates cover every backend the metrics name, listed in /status or not.
    """
    total_rate: float | None = None
    error_rate: float | None = None
    proxy_rate: float | None = None
    if window is not None:
        total_rate = sum(window.requests.values()) / window.elapsed
        error_rate = (sum(window.errors.values()) + window.proxy_errors) / window.elapsed
        proxy_rate = window.proxy_errors / window.elapsed
    available = sum(1 for b in backends if b.get("available"))
    return " | ".join(
        [
            f"total {format_rate(total_rate)} req/s",
            f"errors {format_rate(error_rate)}/s"
            + (f" (proxy {format_rate(proxy_rate)}/s)" if proxy_rate else ""),
            f"loop lag {format_latency(metrics.value(LOOP_LAG))}",
            f"backends {available}/{len(backends)} available",
        ]
    )


def render(
    status: Mapping[str, Any],
    metrics_now: Metrics,
    metrics_before: Metrics | None,
    elapsed: float,
) -> str:
    """One plain-text frame (no escapes): a two-line header, then a row per backend.

    ``status`` is the ``/status`` JSON, ``metrics_now`` the latest ``/metrics`` scrape and
    ``metrics_before`` the one ``elapsed`` seconds earlier (``None``, or ``elapsed <= 0``:
    rates and p99 show ``-``). Per backend, req/s is the increase of
    ``mcplb_requests_total`` (all methods and codes), err/s that of its ``5xx`` class, and
    p99 TTFB the 0.99 quantile of the ``mcplb_response_first_byte_seconds`` observations
    made between the two scrapes (``-`` without traffic). The header's error rate adds the
    answers the proxy made itself (``mcplb_proxy_errors_total``, which has no backend).
    """
    window = None
    if metrics_before is not None and elapsed > 0:
        window = _window(metrics_now, metrics_before, elapsed)
    gauges = {key: metrics_now.sum_by(name, "backend") for key, name in GAUGES.items()}
    backends: list[Mapping[str, Any]] = [
        b for b in status.get("backends") or [] if isinstance(b, Mapping)
    ]
    lines = [_about(status, metrics_now), _totals(window, metrics_now, backends), ""]
    if backends:
        lines += _table(COLUMNS, (_row(b, gauges, window) for b in backends), left=3)
    else:
        lines.append("(no backends)")
    return "\n".join(lines) + "\n"


def render_error(message: str, attempt: int, interval: float) -> str:
    """The one-line error shown in the live view while the admin endpoint fails."""
    return f"{ERROR_PREFIX}{message} (retrying every {interval:g}s, attempt {attempt})"


# --- I/O -----------------------------------------------------------------------------


class AdminError(Exception):
    """The admin endpoint could not be read: one line that says what and where."""


@dataclass(frozen=True)
class Snapshot:
    """One fetch: the ``/status`` JSON, the ``/metrics`` scrape and when it was taken."""

    status: Mapping[str, Any]
    metrics: Metrics
    at: float  # time.monotonic() halfway through the /metrics request


def normalize_url(admin_url: str) -> str:
    """``127.0.0.1:9901`` -> ``http://127.0.0.1:9901``; no trailing slash."""
    url = admin_url.strip()
    if "://" not in url:
        url = f"http://{url}"
    return url.rstrip("/")


def _get(url: str, timeout: float) -> str:
    headers = {"User-Agent": "mcplb-top"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as exc:
        hint = ""
        if exc.code == 401:
            hint = f" (set {TOKEN_ENV} to the admin.token)" if not token else " (wrong token)"
        raise AdminError(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URL
        raise AdminError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    return body.decode(charset, errors="replace")


def fetch(admin_url: str, timeout: float = FETCH_TIMEOUT) -> Snapshot:
    """GET ``/metrics`` then ``/status`` from ``admin_url``; ``AdminError`` on any failure."""
    base = normalize_url(admin_url)
    started = time.monotonic()
    text = _get(f"{base}/metrics", timeout)
    at = (started + time.monotonic()) / 2
    try:
        metrics = parse_metrics(text)
    except ValueError as exc:
        raise AdminError(f"{base}/metrics: not Prometheus text format ({exc})") from None
    body = _get(f"{base}/status", timeout)
    try:
        status = json.loads(body)
    except ValueError as exc:
        raise AdminError(f"{base}/status: not JSON ({exc})") from None
    if not isinstance(status, dict):
        raise AdminError(f"{base}/status: expected a JSON object")
    return Snapshot(status, metrics, at)


def _frame(now: Snapshot, before: Snapshot | None) -> str:
    if before is None:
        return render(now.status, now.metrics, None, 0.0)
    return render(now.status, now.metrics, before.metrics, now.at - before.at)


def run_once(admin_url: str, interval: float, out: TextIO, err: TextIO) -> int:
    """Two fetches ``interval`` apart, one plain frame on ``out``; errors on ``err``."""
    try:
        first = fetch(admin_url)
        time.sleep(max(0.0, interval - (time.monotonic() - first.at)))
        second = fetch(admin_url)
    except AdminError as exc:
        print(f"mcplb top: {exc}", file=err)
        return 1
    out.write(_frame(second, first))
    out.flush()
    return 0


def _fit(frame: str, columns: int, rows: int) -> list[str]:
    """Fit a frame to the terminal so that nothing wraps or scrolls: table lines are cut
    at the right edge, the error line is folded (its reason must stay readable)."""
    lines: list[str] = []
    width = max(20, columns)
    for line in frame.splitlines():
        if line.startswith(ERROR_PREFIX):
            lines += textwrap.wrap(line, width, subsequent_indent="  ") or [""]
        else:
            lines.append(line[:width])
    return lines[: max(1, rows - 1)]


def _draw(out: TextIO, frame: str, first: bool, tty: bool) -> None:
    if tty:
        size = shutil.get_terminal_size()
        lines = _fit(frame, size.columns, size.lines)
    else:  # piped or captured: no size to fit, keep every character
        lines = frame.splitlines()
    # Overwrite in place (home, each line cleared to its end, rest of screen cleared):
    # no flicker between frames. The very first frame clears the whole screen.
    prefix = (CLEAR_SCREEN if first else "") + HOME
    out.write(prefix + "".join(line + CLEAR_EOL + "\n" for line in lines) + CLEAR_BELOW)
    out.flush()


def run_live(admin_url: str, interval: float, out: TextIO) -> int:
    """Redraw every ``interval`` seconds until Ctrl-C (exit 0); errors stay in the view."""
    url = normalize_url(admin_url)
    before: Snapshot | None = None
    last_good: tuple[str, float] | None = None  # (frame, wall clock) shown under errors
    failures = 0
    first = True
    tty = out.isatty()
    try:
        if tty:
            out.write(HIDE_CURSOR)
        while True:
            tick = time.monotonic()
            title = (
                f"mcplb top - {url} - every {interval:g}s - Ctrl-C to quit"
                f" - {time.strftime('%H:%M:%S')}"
            )
            try:
                now = fetch(url, timeout=max(1.0, min(FETCH_TIMEOUT, interval * 2)))
            except AdminError as exc:
                failures += 1
                before = None  # the proxy may have restarted: no rate across the gap
                body = render_error(str(exc), failures, interval)
                if last_good is not None:
                    frame, when = last_good
                    stale = format_duration(time.time() - when)
                    body += f"\n\nlast data, {stale} ago:\n{frame}"
            else:
                failures = 0
                body = _frame(now, before)
                before = now
                last_good = (body, time.time())
            _draw(out, f"{title}\n\n{body}", first, tty)
            first = False
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
    except KeyboardInterrupt:
        pass  # a closed pipe (BrokenPipeError) goes up to run_top
    if tty:
        out.write(SHOW_CURSOR)
    out.write("\n")
    out.flush()
    return 0


def run_top(admin_url: str, *, once: bool, interval: float) -> int:
    """``mcplb top --admin URL [--once] [--interval S]``: returns the exit status.

    Live mode redraws until Ctrl-C (0). ``once`` fetches twice ``interval`` apart and
    prints one plain frame (0), or the error on stderr (1). A bad interval is 2.
    """
    if not math.isfinite(interval) or interval <= 0:
        print("mcplb top: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        if once:
            return run_once(admin_url, interval, sys.stdout, sys.stderr)
        return run_live(admin_url, interval, sys.stdout)
    except BrokenPipeError:
        # Whoever read stdout has gone: silence the interpreter's last flush as well.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
