"""The shipped alert rules (docker/prometheus/alerts.yml) name only metrics the platform exports.

The known names come from a real ``/metrics`` render (``metrics_render``: the
recorded families, every labelled one touched so it has a sample, and the
scrape-time collectors against this run's services) plus ``up``, which
Prometheus adds to every target. A rule naming anything else fails, and the
checker is shown to catch that on a made-up rule. ``promtool check rules``
runs too when promtool is installed (Debian: ``apt-get install prometheus``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from tests.conftest import REPO_ROOT

RULES = REPO_ROOT / "docker" / "prometheus" / "alerts.yml"
# Series Prometheus itself attaches to every scrape target.
PROMETHEUS_SERIES = {"up"}
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan"}
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: not functions, keywords, labels, label values or durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # label values ("5..", "ce_x") are no metrics
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name in _KEYWORDS or re.match(r"\s*\(", text[match.end() :]):
            continue  # a keyword, or a function / aggregation call
        if match.start() and text[match.start() - 1].isdigit():
            continue  # the unit of a number like 1e3 or a bare duration
        names.add(name)
    return names


def unknown_metrics(rules: dict, known: set[str]) -> dict[str, set[str]]:
    """Alert name -> the metric names its expression reads that ``known`` lacks."""
    unknown = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            missing = promql_metric_names(rule["expr"]) - known
            if missing:
                unknown[rule.get("alert") or rule.get("record")] = missing
    return unknown


def _touch_every_family() -> None:
    """Give each labelled family of apps.common.metrics one child, so it renders a sample."""
    from apps.common import metrics

    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram) and value._labelnames:
            value.labels(**dict.fromkeys(value._labelnames, "alert-rules-test"))


def _rendered_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture
def known_metrics(db) -> set[str]:
    from apps.ops.metrics import metrics_render

    _touch_every_family()
    return _rendered_names(metrics_render().decode()) | PROMETHEUS_SERIES


@pytest.fixture(scope="module")
def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def test_every_rule_is_an_alert_with_a_severity_and_a_summary(rules):
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts
    for rule in alerts:
        assert rule.get("alert") and rule.get("expr"), rule
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))


def test_every_rule_names_only_metrics_that_exist(rules, known_metrics):
    assert unknown_metrics(rules, known_metrics) == {}


def test_the_rules_cover_what_operators_must_see(rules):
    read = set().union(*(promql_metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))
    for metric in (
        "ce_queue_depth",
        "ce_queue_oldest_message_age_seconds",
        "ce_dead_letters_archived_total",
        "ce_outbox_lag_seconds",
        "ce_batch_job_last_success_timestamp_seconds",
        "ce_batch_job_schedule_interval_seconds",
        "ce_batch_job_runs_skipped_total",
        "ce_subscriber_events_total",
        "ce_http_request_duration_seconds_count",
        "ce_beat_leader",
        "up",
    ):
        assert metric in read, metric


def test_a_rule_naming_an_unknown_metric_is_caught(known_metrics):
    made_up = {
        "groups": [
            {
                "name": "made-up",
                "rules": [
                    {"alert": "Fine", "expr": 'sum by (queue) (rate(ce_tasks_total{queue="ce_nope_total"}[5m])) > 0'},
                    {"alert": "Typo", "expr": "max(ce_outbox_lag_secs) > 60 and on(job) up == 1"},
                    {"alert": "Gone", "expr": 'histogram_quantile(0.99, rate(ce_no_such_seconds_bucket{le="1"}[5m]))'},
                ],
            }
        ]
    }

    assert unknown_metrics(made_up, known_metrics) == {
        "Typo": {"ce_outbox_lag_secs"},
        "Gone": {"ce_no_such_seconds_bucket"},
    }


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
