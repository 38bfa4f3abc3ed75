"""The activity page: what tagsweeper did, what waits and what fails, for people, at GET / and /activity.

Served with the dashboard (hooks/dashboard.py: same basic auth, same secret scrubbing, 404 when it
is off) as server-rendered HTML: Jinja templates (autoescaped: branch and tag names come from
deliveries) and one stylesheet served by the app, no JavaScript. A Content-Security-Policy that
allows nothing but the app's own stylesheet backs the escaping up.

It reads Redis only, never GitLab, in a bounded number of round trips whatever the trail's size:

- the windows and the chart: the hourly counts kept beside the audit trail (workers.common.activity);
- recent runs and the tags in use: the newest RECENT_ENTRIES entries of the trail (XREVRANGE);
- what waits and fails: RQ's scheduled and failed registries (at most LISTED jobs each fetched),
  the live workers, and GitLab's and the registry's answers from the metrics hashes.

A run's page reads the stream between the run's first and last entry; a search reads the newest
SEARCH_WINDOW entries (the whole trail with ?all=1) until it has MAX_HITS matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from flask import Blueprint, Flask, render_template, request
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from hooks import activity_summary as summary
from hooks.intake import get_intake
from hooks.metrics_view import workers_alive
from workers.common import activity as counts
from workers.common import audit, metrics, queue
from workers.common.audit import scrub

RECENT_ENTRIES = 2000  # newest audit entries read for the recent runs and the tags in use
RECENT_RUNS = 30
LISTED = 50  # scheduled or failed jobs fetched and listed (the counts are exact)
MAX_HITS = 200
SEARCH_WINDOW = 20_000  # newest entries a search reads, unless asked for the whole trail (?all=1)
SCAN_CHUNK = 2000
RUN_LIMIT = 5000  # decisions shown on a run's page
PATHS = ("/", "/activity")  # plus everything under /activity/

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")

bp = Blueprint("activity", __name__, template_folder="templates", static_folder="activity_static",
               static_url_path="/activity/static")


def init_app(app: Flask) -> None:
    """Mount the page (hooks/dashboard.py calls this when the dashboard is on)."""
    app.register_blueprint(bp)
    app.jinja_env.filters["when"] = when
    app.jinja_env.filters["ago"] = ago


def guarded(path: str) -> bool:
    return path in PATHS or path.startswith("/activity/")


@bp.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# --- views -------------------------------------------------------------------------------------

@bp.get("/")
@bp.get("/activity")
def overview():
    """The whole picture; with ?q= a search of the trail."""
    try:
        text = summary.search_terms(request.args.get("q"))
        whole = _flag(request.args.get("all"), "all")
    except ValueError as exc:
        return _page_error(400, str(exc))
    conn, queue_name = _redis()
    now = time.time()
    try:
        if text is not None:
            found = search(conn, text, window=None if whole else SEARCH_WINDOW)
            return render_template("activity_search.html", q=text, found=found, max_hits=MAX_HITS,
                                   window=SEARCH_WINDOW, whole=whole, now=now)
        rows, paths = counts.read(conn, now)
        projects = summary.project_windows(rows, paths, now)
        recent = _recent(conn, RECENT_ENTRIES)
        runs = summary.group_runs(recent, window_full=len(recent) >= RECENT_ENTRIES)[:RECENT_RUNS]
        waits = waiting(conn, queue_name)
        problems = failing(conn, queue_name)
    except redis.RedisError as exc:
        return _page_error(503, get_intake().describe_error(exc))
    held = summary.in_use(recent)
    charts = {p.project_id: summary.bars(p.per_day) for p in projects}
    return render_template(
        "activity.html", now=now, projects=projects, charts=charts, windows=summary.WINDOWS,
        all_projects={name: summary.total(projects, name) for name, _ in summary.WINDOWS},
        classes=summary.CLASSES, class_help=summary.CLASS_HELP, runs=runs, held=held,
        waits=waits, problems=problems, recent_read=len(recent),
        recent_full=len(recent) >= RECENT_ENTRIES, chart_days=summary.CHART_DAYS)


@bp.get("/activity/run/<run_id>")
def run(run_id: str):
    """One run's decisions: tag, repository, decision, reason. The id bounds the read; ?at= (an entry
    of the run, from a search) picks the run when one key made several (retention passes)."""
    try:
        newest, oldest, digest = summary.parse_run_id(run_id)
        anchor = summary.check_stream_id(request.args["at"]) if "at" in request.args else newest
    except ValueError as exc:
        return _page_error(400, str(exc))
    conn, _ = _redis()
    try:
        entries = _range(conn, newest, oldest, digest)
    except redis.RedisError as exc:
        return _page_error(503, get_intake().describe_error(exc))
    found = summary.pick_run(entries, anchor, digest)
    if found is None:
        return _page_error(404, "no such run in the audit trail (it may have been trimmed: the trail keeps "
                                "AUDIT_MAX_ENTRIES entries)")
    return render_template("activity_run.html", run=found, tally=found.tally, classes=summary.CLASSES,
                           reason_class=summary.reason_class, now=time.time(),
                           shown=found.entries[:RUN_LIMIT], run_limit=RUN_LIMIT)


def _flag(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    if raw in ("0", "1"):
        return raw == "1"
    raise ValueError(f"{name} must be 1 or 0")


def _page_error(status: int, message: str):
    return render_template("activity_error.html", status=status, message=message), status


def _redis() -> tuple[redis.Redis, str]:
    intake = get_intake()
    return intake.connection, intake.queue_name


# --- reading the trail ---------------------------------------------------------------------------

def _decode(entry_id: bytes | str, raw: dict) -> dict[str, Any]:
    """An audit entry as the templates use it: every FIELD (None when unset), times as floats."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    entry = {name: fields.get(name) for name in audit.FIELDS}
    entry["id"] = _text(entry_id)
    entry["time"] = _float(entry["time"])
    entry["dry_run"] = entry["dry_run"] == "true"
    return entry


