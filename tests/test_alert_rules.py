"""The Prometheus alert rules (contrib/prometheus/tagsweeper-rules.yml) and the metric they need.

`promtool check rules` and `promtool test rules` (Debian package `prometheus`, installed by
scripts/test.sh) run the rules' own unit tests, tagsweeper-rules.test.yml: each alert firing on
the series that should wake someone and silent on ordinary ones. A missing promtool fails here,
never skips. Then every metric the rules read must be one GET /metrics serves, and
`tagsweeper_workers` ("no worker alive") counts real RQ workers on the real redis-server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from rq import Queue, Worker

from hooks import create_app
from workers.common import metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "contrib" / "prometheus" / "tagsweeper-rules.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "tagsweeper-rules.test.yml"


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    assert path, "promtool is missing: install the Debian package prometheus (scripts/test.sh does)"
    return path


def test_the_rules_are_valid():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


def test_the_rules_unit_tests_pass():
    out = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test():
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s+alertname: (\w+)$", RULE_TESTS.read_text(), re.M))
    assert len(alerts) == 8 and alerts == tested


def scrape(redis_url: str) -> str:
    client = create_app({"TESTING": True, "WEBHOOK_SECRET": "alert-rules-secret", "REDIS_URL": redis_url}).test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def test_every_metric_the_rules_read_is_served(redis_url):
    text = scrape(redis_url)
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    read = set(re.findall(r"\b(tagsweeper_[a-z_]+)", RULES.read_text())) - {"tagsweeper_rules"}
    assert read and read <= served, read - served


def test_workers_counts_the_live_rq_workers_of_the_queue(conn, redis_url):
    def workers() -> float:
        return metrics.parse(scrape(redis_url))['tagsweeper_workers{queue="tagsweeper"}']

    assert workers() == 0
    first = Worker([Queue("tagsweeper", connection=conn)], connection=conn, name="alert-rules-1")
    second = Worker([Queue("tagsweeper", connection=conn)], connection=conn, name="alert-rules-2")
    elsewhere = Worker([Queue("other", connection=conn)], connection=conn, name="alert-rules-3")
    for w in (first, second, elsewhere):
        w.register_birth()
    assert workers() == 2
    first.register_death()  # a clean exit leaves the queue's set
    assert workers() == 1
    # A killed worker stays in the set; its heartbeat key expires. That expiry, without waiting for it:
    conn.delete(second.key)
    assert conn.sismember("rq:workers:tagsweeper", second.key)
    assert workers() == 0
