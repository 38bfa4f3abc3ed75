"""GitLab's record of which commit was built on which ref, read from its pipelines API.

Pipeline Hooks get lost, doubled and delayed; GitLab's `GET /projects/:id/pipelines` does
not. Every decision that relies on "commit X was (or was not) built on ref R" reads this
record right after bringing it up to date (`Record.sync`), so the answer is GitLab's as of
that moment, whatever deliveries arrived.

The record is a copy kept in Redis so that a decision does not page through a project's
whole history each time: the first sync reads every pipeline of the project (oldest
first), each later one only the pipelines updated since the previous read, less a margin
for rows GitLab's database made visible late. A pipeline's ref and SHA never change, so
reading a pipeline twice is harmless and a sync that fails half-way is simply repeated.
The cursor only moves when a sync finished, and the data has no expiry of its own, so the
copy is never silently partial: `drop` forgets a project as a whole. How the list is paged
(by time, never by offset) is workers/timeline.py's, shared with GitLab's deployments.

Refs are kept exactly as GitLab lists them: a branch or git tag name, or
`refs/merge-requests/<iid>/head` (`/merge`, `/train`) for merge-request pipelines.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import redis

from workers import rules, timeline
from workers.common import keys
from workers.gitlab import GitLab, NotFound

log = logging.getLogger("tagsweeper.pipelines")

# One page of pipelines in one round trip: per SHA the refs that built it, per ref the SHAs
# (scored by the newest pipeline id), per short SHA the full ones, the first pipeline of each
# ref (to ask later whether it was a tag pipeline) and each SHA's first pipeline time.
_RECORD = timeline.LUA_ADD_LINE + """
local sha_key, short_key, refs_key, first_key, ref_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
for i = 1, #ARGV, 4 do
  local sha, ref, id, created = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  add_line(sha_key, sha, ref)
  add_line(short_key, string.sub(sha, 1, 8), sha)
  redis.call('ZADD', ref_prefix .. ref, 'GT', id, sha)
  local first = tonumber(redis.call('HGET', refs_key, ref))
  if not first or id < first then redis.call('HSET', refs_key, ref, id) end
  if created then  -- a pipeline without a time says nothing of when the commit was first built
    local seen = tonumber(redis.call('HGET', first_key, sha))
    if not seen or created < seen then redis.call('HSET', first_key, sha, created) end
  end