def _recent(conn: redis.Redis, limit: int) -> list[dict]:
    return [_decode(i, raw) for i, raw in conn.xrevrange(audit.STREAM, max="+", min="-", count=limit)]


def _range(conn: redis.Redis, newest: str, oldest: str, digest: str) -> list[dict]:
    """The entries of one run key between two stream ids, newest first, read in chunks."""
    found: list[dict] = []
    highest = newest
    hashes: dict[tuple, str] = {}
    while True:
        batch = conn.xrevrange(audit.STREAM, max=highest, min=oldest, count=SCAN_CHUNK)
        for entry_id, raw in batch:
            key = tuple(_text(raw.get(name, b"")) for name in (b"job_id", b"delivery", b"project_id",
                                                                  b"branch", b"trigger"))
            if key not in hashes:
                hashes[key] = summary.key_hash(summary.run_key(dict(zip(
                    ("job_id", "delivery", "project_id", "branch", "trigger"), key))))
            if hashes[key] == digest:
                found.append(_decode(entry_id, raw))
        if len(batch) < SCAN_CHUNK:
            return found
        highest = "(" + _text(batch[-1][0])


@dataclass
class Found:
    hits: list[dict]  # newest first, at most MAX_HITS
    runs: list[tuple[str, str, list[dict]]]  # (run id, its newest hit's id, its hits), by each run's newest hit
    read: int  # entries read
    end: bool  # the oldest entry of the trail was read
    full: bool  # stopped at MAX_HITS


def search(conn: redis.Redis, text: str, window: int | None = SEARCH_WINDOW) -> Found:
    """Entries whose project, branch or tag holds `text`, among the newest `window` entries (None: all).

    The scan looks at raw bytes and decodes only the hits. Each run key's newest and oldest entry
    seen are kept, so a hit links to its whole run (a run cut by the window links a few hours lower)."""
    needle = text.casefold()
    ascii_needle = needle.encode() if needle.isascii() else None
    pid_text = text.encode() if text.isdigit() else None
    hits: list[dict] = []
    extent: dict[tuple, list[bytes]] = {}  # raw run key -> [newest id, oldest id]
    highest, read, end = "+", 0, False
    while len(hits) < MAX_HITS and (window is None or read < window):
        count = SCAN_CHUNK if window is None else min(SCAN_CHUNK, window - read)
        batch = conn.xrevrange(audit.STREAM, max=highest, min="-", count=count)
        read += len(batch)
        for entry_id, raw in batch:
            get = raw.get
            ident = get(b"job_id") or get(b"delivery") or b""
            key = (ident, get(b"project_id"), get(b"branch"), get(b"trigger"))
            seen = extent.get(key)
            if seen is None:
                extent[key] = [entry_id, entry_id]
            else:
                seen[1] = entry_id
            if len(hits) >= MAX_HITS:
                continue
            if ascii_needle is not None:
                hit = (ascii_needle in (get(b"tag") or b"").lower() or ascii_needle in (get(b"branch") or b"").lower()
                       or ascii_needle in (get(b"project") or b"").lower() or (pid_text and get(b"project_id") == pid_text))
            else:
                hit = summary.matches({"project": _text(get(b"project")), "branch": _text(get(b"branch")),
                                       "tag": _text(get(b"tag")), "project_id": _text(get(b"project_id"))}, text)
            if hit:
                entry = _decode(entry_id, raw)
                entry["run_key"] = key
                hits.append(entry)
        if len(batch) < count:
            end = True
            break
        highest = "(" + _text(batch[-1][0])
    groups: dict[tuple, list[dict]] = {}
    for e in hits:
        groups.setdefault(e.pop("run_key"), []).append(e)
    runs = []
    for key, mine in groups.items():
        newest, oldest = (_text(i) for i in extent[key])
        digest = summary.key_hash(summary.run_key(dict(zip(("job_id", "project_id", "branch", "trigger"),
                                                           (_text(k) for k in key)))))
        runs.append((f"{newest}.{oldest if end else summary.floor_id(oldest)}.{digest}", mine[0]["id"], mine))
    return Found(hits, runs, read, end, len(hits) >= MAX_HITS)


