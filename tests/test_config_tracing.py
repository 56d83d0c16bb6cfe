"""The ``tracing`` section (proxy/config/): its keys, defaults, checks and rules, and
``mcplb check`` when the ``otel`` extra is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mcplb.proxy import cli
from mcplb.proxy.config import validate
from mcplb.proxy.config.fields import schema_keys
from mcplb.proxy.config.schema import Config, TracingConfig
from tests.support.config_docs import BACKEND, error, errors, parse, section_doc

KEYS = (
    "enabled",
    "endpoint",
    "service_name",
    "sample_ratio",
    "headers",
    "max_queue",
    "batch_size",
    "export_interval",
    "export_timeout",
)


def test_the_keys() -> None:
    assert schema_keys(Config)["tracing"] == KEYS


def test_off_by_default_on_once_given() -> None:
    assert parse(BACKEND).tracing == TracingConfig()
    assert parse(BACKEND).tracing.enabled is False
    given = parse(BACKEND + "tracing:\n")
    assert given.tracing.enabled is True
    assert given.tracing.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert given.tracing.sample_ratio == 1.0
    assert parse(section_doc("tracing", "enabled: false\n")).tracing.enabled is False


def test_every_key() -> None:
    config = parse(
        section_doc(
            "tracing",
            """\
            endpoint: https://otel.example.com/v1/traces
            service_name: edge-lb
            sample_ratio: 0.01
            headers: {Authorization: "Bearer ${TOKEN}", x-tenant: a}
            max_queue: 100
            batch_size: 10
            export_interval: 250ms
            export_timeout: 2s
            """,
        ),
        TOKEN="s3cret",
    ).tracing
    assert config == TracingConfig(
        enabled=True,
        endpoint="https://otel.example.com/v1/traces",
        service_name="edge-lb",
        sample_ratio=0.01,
        headers={"authorization": "Bearer s3cret", "x-tenant": "a"},
        max_queue=100,
        batch_size=10,
        export_interval=0.25,
        export_timeout=2.0,
    )
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sample_ratio: 1.5", "tracing.sample_ratio: must be a number from 0 to 1, e.g. 0.01"),
        ("sample_ratio: true", "tracing.sample_ratio: must be a number from 0 to 1, e.g. 0.01"),
        ("endpoint: ftp://x/v1/traces", "tracing.endpoint: must be an http:// or https:// URL"),
        ("endpoint: http://u:p@x/v1/traces", "tracing.endpoint: must not contain user info"),
        ("endpoint: http://x:99999/v1", "tracing.endpoint: cannot be parsed"),
        ("service_name: ''", "tracing.service_name: must be a name of 1 to 255"),
        ("max_queue: 0", "tracing.max_queue: must be an integer >= 1"),
        ("max_queue: 100\nbatch_size: 600", "tracing.batch_size: must not exceed max_queue (100)"),
        ("export_timeout: 0s", "tracing.export_timeout: must be greater than 0"),
        ("headers: [a]", "tracing.headers: must be a mapping"),
        ("headers: {'bad name': x}", "tracing.headers.bad name: must be a header name"),
        ('headers: {x-a: "v\\r\\nx-b: 1"}', "tracing.headers.x-a: must be a string of printable"),
        ("headers: {x-a: 5}", "tracing.headers.x-a: must be a string of printable"),
        ("unknown: 1", "tracing.unknown: unknown key"),
    ],
)
def test_refused(body: str, message: str) -> None:
    found = error(section_doc("tracing", body + "\n"))
    assert found.startswith(message), found


def test_credentials_are_never_sent_in_clear_text_to_another_host() -> None:
    text = section_doc(
        "tracing", "endpoint: http://otel.internal:4318/v1/traces\nheaders: {authorization: x}\n"
    )
    found = errors(text)
    assert found == [
        "tracing.headers: would be sent in clear text: the endpoint must use https:// (plain "
        "http only to a loopback collector) (line 6)"
    ]
    loopback = "endpoint: http://127.0.0.1:4318/v1/traces\nheaders: {authorization: x}\n"
    assert parse(section_doc("tracing", loopback)).tracing.headers == {"authorization": "x"}


def test_check_says_what_to_install_when_the_extra_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mcplb.yaml"
    path.write_text(BACKEND + "sticky: {mcp_sessions: false}\ntracing:\n  enabled: true\n")
    assert cli.main(["check", "--config", str(path)]) == 0  # the dev environment has it
    capsys.readouterr()
    # As in an environment without the extra: the exporter's module cannot be imported.
    monkeypatch.setitem(sys.modules, validate.OTEL_MODULES[1], None)
    assert cli.main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"{path}: tracing.enabled: tracing needs the OpenTelemetry packages "
        f"({validate.OTEL_MODULES[1]} is not installed): pip install 'mcplb[otel]', or set "
        "tracing.enabled: false (line 6)\n"
    )
    path.write_text(BACKEND + "sticky: {mcp_sessions: false}\ntracing: {enabled: false}\n")
    assert cli.main(["check", "--config", str(path)]) == 0  # off: nothing to import
