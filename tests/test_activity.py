"""The activity page (hooks/activity.py) and what it is computed from.

First the pure parts (hooks/activity_summary.py), table-driven; then the hourly counts beside the
audit trail (workers/common/activity.py) on the real redis-server; then the page under Flask's
test client on real Redis: behind the dashboard's login, its numbers, a run's decisions, the
search, what waits and what fails (real RQ jobs, one failed on a real worker), bad input, names
that try to break out of the HTML. The last test is end to end: hostile branch names posted as
real deliveries to gunicorn, cleaned by a real worker on the real registry, and the page served.
"""

from __future__ import annotations

import html
import re
import time
from datetime import datetime, timezone

import pytest
import requests
from rq import Queue, SimpleWorker

from hooks import activity_summary as summary
from tests.support.service import Service
from tests.support.webapp import DASHBOARD_PASSWORD as PASSWORD
from tests.support.webapp import DASHBOARD_SECRET as SECRET
from tests.support.webapp import DASHBOARD_USER as USER
from tests.support.webapp import basic
from tests.support.webapp import dashboard_app as make_app
from workers.common import activity as counts
from workers.common import audit, keys, queue

QUEUE = "tagsweeper"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{7*7}}", "x' onmouseover='alert(1)",
           "a&amp;b</code></td></tr></table><h1>owned</h1>"]

NOW = datetime(2026, 12, 4, 15, 30, tzinfo=timezone.utc).timestamp()
H = 3600


@pytest.fixture
def client(redis_url):
    return make_app(redis_url).test_client()


def entry(**fields) -> dict:
    base = {"time": time.time(), "project_id": 4711, "project": "acme/shop", "branch": "feature/x",
            "trigger": "merge", "delivery": "d-1", "job_id": "cleanup-4711-merge-1", "repository": "acme/shop",
            "tag": "feature-x", "decision": "deleted", "reason": "the branch's own tag", "reason_kind": "owned"}
    base.update(fields)
    return base


# --- pure: hooks/activity_summary.py ----------------------------------------------------------

@pytest.mark.parametrize("kind, cls", [
    ("deployed", "in use"), ("protected", "protected"), ("default_branch", "protected"), ("git_tag", "protected"),
    ("live_branch", "live"), ("live_head", "live"), ("open_mr", "live"), ("fast_forward", "live"),
    ("other_ref", "live"), ("sha_like", "unclear"), ("gitlab_403", "unclear"), ("changed", "unclear"),
    ("invalid_tag", "unclear"), ("other", "unclear"), ("retention", "newest"), ("a_kind_added_later", "other"),
    (None, "other"),
])
def test_reason_classes(kind, cls):
    assert summary.reason_class(kind) == cls


# The kinds of deleted, absent and failed decisions: never a reason to keep a tag.
NOT_KEPT = {"owned", "absent", "transient", "error", "superseded"}


def test_every_kept_reason_kind_the_metrics_know_has_a_class():
    from workers.common import metrics
    kept_kinds = set(metrics.REASON_KINDS.values()) - NOT_KEPT
    assert kept_kinds and not kept_kinds - set(summary.REASON_CLASSES), kept_kinds - set(summary.REASON_CLASSES)
    assert set(summary.REASON_CLASSES.values()) <= set(summary.CLASSES)
    assert set(summary.CLASS_HELP) == set(summary.CLASSES)