# --- RQ: what waits, what fails ----------------------------------------------------------------

@dataclass
class Waiting:
    job_id: str
    what: str  # "in-use re-check", "delayed cleanup", "retention pass", or the job's function
    project: str
    branch: str | None
    trigger: str | None
    due: float | None
    description: str | None


def waiting(conn: redis.Redis, queue_name: str) -> dict[str, Any]:
    """Scheduled jobs by kind (the first LISTED, soonest first), with the exact total."""
    registry = ScheduledJobRegistry(queue_name, connection=conn)
    pipe = conn.pipeline(transaction=False)
    pipe.zrange(registry.key, 0, LISTED - 1, withscores=True)
    pipe.zcard(registry.key)
    pipe.zcount(StartedJobRegistry(queue_name, connection=conn).key, time.time(), "+inf")
    pipe.llen(Queue.redis_queue_namespace_prefix + queue_name)
    listed, total_scheduled, running, queued = pipe.execute()
    ids = [_text(i) for i, _ in listed]
    due = {_text(i): float(score) for i, score in listed}
    items = []
    for job in Job.fetch_many(ids, connection=conn):
        if job is None:
            continue  # ran or expired between the two reads
        kwargs = _kwargs(job)
        meta = job.meta or {}
        func = job.func_name or ""
        if func == queue.CLEANUP_BRANCH:
            what = "in-use re-check" if meta.get("trigger") == "recheck" else "delayed cleanup"
        elif func == queue.RETIRE_BRANCH or job.id.startswith("retire-"):
            what = "retention pass"
        else:
            what = func.rsplit(".", 1)[-1].replace("_", " ")
        project = kwargs.get("project_path") or kwargs.get("project") or kwargs.get("project_id")
        items.append(Waiting(job.id, what, str(project if project is not None else "?"), kwargs.get("branch"),
                             meta.get("trigger") or kwargs.get("trigger"), due.get(job.id), job.description))
    return {"items": items, "scheduled": int(total_scheduled), "running": int(running), "queued": int(queued)}


@dataclass
class Failed:
    job_id: str
    description: str | None
    ended: float | None
    error: str


def failing(conn: redis.Redis, queue_name: str) -> dict[str, Any]:
    """Failed jobs (the LISTED newest, with the last line of their error), live workers, and the
    error answers GitLab and the registry gave jobs (since the counters began)."""
    registry = FailedJobRegistry(queue_name, connection=conn)
    pipe = conn.pipeline(transaction=False)
    pipe.zrevrange(registry.key, 0, LISTED - 1)
    pipe.zcard(registry.key)
    pipe.hgetall(metrics.GITLAB_REQUESTS.key)
    pipe.hgetall(metrics.REGISTRY_REQUESTS.key)
    ids, total_failed, gitlab_calls, registry_calls = pipe.execute()
    failed = []
    for job in Job.fetch_many([_text(i) for i in ids], connection=conn):
        if job is None:
            continue
        result = job.latest_result()
        text = (result.exc_string if result is not None and result.exc_string else "") or ""
        last = next((line.strip() for line in reversed(text.strip().splitlines()) if line.strip()), "")
        ended = job.ended_at.replace(tzinfo=timezone.utc).timestamp() if job.ended_at else None
        failed.append(Failed(job.id, job.description, ended, scrub(last)[:300]))
    workers = workers_alive(conn, queue_name)
    return {"failed": failed, "failed_total": int(total_failed), "workers": workers,
            "gitlab": _errors(gitlab_calls), "registry": _errors(registry_calls)}


def _errors(calls: dict) -> dict[str, int]:
    """429, 5xx and connection errors out of a requests family's series."""
    out = {"429": 0, "5xx": 0, "errors": 0}
    for series, value in calls.items():
        status = _text(series).partition('status="')[2].rstrip('"')
        n = int(float(value))
        if status == "429":
            out["429"] += n
        elif len(status) == 3 and status.startswith("5") and status.isdigit():
            out["5xx"] += n
        elif status and not status.isdigit():
            out["errors"] += n
    return out


def _kwargs(job: Job) -> dict:
    try:
        return dict(job.kwargs or {})
    except Exception:  # a job written by another version: list it without its arguments
        return {}


# --- formatting ---------------------------------------------------------------------------------

def when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(seconds: float | None, now: float | None = None) -> str:
    """"3 min ago" / "in 5 min": how far from now, in the largest unit that fits."""
    if not seconds:
        return ""
    delta = (time.time() if now is None else now) - seconds
    future = delta < 0
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            text = f"{int(delta // size)} {unit}"
            break
    else:
        text = f"{int(delta)} s"
    return f"in {text}" if future else f"{text} ago"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

