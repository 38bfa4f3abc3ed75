"""Prometheus metrics kept in Redis, so that every process adds to the same counters.

gunicorn runs several worker processes and the RQ worker is another (maybe on another
host): counters in process memory would each tell part of the story. Here each metric
family is one Redis hash, `tagsweeper:metrics:<family>`, whose fields are the series'
canonical label strings (`decision="deleted",reason_kind="owned"`) and whose values are
the counts (HINCRBY / HINCRBYFLOAT). A histogram keeps cumulative bucket counters, a sum
and a count in its family's hash, under fields prefixed `bucket|`, `sum|` and `count|`.

`render()` reads every family in one pipelined round trip and adds what is computed at
scrape time (queue depths from RQ's own keys, `tagsweeper_up`), in the Prometheus text
format 0.0.4. Label values come from small fixed sets (`reason_kind()`, `event_label()`,
`status_label()`): never a tag, branch or project name, never anything a secret is in.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import redis

from workers.common import keys

log = logging.getLogger("tagsweeper.metrics")

PREFIX = "tagsweeper_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    name: str  # without PREFIX
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def key(self) -> str:
        return keys.metric(self.name)


DELIVERIES = Family("deliveries_total", "counter", "Webhook deliveries answered, by event header and outcome.",
                    ("event", "outcome"))
CLEANUPS_ENQUEUED = Family("cleanups_enqueued_total", "counter", "Branch cleanups (and retention passes: superseded) enqueued, by trigger.",
                           ("trigger",))
TAGS = Family("tags_total", "counter",
              "Tag decisions of cleanups (one per tag and registry repository), by decision and kind of reason.",
              ("decision", "reason_kind"))
GITLAB_REQUESTS = Family("gitlab_requests_total", "counter",
                         "GitLab API requests made by jobs, by HTTP status or error.", ("status",))
REGISTRY_REQUESTS = Family("registry_requests_total", "counter",
                           "Registry v2 API requests made by cleanups, by HTTP status or error.", ("status",))
JOB_DURATION = Family("job_duration_seconds", "histogram", "How long job attempts took.", ("job",),
                      (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
JOBS = Family("jobs_total", "counter", "Job attempts, by job and outcome (a retried job counts each attempt).",
              ("job", "outcome"))
QUEUE_DEPTH = Family("queue_depth", "gauge", "Jobs in the RQ queue and its registries, read at scrape time.",
                     ("queue", "state"))
UP = Family("up", "gauge", "1 when the web process could read the metrics from Redis.", ())

STORED = (DELIVERIES, CLEANUPS_ENQUEUED, TAGS, GITLAB_REQUESTS, REGISTRY_REQUESTS, JOB_DURATION, JOBS)
REQUESTS = {"gitlab": GITLAB_REQUESTS, "registry": REGISTRY_REQUESTS}

# The events GitLab sends (X-Gitlab-Event); anything else, e.g. from an unauthenticated
# caller, is "other", so no one can grow the label set by sending made-up headers.
EVENTS = frozenset({
    "Push Hook", "Tag Push Hook", "Merge Request Hook", "Pipeline Hook", "Issue Hook",
    "Confidential Issue Hook", "Note Hook", "Confidential Note Hook", "Job Hook", "Wiki Page Hook",
    "Deployment Hook", "Release Hook", "Feature Flag Hook", "Member Hook", "Subgroup Hook",
    "Project Hook", "Emoji Hook", "Resource Access Token Hook", "Vulnerability Hook", "System Hook",
})
DELIVERY_OUTCOMES = frozenset({"enqueued", "duplicate", "ignored", "unauthorized", "too_large", "bad_request",
                               "unavailable"})
CLEANUP_TRIGGERS = frozenset({"merge", "branch_deleted", "manual", "superseded"})


# --- labels --------------------------------------------------------------------------

def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_string(family: Family, values: Mapping[str, Any]) -> str:
    """The canonical label string of one series: names sorted, values escaped."""
    if set(values) != set(family.labels):
        raise ValueError(f"{family.name} takes labels {family.labels}, got {tuple(values)}")
    return ",".join(f'{name}="{escape(str(values[name]))}"' for name in sorted(values))


def event_label(event: str | None) -> str:
    if not event:
        return "none"
    return event if event in EVENTS else "other"


def status_label(key: int | str) -> str:
    """An HTTP status, or the name of the error that stood in for one (ConnectionError, Timeout)."""
    text = str(key)
    return text if re.fullmatch(r"[1-5]\d\d|[A-Za-z][A-Za-z0-9_]{0,39}", text) else "other"


# The reason_kind label of a kept or failed decision, by its reason code (workers/rules.py Code):
# rewording a reason never changes its label. Deleted decisions are "owned", absent ones "absent".
REASON_KINDS = {
    "invalid_tag": "invalid_tag",
    "protected": "protected",
    "default_branch_tag": "default_branch",
    "default_branch_head": "default_branch",
    "target_branch_head": "live_head",
    "live_branch_tag": "live_branch",
    "live_branch_head": "live_head",
    "git_tag_image": "git_tag",
    "git_tag_commit": "git_tag",
    "git_tag_build": "git_tag",
    "fast_forward": "fast_forward",
    "open_mr_commit": "open_mr",
    "open_mr_source": "open_mr",
    "sha_like": "sha_like",
    "other_ref": "other_ref",
    "on_live_ref": "other",
    "not_checked": "other",
    "exists_again": "other",
    "deployed": "deployed",
    "deployed_ref": "deployed",
    "rollback_target": "deployed",
    "no_known_owner": "other",
    "short_sha_unresolved": "other",
    "short_sha_ambiguous": "other",
    "unknown_commit": "other",
    "owned": "owned",
    "dead_branch_tag": "owned",
    "dead_short_sha": "owned",
    "built_on_dead": "owned",
    "on_no_ref": "owned",
    "superseded": "superseded",
    "newest_commits": "retention",
    "newest_success": "retention",
    "too_young": "retention",
    "absent": "absent",
    "changed": "changed",
    "forbidden": "gitlab_403",
    "transient": "transient",
    "error": "error",
    "other": "other",
}
REASON_KIND_LABELS = frozenset(REASON_KINDS.values()) | {"skipped"}


def reason_kind(decision: str, code: str | None) -> str:
    """A short word for why a tag went the way it did (from its reason code): bounded, unlike the reason."""
    if decision in ("deleted", "would_delete"):
        return "superseded" if code == "superseded" else "owned"  # retention's, apart from a dead branch's
    if decision in ("absent", "skipped"):
        return decision
    if decision == "failed":
        return "transient" if code == "transient" else "error"
    if decision == "kept":
        return REASON_KINDS.get(code or "", "other")
    return "other"


# --- writing ---------------------------------------------------------------------------

def incr(pipe: Any, family: Family, amount: int = 1, **labels: Any) -> None:
    """Queue one counter increment on a pipeline (or send it, on a plain connection)."""
    pipe.hincrby(family.key, label_string(family, labels), amount)


def observe(pipe: Any, family: Family, value: float, **labels: Any) -> None:
    """Queue one histogram observation: every bucket it falls in, the sum and the count."""
    series = label_string(family, labels)
    for bound in family.buckets:
        if value <= bound:
            pipe.hincrby(family.key, f"bucket|{series}|{_number(bound)}", 1)
    pipe.hincrby(family.key, f"bucket|{series}|+Inf", 1)
    pipe.hincrbyfloat(family.key, f"sum|{series}", value)
    pipe.hincrby(family.key, f"count|{series}", 1)


def count_requests(pipe: Any, service: str, calls: Mapping[int | str, int]) -> None:
    """Queue the increments for a client's `calls` dict (status or error name -> count)."""
    family = REQUESTS[service]
    totals: dict[str, int] = {}
    for key, n in calls.items():
        label = status_label(key)
        totals[label] = totals.get(label, 0) + int(n)
    for label, n in totals.items():
        if n:
            incr(pipe, family, n, status=label)


