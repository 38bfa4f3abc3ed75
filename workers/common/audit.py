"""The audit trail: every tag decision and every skipped cleanup, in a bounded Redis stream.

Entries are appended to the stream `tagsweeper:audit` with `XADD MAXLEN ~ AUDIT_MAX_ENTRIES`
(default 100000), so the trail never outgrows Redis: "~" lets Redis trim whole stream nodes,
which keeps at most one node (100 entries by default) beyond the bound. A stream entry's id
is the time Redis stored it, in milliseconds, so "since" is a range read, not a scan.

`record()` and `read()` are the API (the dashboard and `tagsweeper status` read through it);
`attach()` makes a cleanup's Report write every decision here, together with the
`tags_total` counter of workers/common/metrics.py and the hourly counts of
workers/common/activity.py (the activity page's), in one round trip per decision.
`tagsweeper audit` (workers/cli/audit.py) prints the trail.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Iterable, Mapping

import redis

from workers.common import activity, metrics
from workers.common import keys
from workers.common import settings as config
from workers.common.projects import parse_project

log = logging.getLogger("tagsweeper.audit")

STREAM = keys.AUDIT
DEFAULT_MAX_ENTRIES = config.DEFAULT_AUDIT_MAX_ENTRIES
MAX_VALUE_CHARS = 1000  # a reason is a sentence or an error message; bound what one entry can cost

# The fields of an entry, in the order people read them; read() returns every one (None when unset).
FIELDS = ("time", "project_id", "project", "branch", "trigger", "delivery", "job_id", "dry_run",
          "repository", "tag", "digest", "decision", "reason", "reason_kind")

# Credentials that could ride along in an error message: registry JWTs, GitLab tokens, bearer headers.
_CREDENTIALS = re.compile(
    r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|\bgl(?:pat|dt|rt|ptt|oas|cbt|soat|ffct|imt|agent)-[A-Za-z0-9_-]{8,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
)


# Names, not prose: only known secrets are blanked in them (a tag may look like anything).
_IDENTIFIERS = frozenset({"project", "branch", "repository", "tag", "digest", "delivery", "job_id"})


def scrub(text: str, secrets: Iterable[str] = (), *, patterns: bool = True) -> str:
    """The text with known secrets, and (with `patterns`) anything shaped like a credential, as ***."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _CREDENTIALS.sub("***", text) if patterns else text


def _encode(entry: Mapping[str, Any], secrets: Iterable[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in entry.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = scrub(str(value), secrets, patterns=name not in _IDENTIFIERS)[:MAX_VALUE_CHARS]
        fields[str(name)] = text
    return fields


def _decode(entry_id: bytes | str, raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    entry: dict[str, Any] = {"id": _text(entry_id)}
    for name in FIELDS:
        entry[name] = fields.pop(name, None)
    entry.update(fields)  # fields a newer writer added
    if entry["time"] is not None:
        entry["time"] = float(entry["time"])
    if entry["project_id"] is not None and entry["project_id"].isdigit():
        entry["project_id"] = int(entry["project_id"])
    if entry["dry_run"] is not None:
        entry["dry_run"] = entry["dry_run"] == "true"
    return entry


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _add(pipe: Any, entry: Mapping[str, Any], secrets: Iterable[str], limit: int) -> None:
    entry = dict(entry)
    entry.setdefault("time", time.time())
    entry.setdefault("reason_kind", metrics.reason_kind(entry.get("decision") or "", entry.get("code")))
    pipe.xadd(STREAM, _encode(entry, secrets), maxlen=limit, approximate=True)
    activity.count(pipe, entry)  # the activity page's hourly counts, in the same round trip


def record(conn: redis.Redis, entry: dict, *, secrets: Iterable[str] = (), max_entries: int | None = None) -> None:
    """Append one entry (the FIELDS; None values are left out) to the trail.

    `time` defaults to now and `reason_kind` to the one metrics derives from the decision and its `code`.
    Known `secrets`, and anything shaped like a token, are replaced by *** first.
    """
    limit = max_entries if max_entries is not None else config.audit_max_entries()
    pipe = conn.pipeline(transaction=False)
    _add(pipe, entry, secrets, limit)
    pipe.execute()


def read(conn: redis.Redis, *, project: int | str | None = None, since: float | None = None,
         limit: int = 100) -> list[dict]:
    """Entries newest first, at most `limit`: of `project` (its id or its path) and since unix time `since`.

    Each entry has every name of FIELDS (None when unset) and `id`, the stream entry's id.
    """
    if limit <= 0:
        return []
    lowest = f"{max(0, int(since * 1000))}-0" if since is not None else "-"
    wanted = _matcher(project)
    chunk = limit if wanted is None else max(limit, 500)  # filtering: read ahead in bigger steps
    highest = "+"
    found: list[dict] = []
    while True:
        batch = conn.xrevrange(STREAM, max=highest, min=lowest, count=chunk)
        for entry_id, raw in batch:
            entry = _decode(entry_id, raw)
            if wanted is None or wanted(entry):
                found.append(entry)
                if len(found) >= limit:
                    return found
        if len(batch) < chunk:
            return found
        highest = "(" + _text(batch[-1][0])  # exclusive: continue below the last one read


def _matcher(project: int | str | None):
    if project is None:
        return None
    try:
        wanted = parse_project(project)
    except ValueError:
        return None  # blank: every project
    if isinstance(wanted, int):
        return lambda e: e["project_id"] == wanted
    wanted_path = wanted.casefold()
    return lambda e: (e["project"] or "").casefold() == wanted_path


# --- the cleanup's sink ----------------------------------------------------------------------

class Sink:
    """Called by a Report with each decision: the audit entry and the tags_total count, one round trip."""

    def __init__(self, conn: redis.Redis, *, job_id: str | None = None, secrets: Iterable[str] = (),
                 max_entries: int = DEFAULT_MAX_ENTRIES):
        self.conn = conn
        self.job_id = job_id
        self.secrets = tuple(s for s in secrets if s)
        self.max_entries = max_entries

    def __call__(self, event: dict[str, Any]) -> None:
        entry = {**event, "job_id": self.job_id,
                 "reason_kind": metrics.reason_kind(event["decision"], event.get("code"))}
        pipe = self.conn.pipeline(transaction=False)
        _add(pipe, entry, self.secrets, self.max_entries)
        metrics.incr(pipe, metrics.TAGS, decision=entry["decision"], reason_kind=entry["reason_kind"])
        self._send(pipe, entry)

    def skipped(self, report: Any) -> None:
        """Audit a cleanup that looked again and decided to touch nothing."""
        entry = {"time": time.time(), **report.context(), "job_id": self.job_id, "decision": "skipped",
                 "tag": None, "repository": None, "reason": report.skipped, "reason_kind": "skipped"}
        pipe = self.conn.pipeline(transaction=False)
        _add(pipe, entry, self.secrets, self.max_entries)
        self._send(pipe, entry)

    def _send(self, pipe: Any, entry: dict[str, Any]) -> None:
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # The deletion happened either way: the decision log line and the report still tell it.
            log.warning("audit entry not written", extra={"decision": entry.get("decision"),
                                                          "error": type(exc).__name__})


def attach(report: Any, conn: redis.Redis, settings: Any) -> Sink:
    """Make `report` audit and count every decision; return the sink (for `skipped`)."""
    from rq import get_current_job

    job = get_current_job()
    sink = Sink(conn, job_id=job.id if job is not None else None, secrets=(settings.gitlab_token,),
                max_entries=settings.audit_max_entries)
    report.sinks.append(sink)
    return sink
