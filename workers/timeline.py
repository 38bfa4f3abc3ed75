"""Reading a GitLab list into a Redis copy by time: the incremental sync GitLab's records share.

GitLab's pipelines (workers/pipelines.py) and deployments (workers/deployments.py) are both
copied into Redis and brought up to date before every decision. Both lists filter and order
by `updated_at`, so both are read the same way, here: the first sync reads the whole list
(oldest first), each later one only the items updated since the previous read, less
`OVERLAP` for rows GitLab's database made visible late. An item read twice is written twice,
which the copies make harmless; a sync that fails half-way leaves the cursor where it was
and is simply repeated. The cursor only moves when a sync finished, so a copy is never
silently partial.

Pages are walked by time, not by offset: each request asks for the oldest items updated
after the last one read, so an item deleted or updated meanwhile cannot shift another out
of the page it was on. An item updated while we read moves to the end and is read again
there; more items sharing one timestamp than fit in a page are read by offset within that
instant.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

import redis

log = logging.getLogger("tagsweeper.timeline")

OVERLAP = 600  # seconds of items read again at every sync: rows committed late still show up
PAGE = 100

# The cursor only moves forward, whichever of two concurrent syncs finishes last.
_ADVANCE = """
local old = tonumber(redis.call('HGET', KEYS[1], 'cursor'))
local new = tonumber(ARGV[1])
if new and (not old or new > old) then redis.call('HSET', KEYS[1], 'cursor', ARGV[1]) end
redis.call('HSET', KEYS[1], 'complete', '1')
redis.call('HINCRBY', KEYS[1], 'read', ARGV[2])
return 1
"""


# Lua for the copies' scripts: add `value` to the newline-separated list in hash `key`'s `field`,
# unless it is there already.
LUA_ADD_LINE = """
local function add_line(key, field, value)
  local old = redis.call('HGET', key, field)
  if not old then redis.call('HSET', key, field, value) return end
  for v in string.gmatch(old, '[^\\n]+') do if v == value then return end end
  redis.call('HSET', key, field, old .. '\\n' .. value)
end
"""


def parse_time(value: object) -> float | None:
    """GitLab's ISO 8601 timestamps ("2024-01-01T00:00:00.000Z") as unix seconds; None if malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_time(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def sync(conn: redis.Redis, state_key: str, fetch: Callable[[dict], list],
         write: Callable[[list[dict]], None], *, what: str, project_id: int) -> int:
    """Read every item updated since the last sync recorded in `state_key` (all of them the
    first time) and hand each page's new items to `write`; return how many were read.

    `fetch(params)` is one page of the GitLab list with `params` (`order_by`, `sort`,
    `per_page`, `page`, `updated_after`); it raises GitLabError like any call, and then the
    cursor stays where it was. Items without an integer `id` are skipped (and logged, naming
    them as `what`); an item seen twice in one sync is handed over once."""
    cursor = conn.hget(state_key, "cursor")
    after = float(cursor) - OVERLAP if cursor is not None else None
    newest: float | None = None
    seen: set[int] = set()
    read, offset = 0, 1
    while True:
        params: dict = {"order_by": "updated_at", "sort": "asc", "per_page": PAGE, "page": offset}
        if after is not None:
            params["updated_after"] = format_time(after)
        items = fetch(params)
        fresh: list[dict] = []
        last: float | None = None
        for item in items:
            if not isinstance(item, dict):
                continue
            updated = parse_time(item.get("updated_at"))
            if updated is not None:
                last = updated if last is None else max(last, updated)
            item_id = item.get("id")
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                log.warning(f"{what} without a usable id skipped", extra={"project_id": project_id})
                continue
            if item_id in seen:
                continue
            seen.add(item_id)
            fresh.append(item)
        if fresh:
            write(fresh)
        read += len(fresh)
        if last is not None:
            newest = last if newest is None else max(newest, last)
        if len(items) < PAGE or last is None:
            break
        if not fresh or (after is not None and last - 0.001 <= after):
            offset += 1  # a page all of one instant: the next page of that instant
        else:
            # Ask again from just before the last instant seen (ties at the page's end).
            after, offset = last - 0.001, 1
    conn.eval(_ADVANCE, 1, state_key, "" if newest is None else repr(newest), read)
    return read


def text(value: bytes | str) -> str:
    """A Redis answer as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Copy:
    """One project's copy of a GitLab list in Redis under its key `prefix`, synced by time.

    A subclass names the list (`what`; `page`, the GitLab client's method for one page of it),
    turns each item into a row of strings (`row`; None for an item it cannot use, which is
    logged as lacking `needs`); a page's rows are written by one Lua `script` on `script_keys()`."""

    what = "item"
    needs = "usable fields"
    page = ""
    script = ""
    prefix: Callable[[int], str]  # the project's key prefix (workers/common/keys.py)

    def __init__(self, conn: redis.Redis, project_id: int):
        self.conn = conn
        self.pid = int(project_id)
        self.base = type(self).prefix(self.pid)
        self.state_key = self.part("state")
        self.read = 0  # items read by the last sync (for reports and benchmarks)

    def part(self, name: str) -> str:
        """The key of one part of the copy: `<prefix>:<name>`."""
        return f"{self.base}:{name}"

    def script_keys(self) -> list[str]:
        raise NotImplementedError

    def row(self, item: dict) -> list[str] | None:
        raise NotImplementedError

    def sync(self, gitlab: Any) -> int:
        """Read from GitLab every item updated since the last sync (all of them the first time)
        into the copy; return how many were read. Raises GitLabError like any call."""
        fetch = getattr(gitlab, self.page)
        self.read = sync(self.conn, self.state_key, lambda params: fetch(self.pid, params), self._write,
                         what=self.what, project_id=self.pid)
        return self.read

    def _write(self, items: list[dict]) -> None:
        batch: list[str] = []
        for item in items:
            row = self.row(item)
            if row is None:
                log.warning(f"{self.what} without {self.needs} skipped",
                            extra={"project_id": self.pid, f"{self.what}_id": item.get("id")})
            else:
                batch += row
        if batch:
            names = self.script_keys()
            self.conn.eval(self.script, len(names), *names, *batch)