def c(hours_ago: float, decision: str, kind: str = "owned", n: int = 1, pid: str = "4711"):
    return counts.Count(int(NOW) // H - int(hours_ago), pid, decision, kind, n)


@pytest.mark.parametrize("rows, window, expected", [
    # (counts, window, (deleted, failed, kept by class))
    ([c(0, "deleted", n=3)], "day", (3, 0, {})),
    ([c(23, "deleted")], "day", (1, 0, {})),        # the 24th hour back is still the last day
    ([c(24, "deleted")], "day", (0, 0, {})),        # the 25th is not
    ([c(24, "deleted")], "week", (1, 0, {})),
    ([c(167, "deleted")], "week", (1, 0, {})),
    ([c(168, "deleted")], "week", (0, 0, {})),
    ([c(168, "deleted")], "month", (1, 0, {})),
    ([c(719, "deleted")], "month", (1, 0, {})),
    ([c(720, "deleted"), c(0, "failed")], "month", (0, 1, {})),
    ([c(-1, "deleted"), c(0, "failed")], "day", (0, 1, {})),  # a clock ahead of ours: not counted yet
    ([c(1, "failed", "transient", 2), c(2, "failed", "error")], "day", (0, 3, {})),
    ([c(1, "kept", "deployed", 4), c(1, "kept", "protected"), c(3, "kept", "git_tag", 2)], "day",
     (0, 0, {"in use": 4, "protected": 3})),
    ([c(1, "absent"), c(1, "skipped", "skipped"), c(1, "would_delete")], "day", (0, 0, {})),
])
def test_project_windows(rows, window, expected):
    projects = summary.project_windows(rows, {"4711": "acme/shop"}, NOW)
    t = projects[0].windows[window]
    assert (t.deleted, t.failed, t.kept) == expected
    assert projects[0].name == "acme/shop"


def test_project_windows_chart_and_order():
    rows = [c(0, "deleted", n=2), c(1, "deleted"), c(16, "deleted", n=5), c(24 * 29 + 15, "deleted", n=7),
            c(24 * 31, "deleted", n=100), c(0, "kept", "deployed", n=9), c(2, "deleted", pid="9", n=50)]
    projects = summary.project_windows(rows, {}, NOW)
    assert [p.project_id for p in projects] == ["9", "4711"]  # most deleted this month first
    shop = projects[1]
    assert shop.name == "project 4711"
    assert len(shop.per_day) == summary.CHART_DAYS
    # NOW is 15:30 UTC: 0 and 1 hours back are today, 16 back is yesterday, 29 days and 15 h back the first day.
    assert shop.per_day[-1] == ("2026-12-04", 3)
    assert shop.per_day[-2] == ("2026-12-03", 5)
    assert shop.per_day[0] == ("2026-11-05", 7)
    assert sum(n for _, n in shop.per_day) == 15  # kept tags and the 31-day-old ones are not drawn
    total = summary.total(projects, "day")
    assert (total.deleted, total.kept) == (2 + 1 + 5 + 50, {"in use": 9})  # 16 hours back is the last day too


def e(i: int, t: float, **fields) -> dict:
    return entry(id=f"{int(t * 1000)}-{i}", time=t, **fields)


def test_runs_group_by_job_and_keep_retries_together():
    entries = [  # newest first, as read
        e(6, 1000, job_id="recheck-1-abc-5", tag="b", decision="kept", reason_kind="deployed"),
        e(5, 900, job_id="cleanup-2", branch="y", tag="y1"),
        e(4, 800, job_id="cleanup-1", tag="a", decision="absent", reason_kind="absent"),  # RQ's retry, much later
        e(3, 10, job_id="cleanup-1", tag="a", decision="failed", reason_kind="transient"),
        e(2, 9, job_id="cleanup-1", tag="b", decision="kept", reason_kind="deployed"),
        e(1, 8, job_id=None, delivery=None, trigger="sweep", branch=None, tag="old"),
    ]
    runs = summary.group_runs(entries)
    assert [(r.kind, r.key[0], len(r.entries)) for r in runs] == [
        ("re-check", "recheck-1-abc-5", 1), ("cleanup", "cleanup-2", 1), ("cleanup", "cleanup-1", 3),
        ("sweep", "", 1)]
    first = runs[2].tally
    assert (first.absent, first.failed, first.kept) == (1, 1, {"in use": 1})
    assert runs[3].key == ("", "4711", "", "sweep") and runs[3].anonymous


def test_runs_by_hand_without_job_or_delivery_split_at_a_quiet_spell():
    anon = {"job_id": None, "delivery": None, "trigger": "manual"}
    entries = [e(4, 2000, **anon), e(3, 1990, **anon), e(2, 1000, **anon), e(1, 999, **anon),
               e(0, 998, trigger="superseded", job_id="retire-4711-x")]
    runs = summary.group_runs(entries, gap=300)
    assert [(r.kind, len(r.entries)) for r in runs] == [("cleanup", 2), ("cleanup", 2), ("retention pass", 1)]
    assert runs[0].id != runs[1].id


def test_retention_passes_reuse_their_job_id_and_split_at_a_quiet_spell():
    retire = {"job_id": "retire-4711-0123456789abcdef", "trigger": "superseded", "branch": "main", "delivery": None}
    entries = [e(4, 5000, **retire), e(3, 4990, **retire), e(2, 1000, **retire), e(1, 10, job_id="cleanup-1"),
               e(0, 5, job_id="cleanup-1")]  # a cleanup's retry, however late, stays one run
    runs = summary.group_runs(entries, gap=300)
    assert [(r.kind, len(r.entries)) for r in runs] == [("retention pass", 2), ("retention pass", 1), ("cleanup", 2)]
    older = runs[1]
    newest, _, digest = summary.parse_run_id(older.id)
    assert summary.pick_run(entries, newest, digest).entries == older.entries
    # From a search hit: the newest entry of the key bounds the read, the hit picks its pass.
    assert summary.pick_run(entries, runs[0].newest["id"], digest).entries == runs[0].entries
    assert summary.pick_run(entries, entries[2]["id"], digest).entries == older.entries


def test_a_run_reaching_the_end_of_what_was_read_is_partial():
    t = 1_790_000_000
    entries = [e(3, t + 5000, job_id="a"), e(2, t + 1000, job_id="b"), e(1, t + 990, job_id="c")]
    runs = summary.group_runs(entries, window_full=True, gap=300)
    assert [r.partial for r in runs] == [False, True, True]
    # Its page reads from a few hours below the oldest entry seen (RQ's retries come within them).
    assert runs[1].id.split(".")[1] == f"{(t + 1000 - summary.PARTIAL_MARGIN) * 1000}-0"
    assert runs[0].id.split(".")[1] == entries[0]["id"]
    assert not any(r.partial for r in summary.group_runs(entries, window_full=False))


@pytest.mark.parametrize("text, ok", [
    ("1733350000000-0.1733349990000-3.0123456789abcdef", True),
    ("1733350000000-0.0-0.0123456789abcdef", True),
    ("1733350000000-0.1733350000000-0.0123456789abcdef", True),
    ("1733349990000-0.1733350000000-0.0123456789abcdef", False),  # oldest after newest
    ("1733350000000-0.1733349990000-3.0123456789ABCDEF", False),
    ("1733350000000-0.1733349990000-3.0123", False),
    ("1733350000000.1733349990000.0123456789abcdef", False),
    ("", False), ("../../etc/passwd", False), ("<script>", False),
    ("1" * 30 + "-0.0-0.0123456789abcdef", False),
])
def test_parse_run_id(text, ok):
    if ok:
        newest, oldest, digest = summary.parse_run_id(text)
        assert f"{newest}.{oldest}.{digest}" == text
    else:
        with pytest.raises(ValueError, match="run id"):
            summary.parse_run_id(text)


def test_pick_run_finds_the_run_by_its_id_among_others():
    entries = [e(4, 40, job_id="b"), e(3, 30, job_id="a", tag="t2"), e(2, 20, job_id="b"), e(1, 10, job_id="a")]
    run_a = next(r for r in summary.group_runs(entries) if r.key[0] == "a")
    newest, _, digest = summary.parse_run_id(run_a.id)
    found = summary.pick_run(entries, newest, digest)
    assert [x["id"] for x in found.entries] == [x["id"] for x in run_a.entries]
    assert summary.pick_run(entries, "1-0", digest) is None


def test_in_use_is_the_newest_decision_of_each_tag():
    entries = [
        e(5, 50, tag="gone", decision="deleted"),
        e(4, 40, tag="held", decision="kept", reason_kind="deployed"),
        e(3, 30, tag="gone", decision="kept", reason_kind="deployed"),      # released since
        e(2, 20, tag="held", decision="kept", reason_kind="deployed"),      # the same tag again: listed once
        e(1, 10, tag="other-repo", repository="acme/shop/worker", decision="kept", reason_kind="deployed"),
        e(0, 5, tag="safe", decision="kept", reason_kind="protected"),
        e(9, 4, tag=None, decision="skipped", reason_kind="skipped"),
    ]
    assert [x["tag"] for x in summary.in_use(entries)] == ["held", "other-repo"]


@pytest.mark.parametrize("values, top, heights", [
    ([], 0, []),
    ([("a", 0), ("b", 0)], 0, [0, 0]),
    ([("a", 2), ("b", 4)], 4, [30, 60]),
    ([("a", 1), ("b", 1000)], 1000, [1, 60]),  # one deletion is still a visible bar
])
def test_bars(values, top, heights):
    got, biggest = summary.bars(values, width=300, height=60)
    assert biggest == top
    assert [b.height for b in got] == heights
    assert all(b.y + b.height == 60 for b in got)
    assert all(0 <= b.x < 300 for b in got)


@pytest.mark.parametrize("raw, expected", [
    (None, None), ("", None), ("   ", None), (" feature/x ", "feature/x"), ("<script>", "<script>"),
    ("x" * 200, "x" * 200), ("x" * 201, ValueError), ("a\nb", ValueError), ("a\x00", ValueError),
    ("\ud800", ValueError),
])
def test_search_terms(raw, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            summary.search_terms(raw)
    else:
        assert summary.search_terms(raw) == expected


@pytest.mark.parametrize("text, hit", [
    ("ACME/SHOP", True), ("feature/X", True), ("feature-x", True), ("4711", True), ("471", False),
    ("worker", False), ("merge", False),
])
def test_matches_project_branch_or_tag(text, hit):
    assert summary.matches(entry(), text) is hit


# --- the counts beside the trail (workers/common/activity.py) ---------------------------------

def test_every_audit_entry_is_counted_by_hour_and_read_back(conn):
    now = time.time()
    rows = [("deleted", "owned", 0), ("deleted", "owned", 0), ("kept", "deployed", 0), ("failed", "transient", 0),
            ("deleted", "owned", 2 * 86400)]
    for decision, kind, back in rows:
        audit.record(conn, entry(time=now - back, decision=decision, reason_kind=kind))
    audit.record(conn, entry(project_id=9, project="acme/other", decision="deleted"))
    found, paths = counts.read(conn, now)
    assert paths == {"4711": "acme/shop", "9": "acme/other"}
    tally = {}
    for row in found:
        tally[(row.project_id, row.decision, row.reason_kind)] = tally.get(
            (row.project_id, row.decision, row.reason_kind), 0) + row.n
    assert tally == {("4711", "deleted", "owned"): 3, ("4711", "kept", "deployed"): 1,
                     ("4711", "failed", "transient"): 1, ("9", "deleted", "owned"): 1}
    # Each day's hash expires: the counts' memory is bounded by the days kept.
    day_key = keys.activity_day(counts.day_of(now))
    assert 0 < conn.ttl(day_key) <= counts.TTL
    assert conn.xlen(audit.STREAM) == 6


def test_the_counts_ride_in_the_sinks_single_round_trip(conn):
    """A cleanup's decision writes the entry, tags_total and the count in one pipeline."""
    sent = []

    class Counting:
        def __init__(self, real):
            self.real = real

        def pipeline(self, **kw):
            pipe = self.real.pipeline(**kw)
            execute = pipe.execute

            def counted():
                sent.append(len(pipe.command_stack))
                return execute()
            pipe.execute = counted
            return pipe

    sink = audit.Sink(Counting(conn), job_id="cleanup-1")
    sink({"time": time.time(), **{k: v for k, v in entry().items() if k not in ("job_id", "reason_kind", "time")}})
    assert len(sent) == 1 and sent[0] >= 4  # XADD, HINCRBY tags_total, HINCRBY day, EXPIRE (, HSET path)
    assert sum(r.n for r in counts.read(conn)[0]) == 1


@pytest.mark.parametrize("pid, decision, kind, field", [
    (4711, "deleted", "owned", "|4711|deleted|owned"),
    ("4711", "kept", "deployed", "|4711|kept|deployed"),
    (None, "skipped", "skipped", "|?|skipped|skipped"),
    ("acme/shop", "deleted", "owned", "|?|deleted|owned"),
    (1, "de|leted", "own ed", "|1|other|other"),  # never a field another reader could misparse
])
def test_count_fields_are_bounded_words(pid, decision, kind, field):
    assert counts.field(NOW, pid, decision, kind) == "15" + field


# --- the page, on and off ---------------------------------------------------------------------

@pytest.mark.parametrize("user, password", [("", ""), (USER, ""), ("", PASSWORD)])
def test_the_page_is_off_with_the_dashboard(redis_url, user, password):
    client = make_app(redis_url, DASHBOARD_USER=user, DASHBOARD_PASSWORD=password).test_client()
    for path in ("/", "/activity", "/activity?q=x", "/activity/run/1-0.0-0.0123456789abcdef",
                 "/activity/static/activity.css", "/static/activity.css"):
        resp = client.get(path, headers=basic())
        assert resp.status_code == 404, path
        assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize("headers", [{}, basic(password="wrong"), basic(user="admin")])
def test_the_page_needs_the_dashboard_login(client, conn, headers):
    audit.record(conn, entry())
    for path in ("/", "/activity", "/activity?q=feature", "/activity/static/activity.css", "/activity/run/x"):
        resp = client.get(path, headers=headers)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="tagsweeper"'
        assert "feature" not in resp.get_data(as_text=True).replace("?q=feature", "")


def page(client, path: str = "/") -> str:
    resp = client.get(path, headers=basic())
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "text/html"
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # nothing may run: default-src 'none'
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    return resp.get_data(as_text=True)


def cell(text: str, project: int, window: str, what: str) -> int:
    article = re.search(rf'<article class="project" id="project-{project}".*?</article>', text, re.S).group(0)
    return int(re.search(rf'data-window="{window}" data-count="{what}"[^>]*>(\d+)<', article).group(1))


def test_the_page_counts_what_the_trail_says(client, conn):
    now = time.time()
    for i in range(5):
        audit.record(conn, entry(time=now - 60, tag=f"t{i}"))
    audit.record(conn, entry(time=now - 3 * 86400, tag="older"))
    audit.record(conn, entry(time=now - 20 * 86400, tag="oldest"))
    audit.record(conn, entry(time=now - 30, tag="held", decision="kept", reason_kind="deployed",
                             reason="in use by environment review/feature-x (deployment #7)"))
    audit.record(conn, entry(time=now - 30, tag="latest", decision="kept", reason_kind="protected"))
    audit.record(conn, entry(time=now - 20, tag="boom", decision="failed", reason_kind="transient",
                             reason="GitLab answered 503"))
    text = page(client)
    assert (cell(text, 4711, "day", "deleted"), cell(text, 4711, "week", "deleted"),
            cell(text, 4711, "month", "deleted")) == (5, 6, 7)
    assert cell(text, 4711, "day", "kept-in-use") == 1
    assert cell(text, 4711, "month", "kept-protected") == 1
    assert cell(text, 4711, "day", "failed") == 1
    assert "Something is failing" in text and 'data-count="failed-day">1<' in text
    # The tag kept for an environment is listed as in use, with its reason.
    in_use = re.search(r'id="in-use".*?</table>', text, re.S).group(0)
    assert re.findall(r"<td><code>([^<]*)</code></td>", in_use) == ["feature/x", "held"]  # branch, tag
    assert "review/feature-x" in in_use
    # The chart has a bar per day; today's says how many.
    assert text.count('<rect class="bar') == summary.CHART_DAYS
    assert re.search(r"<title>\d{4}-\d\d-\d\d: 5 deleted</title>", text)


def test_a_run_opens_to_its_decisions(client, conn):
    now = time.time()
    audit.record(conn, entry(time=now - 5, job_id="cleanup-other", branch="feature/y", tag="y"))
    for tag, decision, kind in (("feature-x", "deleted", "owned"), ("abc12345", "kept", "deployed"),
                                ("latest", "kept", "protected")):
        audit.record(conn, entry(time=now, tag=tag, decision=decision, reason_kind=kind, reason=f"why {tag}"))
    text = page(client)
    row = re.search(r'<tr class="run" data-run="([^"]+)">(.*?)</tr>', text, re.S)  # the newest run first
    run_id, cells = row.groups()
    assert "feature/x" in cells and re.search(r'data-count="deleted">1<', cells)
    assert re.search(r'data-count="kept">2 ', cells)
    detail = page(client, f"/activity/run/{run_id}")
    assert re.findall(r'data-tag="([^"]*)" data-decision="([^"]*)"', detail) == [
        ("latest", "kept"), ("abc12345", "kept"), ("feature-x", "deleted")]
    assert "why abc12345" in detail and "in use" in detail and "feature-y" not in detail
    assert 'href="/rq/0/view/job/cleanup-4711-merge-1"' in detail


@pytest.mark.parametrize("path, status", [
    ("/activity/run/nonsense", 400),
    ("/activity/run/1-0.2-0.0123456789abcdef", 400),
    ("/activity/run/99-0.0-0.0123456789abcdef", 404),
    ("/activity?q=" + "x" * 201, 400),
    ("/activity?q=a%0Ab", 400),
    ("/?q=%00", 400),
    ("/activity?q=x&all=yes", 400),
    ("/activity/run/99-0.0-0.0123456789abcdef?at=nope", 400),
    ("/activity/nothing-here", 404),
])
def test_bad_input_is_a_clear_4xx(client, conn, path, status):
    audit.record(conn, entry())
    resp = client.get(path, headers=basic())
    assert resp.status_code == status
    if path.startswith("/activity/run/") or "q=" in path:
        body = resp.get_data(as_text=True)
        assert ("run id" in body or "no such run" in body or "search text" in body or "all must be" in body
                or "at must be" in body), body[:300]


def test_search_by_project_branch_or_tag(client, conn):
    now = time.time()
    audit.record(conn, entry(time=now - 10, project_id=9, project="acme/other", branch="main-fix", tag="fix-1",
                             job_id="cleanup-9"))
    audit.record(conn, entry(time=now, tag="feature-x"))
    audit.record(conn, entry(time=now, tag="v1.2.0", decision="kept", reason_kind="protected"))
    for q, tags in (("v1.2", ["v1.2.0"]), ("acme/other", ["fix-1"]), ("FEATURE/x", ["v1.2.0", "feature-x"]),
                    ("9", ["fix-1"]), ("nothing-like-it", [])):
        text = page(client, f"/activity?q={q}")
        assert re.findall(r'data-tag="([^"]*)"', text) == tags, q
        if tags:
            run_link = re.search(r'href="(/activity/run/[^"]+)"', text).group(1)
            detail = page(client, run_link)
            assert set(re.findall(r'data-tag="([^"]*)"', detail)) >= set(tags)
        else:
            assert "No decision in the audit trail names it" in text


def test_a_search_reads_the_newest_entries_unless_asked_for_all(client, conn):
    from hooks import activity

    now = time.time()
    audit.record(conn, entry(time=now - 100, tag="needle-old", job_id="cleanup-old"))
    for i in range(9):
        audit.record(conn, entry(time=now - 50 + i, tag=f"hay-{i}"))
    found = activity.search(conn, "needle", window=5)
    assert (found.hits, found.read, found.end) == ([], 5, False)
    found = activity.search(conn, "needle", window=None)
    assert [h["tag"] for h in found.hits] == ["needle-old"] and found.end and found.read == 10
    found = activity.search(conn, "hay", window=5)
    assert [h["tag"] for h in found.hits] == [f"hay-{i}" for i in range(8, 3, -1)]
    # The whole trail, from the page: all=1.
    text = page(client, "/activity?q=needle&all=1")
    assert re.findall(r'data-tag="([^"]*)"', text) == ["needle-old"] and "in the whole audit trail" in text


def test_names_from_deliveries_are_escaped_everywhere(client, conn):
    """Hostile text in every field an entry carries comes back only as text, on every page."""
    now = time.time()
    for i, name in enumerate(HOSTILE):
        audit.record(conn, entry(time=now - i, project=name, branch=name, tag=name, repository=name, reason=name,
                                 delivery=name, job_id=name, trigger=name, decision="kept", reason_kind="deployed"))
    text = page(client)
    runs = re.findall(r'href="(/activity/run/[^"]+)"', text)
    pages = [text, *(page(client, r) for r in runs),
             page(client, "/activity?q=" + requests.utils.quote(HOSTILE[0]))]
    assert len(runs) == len(HOSTILE)
    for body in pages:
        assert "<script" not in body and "<img" not in body and "<h1>owned" not in body
        assert "onmouseover='" not in body
    assert html.escape(HOSTILE[0]) in text and "{{7*7}}" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_what_waits_and_what_failed_link_into_rq_dashboard(client, conn, monkeypatch, redis_url):
    q = Queue(QUEUE, connection=conn)
    queue.schedule_recheck(q, {"project_id": 4711, "branch": "feature/held", "trigger": "merge",
                               "project_path": "acme/shop"}, project_id=4711, interval=3600, retries=0, intervals=())
    queue.enqueue(q, queue.CLEANUP_BRANCH, "cleanup-4711-merge-9",
                  kwargs={"project_id": 4711, "branch": "feature/later", "trigger": "merge"},
                  options=queue.cleanup_options(600, 0, ()), meta={"trigger": "merge"})
    queue.enqueue(q, "workers.jobs.retire_branch", "retire-4711-main-1",
                  kwargs={"project_id": 4711, "branch": "main"}, options=queue.Options(result_ttl=60, delay=900))
    # A job that really failed on a real worker, its error quoting secrets.
    monkeypatch.setenv("REDIS_URL", redis_url)
    leaky = f"{PASSWORD} glpat-AbCdEfGhIjKlMnOpQrSt"
    q.enqueue_call("workers.jobs.record_pipeline", kwargs={"project_id": 7, "ref": "main", "sha": leaky},
                   job_id="pipeline-7-bad", description="record pipeline of project 7 ref main")
    SimpleWorker([q], connection=conn).work(burst=True)
    text = page(client)
    waits = re.search(r'id="scheduled".*?</table>', text, re.S).group(0)
    rows = dict(re.findall(r'<tr class="wait"><td>([^<]*)</td>.*?href="/rq/0/view/job/([^"]+)"', waits, re.S))
    assert set(rows) == {"in-use re-check", "delayed cleanup", "retention pass"}
    assert rows["in-use re-check"].startswith("recheck-4711-")
    assert rows["delayed cleanup"] == "cleanup-4711-merge-9" and rows["retention pass"] == "retire-4711-main-1"
    assert "feature/held" in waits and "feature/later" in waits
    failed = re.search(r'id="failed-jobs".*?</table>', text, re.S).group(0)
    assert 'href="/rq/0/view/job/pipeline-7-bad"' in failed
    assert "sha must be 40 lower-case hex characters" in failed
    assert 'data-count="failed-jobs">1<' in text and "Something is failing" in text
    assert PASSWORD not in text and "glpat-AbCdEfGhIjKlMnOpQrSt" not in text and SECRET not in text
    assert 'data-count="workers">0<' in text  # the burst worker has left


def test_the_stylesheet_is_served_by_the_app(client):
    resp = client.get("/activity/static/activity.css", headers=basic())
    assert resp.status_code == 200 and resp.mimetype == "text/css"
    text = page(client)
    # Everything the page loads is the app's own: one stylesheet, no script, no remote URL.
    assert re.findall(r'<link [^>]*href="([^"]+)"', text) == ["/activity/static/activity.css"]
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_an_empty_trail_is_a_calm_page(client):
    text = page(client)
    assert "No decisions recorded in the last month." in text and "No run in the audit trail yet." in text
    assert "Nothing is kept for an environment" in text


# --- end to end: hostile branch names through gunicorn and a real worker ---------------------

@pytest.mark.e2e
def test_hostile_branch_names_delivered_and_cleaned_are_escaped_on_the_page(tmp_path, redis_url, gitlab_stack,
                                                                              gitlab):
    from tests.support.story import Story
    from workers.rules import ref_slug

    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "svc", redis_url, emu.url, emu.token, SWEEP_CRON="off", DASHBOARD_USER=USER,
                  DASHBOARD_PASSWORD=PASSWORD).start()
    try:
        story = Story(gitlab, svc)
        p = story.project
        p.add_branch("main")
        gone = set()
        for name in HOSTILE:
            p.add_branch(name, from_branch="main")
            sha = p.push(name)
            story.pipeline(sha, name, [ref_slug(name)], hook=False)
            report = story.deleted(name)
            assert report["summary"]["deleted"] == 3, report
            gone |= {ref_slug(name), sha, sha[:8]}
        story.assert_gone_exactly(gone)
        auth = (USER, PASSWORD)
        text = requests.get(svc.url + "/", auth=auth, timeout=10).text
        runs = re.findall(r'href="(/activity/run/[^"]+)"', text)
        assert len(runs) == len(HOSTILE)
        pages = [text] + [requests.get(svc.url + r, auth=auth, timeout=10).text for r in runs]
        pages.append(requests.get(svc.url + "/activity", params={"q": HOSTILE[1]}, auth=auth, timeout=10).text)
        for body in pages:
            assert "<script" not in body and "<img" not in body and "<h1>owned" not in body
        for name in HOSTILE:
            assert html.escape(name, quote=False).replace('"', "&#34;").replace("'", "&#39;") in text, name
        assert cell(text, p.id, "day", "deleted") == 3 * len(HOSTILE)
    finally:
        svc.stop()


def test_a_dead_redis_is_a_503_page_without_the_password():
    from tests.support.procs import free_port

    redis_password = "dead-redis-Pa55-activity"
    client = make_app(f"redis://:{redis_password}@127.0.0.1:{free_port()}/0").test_client()
    for path in ("/", "/activity?q=x", "/activity/run/1-0.0-0.0123456789abcdef"):
        resp = client.get(path, headers=basic())
        assert resp.status_code == 503, path
        body = resp.get_data(as_text=True)
        assert "queue unavailable (Redis)" in body and redis_password not in body


def test_a_search_hit_opens_its_own_retention_pass(client, conn):
    now = time.time()
    retire = {"job_id": "retire-4711-0123456789abcdef", "trigger": "superseded", "branch": "main", "delivery": None,
              "decision": "deleted", "reason_kind": "superseded"}
    for tag in ("old-1", "old-2"):
        audit.record(conn, entry(time=now - 3600, tag=tag, **retire))
    for tag in ("new-1", "new-2"):
        audit.record(conn, entry(time=now, tag=tag, **retire))
    text = page(client, "/activity?q=old-1")
    link = html.unescape(re.search(r'href="(/activity/run/[^"]+)"', text).group(1))
    assert "?at=" in link
    assert sorted(re.findall(r'data-tag="([^"]*)"', page(client, link))) == ["old-1", "old-2"]
    # The page lists the two passes apart.
    runs = re.findall(r'<tr class="run" data-run="([^"]+)">', page(client))
    assert len(runs) == 2
    assert sorted(re.findall(r'data-tag="([^"]*)"', page(client, f"/activity/run/{runs[0]}"))) == ["new-1", "new-2"]
