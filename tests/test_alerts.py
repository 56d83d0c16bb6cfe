"""The monitoring assets in deploy/: Prometheus alert rules and the Grafana dashboard.

promtool (Debian package ``prometheus``, installed by ``make test``) checks the rules and
runs their unit tests (deploy/prometheus/alerts_test.yaml). Every PromQL expression of the
rules and of the dashboard may only use the metric names and labels that
docs/observability.md defines: a cheap guard against typos and contract drift.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus_server import (
    ALERTS,
    ALERTS_TEST,
    REPO_ROOT,
    Contract,
    PrometheusMissing,
    alert_rules,
    dashboard_exprs,
    dashboard_panels,
    find_binary,
    grouping_labels,
    load_contract,
    load_dashboard,
    metric_names,
    selector_labels,
    substitute_variables,
    unknown_names,
)

PROMTOOL_TIMEOUT = 60.0
SEVERITIES = {"warning", "critical"}


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return find_binary("promtool")
    except PrometheusMissing as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited with {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )


# --- alert rules --------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(ALERTS.relative_to(REPO_ROOT)))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(ALERTS_TEST.relative_to(REPO_ROOT)))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fires == set(), "alerts without a unit test where they fire"
    assert alerts - quiet == set(), "alerts without a unit test where they must not fire"
    assert (fires | quiet) - alerts == set(), "unit tests for alerts that do not exist"


def test_every_alert_has_severity_summary_and_description() -> None:
    rules = alert_rules()
    assert rules, f"no rules in {ALERTS}"
    names = [rule.get("alert") for rule in rules]
    assert None not in names, "only alerting rules belong in alerts.yaml"
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), rule["alert"]
        assert annotations.get("description"), rule["alert"]


def test_alert_exprs_use_contract_names(contract: Contract) -> None:
    problems = {
        rule["alert"]: found
        for rule in alert_rules()
        if (found := unknown_names(rule["expr"], contract))
    }
    assert problems == {}


# --- dashboard ----------------------------------------------------------------------------


def test_dashboard_exprs_use_contract_names(dashboard: dict[str, Any], contract: Contract) -> None:
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) > 20, "the dashboard has (almost) no queries"
    problems = {where: found for where, expr in exprs if (found := unknown_names(expr, contract))}
    assert problems == {}


def test_dashboard_covers_the_contract(dashboard: dict[str, Any], contract: Contract) -> None:
    """Every documented mcplb_ metric is on the dashboard (histograms by their buckets)."""
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs(dashboard)))
    documented = {
        name
        for name in contract.metrics
        if name.startswith("mcplb_") and not name.endswith(("_sum", "_count"))
    }
    assert documented - used == set()


def test_dashboard_exprs_are_valid_promql(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    """Each query, with Grafana's variables filled in, parses (as a recording rule)."""
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": substitute_variables(expr),
            "labels": {"where": where},  # named in promtool's error message
        }
        for index, (where, expr) in enumerate(dashboard_exprs(dashboard))
    ]
    rules_file = tmp_path / "dashboard_rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run_promtool(promtool, "check", "rules", str(rules_file)))


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "mcplb"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    backend = variables["backend"]
    assert backend["type"] == "query" and backend["multi"] and backend["includeAll"]
    assert backend["allValue"] == ".*"

    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            if "backend" in metric_labels_used(expr):
                assert "$backend" in expr, f"{panel['title']!r} ignores the backend variable"


def metric_labels_used(expr: str) -> set[str]:
    """Labels the expression filters or groups on (enough to see whether it is per backend)."""
    return grouping_labels(expr) | {label for _, label in selector_labels(expr)}


# --- the guard itself -----------------------------------------------------------------------


def test_contract_parser(contract: Contract) -> None:
    assert contract.metrics["mcplb_requests_total"] == {
        "backend",
        "method",
        "code",
        "job",
        "instance",
    }
    assert contract.metrics["mcplb_mcp_requests_total"] == {"method", "tool", "job", "instance"}
    assert "le" in (contract.labels_of("mcplb_response_first_byte_seconds_bucket") or ())
    assert contract.known("mcplb_response_bytes_total")
    assert contract.known("mcplb_request_bytes_total")
    assert contract.known("process_resident_memory_bytes")
    assert contract.metrics["mcplb_session_not_found_total"] == {"job", "instance"}
    assert not contract.known("mcplb_response_first_byte_seconds")  # only its series exist


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(mcplb_request_total[5m]))", "unknown metric 'mcplb_request_total'"),
        ('mcplb_requests_total{status="5xx"}', "mcplb_requests_total has no label 'status'"),
        ("sum by (backnd) (mcplb_backend_up)", "no metric has the label 'backnd'"),
        (
            "histogram_quantile(0.99, rate(mcplb_request_duration_seconds[5m]))",
            "unknown metric 'mcplb_request_duration_seconds'",
        ),
    ],
)
def test_guard_catches_typos(contract: Contract, expr: str, problem: str) -> None:
    assert any(found.startswith(problem) for found in unknown_names(expr, contract))


def test_guard_ignores_functions_keywords_and_labels(contract: Contract) -> None:
    expr = (
        'sum by (backend) (rate(mcplb_requests_total{code="5xx", job=~"$job"}[$__rate_interval]'
        " offset 1m)) / on (backend) group_left () (max without (instance) (mcplb_backend_up"
        ' > bool 0.5)) or vector(1e-3) unless absent(up{job="mcplb"})'
    )
    assert metric_names(expr) == {"mcplb_requests_total", "mcplb_backend_up", "up"}
    assert unknown_names(expr, contract) == []
