"""What pipelines built: which commit SHAs ran on which ref, remembered in Redis with bounds.

Three views of the same facts, all with a TTL so they fade out:
- per ref (a sorted set, newest last, capped): the SHAs a branch's pipelines built;
- per SHA (a set): every ref ("branch:NAME" or "tag:NAME") a pipeline built it on;
- per short SHA (a set): the full SHAs built with that 8-character prefix, because
  `:$CI_COMMIT_SHORT_SHA` tags of two different commits can collide.
"""

from __future__ import annotations

import re
import time
from typing import Iterable, Iterator

import redis

from workers.common import keys



def ref_label(ref: str, tag: bool) -> str:
    return f"{'tag' if tag else 'branch'}:{ref}"


def record(conn: redis.Redis, *, project_id: int, ref: str, sha: str, tag: bool,
           ttl_days: int, cap: int, now: float | None = None) -> None:
    """Remember that a pipeline built `sha` on `ref` (one round trip)."""
    now = time.time() if now is None else now
    ttl = int(ttl_days * 86400)
    kind = "tag" if tag else "branch"
    ref_key, sha_key = keys.history_ref(project_id, kind, ref), keys.history_sha(project_id, sha)
    pipe = conn.pipeline(transaction=True)
    pipe.zadd(ref_key, {sha: now})
    pipe.zremrangebyrank(ref_key, 0, -(cap + 1))  # keep the newest `cap`
    pipe.expire(ref_key, ttl)
    pipe.sadd(sha_key, ref_label(ref, tag))
    pipe.expire(sha_key, ttl)
    pipe.sadd(keys.history_short(project_id, sha), sha)
    pipe.expire(keys.history_short(project_id, sha), ttl)
    pipe.execute()


def branch_shas(conn: redis.Redis, *, project_id: int, branch: str) -> list[str]:
    """SHAs remembered for a branch's pipelines, oldest first."""
    return [s.decode() if isinstance(s, bytes) else s
            for s in conn.zrange(keys.history_ref(project_id, "branch", branch), 0, -1)]


def remembered_branches(conn: redis.Redis, project_id: int) -> Iterator[str]:
    """Every branch whose pipelines are remembered (SCAN over the per-ref keys)."""
    prefix = keys.history_ref(project_id, "branch", "")
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    for key in conn.scan_iter(match=pattern, count=1000):
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        yield name[len(prefix):]


def refs_of(conn: redis.Redis, *, project_id: int, shas: Iterable[str]) -> dict[str, frozenset[str]]:
    """For each SHA, the refs a pipeline built it on (one round trip for all)."""
    shas = list(shas)
    pipe = conn.pipeline(transaction=False)
    for sha in shas:
        pipe.smembers(keys.history_sha(project_id, sha))
    result = {}
    for sha, members in zip(shas, pipe.execute()):
        refs = frozenset(m.decode() if isinstance(m, bytes) else m for m in members)
        if refs:
            result[sha] = refs
    return result


def clashing_shas(conn: redis.Redis, *, project_id: int, shas: Iterable[str]) -> set[str]:
    """Other built commits whose 8-character prefix equals one of `shas`' (one round trip)."""
    shas = set(shas)
    prefixes = sorted({s[:8] for s in shas})
    pipe = conn.pipeline(transaction=False)
    for prefix in prefixes:
        pipe.smembers(keys.history_short(project_id, prefix))
    found = {m.decode() if isinstance(m, bytes) else m for members in pipe.execute() for m in members}
    return found - shas