def delivery_series(event: str | None, outcome: str) -> str:
    """The DELIVERIES series of one answered delivery (the intake counts accepted and duplicate ones)."""
    return label_string(DELIVERIES, {"event": event_label(event),
                                     "outcome": outcome if outcome in DELIVERY_OUTCOMES else "other"})


def cleanup_series(trigger: str) -> str:
    return label_string(CLEANUPS_ENQUEUED, {"trigger": trigger if trigger in CLEANUP_TRIGGERS else "other"})


def count_delivery(conn: redis.Redis, *, event: str | None, outcome: str, trigger: str | None = None) -> None:
    """Count one answered delivery, and the cleanup it enqueued, in one round trip.

    Never raises: a count lost to a Redis hiccup must not turn an answered delivery into an error.
    """
    pipe = conn.pipeline(transaction=False)
    pipe.hincrby(DELIVERIES.key, delivery_series(event, outcome), 1)
    if trigger:
        pipe.hincrby(CLEANUPS_ENQUEUED.key, cleanup_series(trigger), 1)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("delivery not counted", extra={"error": type(exc).__name__})


# --- jobs --------------------------------------------------------------------------------

class Tally:
    """What one job attempt did, written in a single pipeline when it ends."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[int | str, int]] = {}

    def add_requests(self, service: str, calls: Mapping[int | str, int] | None) -> None:
        mine = self.calls.setdefault(service, {})
        for key, n in (calls or {}).items():
            mine[key] = mine.get(key, 0) + n


_tally: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("tagsweeper_tally", default=None)


def tally() -> Tally:
    """The running job's tally; outside a job (the CLI) a throwaway one."""
    return _tally.get() or Tally()


def observed(job: str, outcomes: Mapping[type[BaseException], str] | None = None,
             redis_url: Callable[[], str] | None = None) -> Callable:
    """Decorate a job function: count its attempt by outcome, time it, write its tally.

    Outcomes: "ok", "skipped" (a report with `skipped` set), the name `outcomes` gives the
    exception raised, else "failed". Metrics never change what the job returns or raises.
    """
    outcomes = dict(outcomes or {})

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            mine = Tally()
            token = _tally.set(mine)
            outcome = "failed"
            try:
                result = func(*args, **kwargs)
                outcome = "skipped" if isinstance(result, dict) and result.get("skipped") else "ok"
                return result
            except BaseException as exc:
                outcome = next((name for cls, name in outcomes.items() if isinstance(exc, cls)), "failed")
                raise
            finally:
                _tally.reset(token)
                _write_job(job, outcome, time.monotonic() - started, mine, redis_url)
        return wrapper
    return decorate


