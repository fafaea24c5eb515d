"""deploy/prometheus stays true: the plain rule file and the operator's PrometheusRule hold the same rules, each
rule has a summary, a severity and a runbook line, every metric a rule reads is one `/metrics` serves (the
documented table, which tests/test_http.py ties to a real scrape), and `promtool` accepts the rules and passes
their unit tests (when promtool is installed: `apt-get install -y prometheus` provides it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "cost-worker.rules.yml"
OPERATOR = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "cost-worker.rules.test.yml"
PROMTOOL = shutil.which("promtool")


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def served_metrics() -> set[str]:
    table = [ln for ln in (ROOT / "docs" / "operations.md").read_text().splitlines() if ln.startswith("| `cost_worker_")]
    return {name for ln in table for name in re.findall(r"`(cost_worker_[a-z_]+)", ln)}


def test_plain_file_and_prometheusrule_are_the_same_rules() -> None:
    """`spec.groups` of the PrometheusRule equals the plain file's `groups`."""
    operator = yaml.safe_load(OPERATOR.read_text())
    assert (operator["apiVersion"], operator["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert operator["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_alerts_the_issue_asks_for() -> None:
    """Sync stale (30 h), integration error, backfill stalled, sustained 429s, reconcile drift rows and share (2 %),
    budget forecast over, budget over, spend anomaly."""
    by_name = {r["alert"]: r for r in rules()}
    assert set(by_name) == {"CostWorkerSyncStale", "CostWorkerIntegrationError", "CostWorkerBackfillStalled",
                            "CostWorkerRateLimited", "CostWorkerReconcileDriftRows", "CostWorkerReconcileDriftShare",
                            "CostWorkerBudgetForecastOver", "CostWorkerBudgetOver", "CostWorkerSpendAnomaly"}
    assert "30 * 3600" in by_name["CostWorkerSyncStale"]["expr"]
    assert "> 0.02" in by_name["CostWorkerReconcileDriftShare"]["expr"]


def test_each_rule_has_severity_summary_and_runbook() -> None:
    """Labels carry a severity; annotations a summary, a description and a one-line runbook."""
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert "\n" not in rule["annotations"]["runbook"].strip()


def test_rules_read_only_metrics_that_exist() -> None:
    """Every cost_worker_* name in an expression is a series /metrics serves."""
    used = {name for r in rules() for name in re.findall(r"cost_worker_[a-z_]+", r["expr"])}
    assert len(used) >= 10
    assert used <= served_metrics(), used - served_metrics()


@pytest.mark.slow  # promtool processes
@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install -y prometheus)")
def test_promtool_checks_and_unit_tests(tmp_path: Path) -> None:
    """`promtool check rules` on both files (the PrometheusRule's groups extracted) and `promtool test rules`."""
    assert PROMTOOL
    extracted = tmp_path / "operator.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": yaml.safe_load(OPERATOR.read_text())["spec"]["groups"]}))
    for path in (RULES, extracted):
        check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    test = subprocess.run([PROMTOOL, "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, timeout=120,
                          cwd=UNIT_TESTS.parent)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == {r["alert"] for r in rules()}  # every alert has a unit test