end
return 1
"""


class Record(timeline.Copy):
    """One project's pipelines record in Redis: sync it (`timeline.Copy.sync`), then ask it."""

    what = "pipeline"
    needs = "a usable sha or ref"
    page = "pipelines_page"
    script = _RECORD
    prefix = staticmethod(keys.pipelines)

    def __init__(self, conn: redis.Redis, project_id: int):
        super().__init__(conn, project_id)
        self.sha_key, self.short_key = self.part("sha"), self.part("short")
        self.refs_key, self.first_key, self.kind_key = self.part("refs"), self.part("first"), self.part("kind")
        self.ref_prefix = self.part("ref:")

    # -- writing ----------------------------------------------------------------------------
    def script_keys(self) -> list[str]:
        return [self.sha_key, self.short_key, self.refs_key, self.first_key, self.ref_prefix]

    def row(self, item: dict) -> list[str] | None:
        sha, ref = item.get("sha"), item.get("ref")
        if not rules.is_sha(sha) or not isinstance(ref, str) or not ref:
            return None
        created = timeline.parse_time(item.get("created_at")) or timeline.parse_time(item.get("updated_at"))
        return [sha, ref, str(item["id"]), "" if created is None else repr(created)]

    def drop(self) -> None:
        """Forget the project's record (it is read again from GitLab when next needed)."""
        keys = [self.state_key, self.sha_key, self.short_key, self.refs_key, self.first_key, self.kind_key]
        for ref in list(self.refs()):
            keys.append(self.ref_prefix + ref)
        for start in range(0, len(keys), 500):
            self.conn.delete(*keys[start:start + 500])

    # -- reading ----------------------------------------------------------------------------
    def refs_of(self, shas: Iterable[str]) -> dict[str, frozenset[str]]:
        """For each SHA, every ref a pipeline ran on it (SHAs never built are left out)."""
        shas = list(dict.fromkeys(shas))
        out: dict[str, frozenset[str]] = {}
        for start in range(0, len(shas), 1000):
            chunk = shas[start:start + 1000]
            for sha, refs in zip(chunk, self.conn.hmget(self.sha_key, chunk)):
                if refs:
                    out[sha] = frozenset(timeline.text(refs).split("\n"))
        return out

    def shas_of(self, refs: Iterable[str]) -> dict[str, float]:
        """Every SHA built on any of `refs`, with the id of its newest pipeline there."""
        pipe = self.conn.pipeline(transaction=False)
        for ref in refs:
            pipe.zrange(self.ref_prefix + ref, 0, -1, withscores=True)
        out: dict[str, float] = {}
        for items in pipe.execute():
            for sha, score in items:
                sha = timeline.text(sha)
                out[sha] = max(out.get(sha, 0.0), score)
        return out

    def built(self, refs: Iterable[str]) -> list[str]:
        """Which of `refs` ran a pipeline (one round trip)."""
        refs = list(refs)
        pipe = self.conn.pipeline(transaction=False)
        for ref in refs:
            pipe.exists(self.ref_prefix + ref)
        return [ref for ref, found in zip(refs, pipe.execute()) if found]

    def with_prefix(self, prefixes: Iterable[str]) -> dict[str, frozenset[str]]:
        """For each 8-hex prefix, the built SHAs that start with it."""
        prefixes = list(dict.fromkeys(prefixes))
        if not prefixes:
            return {}
        found = self.conn.hmget(self.short_key, prefixes)
        return {p: frozenset(timeline.text(v).split("\n")) if v else frozenset() for p, v in zip(prefixes, found)}

    def refs(self) -> Iterator[str]:
        """Every ref that ever ran a pipeline (streamed)."""
        for ref, _ in self.conn.hscan_iter(self.refs_key, count=1000):
            yield timeline.text(ref)

    def first_built(self, shas: Iterable[str]) -> dict[str, float]:
        """When each SHA's first pipeline was created (unix seconds)."""
        shas = list(dict.fromkeys(shas))
        if not shas:
            return {}
        return {s: float(v) for s, v in zip(shas, self.conn.hmget(self.first_key, shas)) if v is not None}

    def tag_refs(self, gitlab: GitLab, refs: Iterable[str]) -> set[str]:
        """Which of `refs` GitLab ran as git tag pipelines. The pipelines list does not say,
        so the first pipeline of each ref not asked before is read once (`tag`), and kept."""
        refs = [r for r in dict.fromkeys(refs) if rules.merge_request_of_ref(r) is None]
        if not refs:
            return set()
        kinds = dict(zip(refs, self.conn.hmget(self.kind_key, refs)))
        missing = [r for r, k in kinds.items() if k is None]
        if missing:
            firsts = dict(zip(missing, self.conn.hmget(self.refs_key, missing)))
            for ref, first in firsts.items():
                if first is None:
                    continue  # no pipeline of that name: not a tag pipeline ref
                kind = self._kind(gitlab, ref, int(first))
                self.conn.hset(self.kind_key, ref, kind)
                kinds[ref] = kind.encode()
        # An unknown kind is treated as a tag: a release image is kept rather than guessed at.
        return {r for r, k in kinds.items() if k is not None and timeline.text(k) in ("tag", "unknown")}

    def _kind(self, gitlab: GitLab, ref: str, first: int) -> str:
        """"tag" or "branch" from one pipeline of `ref` (its first; if GitLab deleted that one
        since, any that is left); "unknown" when none is left to ask."""
        left = [first]
        for attempt in range(2):
            for pipeline_id in left[:1]:
                try:
                    return "tag" if gitlab.pipeline(self.pid, pipeline_id).get("tag") is True else "branch"
                except NotFound:
                    pass
            if attempt == 0:
                page = gitlab.pipelines_page(self.pid, {"ref": ref, "per_page": 1, "page": 1})
                # Under GitLab 18's include_reserved_refs_in_ref_filter `?ref=` lists merge-request
                # pipelines too: only one of the ref's own says (none left: "unknown", kept as a tag).
                left = [i["id"] for i in page if isinstance(i, dict) and isinstance(i.get("id"), int)
                        and i.get("ref") == ref]
        return "unknown"
