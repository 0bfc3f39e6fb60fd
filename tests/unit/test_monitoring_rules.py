"""The Prometheus rules: valid for promtool, every alert unit-tested firing and not firing, every alert a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from passerelle.deploy.local import monitoring

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "monitoring" / "rules.yml"
RULE_TESTS = ROOT / "deploy" / "monitoring" / "tests" / "rules_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian's prometheus)")


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False, timeout=120)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_test_fails_when_an_alert_stops_firing(tmp_path: Path) -> None:
    """The unit tests can fail: with ProcessorDown's expression broken, promtool reports it."""
    broken = RULES.read_text().replace('expr: up{job="passerelle"} == 0', 'expr: up{job="passerelle"} == 2')
    (tmp_path / "rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "rules_test.yml").write_text(RULE_TESTS.read_text())
    proc = promtool("test", "rules", str(tmp_path / "tests" / "rules_test.yml"))
    assert proc.returncode != 0
    assert "ProcessorDown" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_every_alert_has_a_runbook_section() -> None:
    headings = {m.lower() for m in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)}
    for alert in alerts():
        name = alert["alert"]
        assert name.lower() in headings, f"docs/runbooks.md has no '## {name}' section"
        assert alert["annotations"]["runbook"] == f"docs/runbooks.md#{name.lower()}"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"]


@needs_promtool
def test_the_generated_configuration_passes_promtool_with_short_for(tmp_path: Path) -> None:
    mon = monitoring.Monitoring(root=tmp_path, scrape_interval_s=0.5, alert_for="2s",
                                exporter_command=["passerelle", "lag", "--serve"], broker_jmx_port=9404)  # fmt: skip
    monitoring.write_config(mon)  # runs `promtool check config`, which checks the rule files it names too
    rules = yaml.safe_load((tmp_path / "rules" / "passerelle.yml").read_text())
    fors = {r["alert"]: r.get("for") for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert set(fors.values()) == {"2s"}
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "500ms"
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        "passerelle", "passerelle-lag", "prometheus", "alertmanager", "kafka",
    ]  # fmt: skip
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