def _write_job(job: str, outcome: str, seconds: float, mine: Tally, redis_url: Callable[[], str] | None) -> None:
    try:
        if redis_url is None:
            from workers.common.settings import Settings
            url = Settings.from_env().redis_url
        else:
            url = redis_url()
        conn = redis.Redis.from_url(url)
        try:
            pipe = conn.pipeline(transaction=False)
            incr(pipe, JOBS, job=job, outcome=outcome)
            observe(pipe, JOB_DURATION, seconds, job=job)
            for service, calls in mine.calls.items():
                count_requests(pipe, service, calls)
            pipe.execute()
        finally:
            conn.close()
    except Exception as exc:  # a bad setting or Redis down: the job's own outcome says it already
        log.warning("job metrics not written", extra={"job": job, "error": type(exc).__name__})


# --- reading -------------------------------------------------------------------------------

def queue_keys(queue: str) -> dict[str, tuple[str, bool]]:
    """The keys of the queue's states: state -> (key, is a sorted set scored by expiry)."""
    from rq import Queue
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    return {
        "queued": (Queue.redis_queue_namespace_prefix + queue, False),
        "scheduled": (ScheduledJobRegistry.key_template.format(queue), False),
        "started": (StartedJobRegistry.key_template.format(queue), True),
        "failed": (FailedJobRegistry.key_template.format(queue), True),
    }


def read(conn: redis.Redis, queue: str) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Every stored family's fields, and the queue's depth by state, in one round trip."""
    pipe = conn.pipeline(transaction=False)
    for family in STORED:
        pipe.hgetall(family.key)
    keys = queue_keys(queue)
    now = time.time()
    for state, (key, by_expiry) in keys.items():
        if state == "queued":
            pipe.llen(key)
        elif by_expiry:
            pipe.zcount(key, now, "+inf")  # entries past their expiry are gone, RQ just hasn't swept them
        else:
            pipe.zcard(key)
    results = pipe.execute()
    stored = {f.name: {_text(k): _text(v) for k, v in r.items()}
              for f, r in zip(STORED, results[:len(STORED)])}
    depth = dict(zip(keys, (int(n) for n in results[len(STORED):])))
    return stored, depth


def render(conn: redis.Redis, queue: str) -> str:
    """The Prometheus text exposition of everything. Raises redis.RedisError when Redis is unreachable."""
    stored, depth = read(conn, queue)
    lines: list[str] = []
    for family in STORED:
        _header(lines, family)
        fields = stored[family.name]
        if family.kind == "histogram":
            _render_histogram(lines, family, fields)
        else:
            for series in sorted(fields):
                lines.append(f"{PREFIX}{family.name}{{{series}}} {_number(fields[series])}")
    _header(lines, QUEUE_DEPTH)
    for state, n in depth.items():
        lines.append(f'{PREFIX}{QUEUE_DEPTH.name}{{queue="{escape(queue)}",state="{state}"}} {n}')
    _header(lines, UP)
    lines.append(f"{PREFIX}{UP.name} 1")
    return "\n".join(lines) + "\n"


def _render_histogram(lines: list[str], family: Family, fields: Mapping[str, str]) -> None:
    buckets: dict[str, list[tuple[float, str, str]]] = {}
    for field, value in fields.items():
        part, _, rest = field.partition("|")
        if part == "bucket":
            series, _, le = rest.rpartition("|")
            bound = math.inf if le == "+Inf" else float(le)
            buckets.setdefault(series, []).append((bound, le, value))
    name = PREFIX + family.name
    for series in sorted(buckets):
        for _, le, value in sorted(buckets[series]):
            lines.append(f'{name}_bucket{{{series},le="{le}"}} {_number(value)}')
        lines.append(f"{name}_sum{{{series}}} {_number(fields.get(f'sum|{series}', '0'))}")
        lines.append(f"{name}_count{{{series}}} {_number(fields.get(f'count|{series}', '0'))}")


def _header(lines: list[str], family: Family) -> None:
    lines.append(f"# HELP {PREFIX}{family.name} {family.help}")
    lines.append(f"# TYPE {PREFIX}{family.name} {family.kind}")


def _number(value: float | str) -> str:
    number = float(value)
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return str(int(number)) if number.is_integer() else repr(number)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse(text: str) -> dict[str, float]:
    """Samples of an exposition: `name{labels}` -> value (for tests and ad-hoc checks)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = [f'{k}="{escape(v)}"' for k, v in labels.items()]
    result = 0.0
    for series, value in samples.items():
        base, _, rest = series.partition("{")
        if base == name and all(w in rest.rstrip("}").split(",") for w in wanted):
            result += value
    return result

