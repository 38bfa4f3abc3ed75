"""What a sweep knows: the project's refs, gathered once (`gather`), and the commits of its SHA
tags, looked up a page at a time and remembered in bounded caches (`Commits`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Executor
from typing import Any, Callable, Mapping

import redis

from workers import history, pipelines, rules
from workers.cleanup import Context
from workers.gitlab import GitLab, NotFound
from workers.rules import Code, Reason

CACHE_SIZE = 4096  # commit lookups remembered across pages and repositories of one sweep
REFS_ASKED = 20  # a commit's refs: the first page is enough to know whether there are any


def gather(ctx: Context, record: pipelines.Record) -> tuple[rules.SweepFacts, dict[int, rules.MergeRequest]]:
    """The project's refs, its merge requests, and every branch GitLab's record says existed.

    Dead branches come from every ref that ever ran a pipeline (`record`, synced from GitLab's
    pipelines API), from merge requests, and from Pipeline Hooks remembered."""
    gl, pid = ctx.gitlab, ctx.pid
    live_branches = gl.branch_heads(pid)
    live_tags = gl.tag_commits(pid)
    known: dict[str, str] = {}
    open_sources: dict[str, str] = {}
    pinned: dict[str, str] = {}
    expand: list[int] = []
    mrs: dict[int, rules.MergeRequest] = {}
    for item in gl.merge_requests(pid, state="all"):  # newest first
        mr = rules.MergeRequest.from_api(item, pid)
        mrs.setdefault(mr.iid, mr)
        iid, source = mr.iid, mr.source_branch
        if mr.open:
            if mr.sha:
                pinned.setdefault(mr.sha, Reason(Code.OPEN_MR_COMMIT, f"commit of open merge request !{iid}"))
            if mr.own and source:
                open_sources.setdefault(source, Reason(Code.OPEN_MR_SOURCE,
                                                       f"source branch of open merge request !{iid}"))
            if not mr.own or source not in live_branches:
                expand.append(iid)  # its commits are on no branch here, yet in use
        elif mr.own and source and mr.state in ("merged", "closed"):
            known.setdefault(source, f"merge request !{iid} ({mr.state})")
    for sha, why in rules.fast_forward_pins(mrs.values(), live_branches).items():
        pinned.setdefault(sha, why)
    for iid in expand:
        try:
            for c in gl.merge_request_commits(pid, iid):
                if rules.is_sha(c.get("id")):
                    pinned.setdefault(c["id"], Reason(Code.OPEN_MR_COMMIT, f"commit of open merge request !{iid}"))
        except NotFound:
            pass
    for ref in record.refs():
        if rules.merge_request_of_ref(ref) is None and ref not in live_tags:
            known.setdefault(ref, "GitLab's pipelines")
    for name in history.remembered_branches(ctx.conn, pid):
        known.setdefault(name, "pipeline memory")
    facts = rules.SweepFacts(default_branch=ctx.project.get("default_branch") or None,
                             live_branches=live_branches, live_tags=live_tags, known_branches=known,
                             open_sources=open_sources, pinned_shas=pinned)
    return facts, mrs


def implausible(facts: rules.SweepFacts) -> str | None:
    """Why GitLab's answers are too odd to decide anything on (a sweep then deletes nothing)."""
    if not facts.live_branches:
        return "GitLab lists no branches for the project: nothing can be shown to be dead"
    if facts.default_branch and facts.default_branch not in facts.live_branches:
        return (f"the default branch {facts.default_branch!r} is not among the branches GitLab listed: "
                "the answers look inconsistent")
    return None


class Lru:
    """A dict that forgets its oldest entries beyond `size`."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class Commits:
    """The commits of one sweep's SHA tags: what they stand for and which refs built or contain them."""

    def __init__(self, gitlab: GitLab, conn: redis.Redis, project_id: int, record: pipelines.Record,
                 live_tags: Mapping[str, str], mrs: Mapping[int, rules.MergeRequest]):
        self.gl, self.conn, self.pid, self.record = gitlab, conn, project_id, record
        self.live_tags, self.mrs = live_tags, mrs
        self._candidates = Lru()  # short SHA -> frozenset of full SHAs
        self._built = Lru()       # full SHA -> refs from pipeline memory
        self._refs = Lru()        # full SHA -> refs GitLab lists (None: unknown commit)

    def facts(self, refs: list[rules.CommitRef], pool: Executor) -> rules.CommitFacts:
        """Look up the commits of one page's SHA tags: the full SHAs short ones stand for, the refs
        GitLab's pipelines (and pipeline memory) say built each, then GitLab's refs for the commits
        no pipeline ran on. GitLab is asked on `pool`'s threads."""
        shorts = sorted({r.value for r in refs if r.short})
        candidates = self._cached(self._candidates, shorts, self._resolve_short, pool)
        shas = {r.value for r in refs if not r.short}
        shas.update(sha for c in candidates.values() for sha in c)
        built = self._cached(self._built, sorted(shas), None, pool)
        ask = sorted(s for s in shas if not built[s])
        git_refs = self._cached(self._refs, ask, self._commit_refs, pool)
        return rules.CommitFacts(candidates=candidates, built_on=built, git_refs=git_refs)

    def _cached(self, cache: Lru, keys: list[str], lookup: Callable[[str], Any] | None, pool: Executor) -> dict:
        found = {k: cache.get(k) for k in keys if k in cache}
        missing = [k for k in keys if k not in found]
        if missing:
            if lookup is None:  # GitLab's pipelines record and pipeline memory: two round trips
                values = self._built_on(missing)
            else:
                values = list(pool.map(lookup, missing))
            for key, value in zip(missing, values):
                cache.put(key, value)
                found[key] = value
        return found

    def _built_on(self, shas: list[str]) -> list[frozenset[str]]:
        """The labels of the refs that built each commit (rules.pipeline_label)."""
        built = self.record.refs_of(shas)
        remembered = history.refs_of(self.conn, project_id=self.pid, shas=shas)
        out = []
        for sha in shas:
            labels = {rules.pipeline_label(r, self.live_tags, self.mrs) for r in built.get(sha, ())}
            out.append(frozenset(labels | set(remembered.get(sha, ()))))
        return out

    def _resolve_short(self, short: str) -> frozenset[str]:
        """Every full SHA a short one may stand for. CI gives a short SHA tag only to a commit a
        pipeline built, so GitLab's pipelines (and pipeline memory) are asked first; a commit
        they do not know is resolved by GitLab's commits API (404 when git finds none, or more
        than one)."""
        built = set(self.record.with_prefix([short]).get(short, ()))
        built |= history.clashing_shas(self.conn, project_id=self.pid, shas={short})
        built = {s for s in built if s.startswith(short)}
        if built:
            return frozenset(built)
        commit = self.gl.commit(self.pid, short)
        full = commit.get("id") if isinstance(commit, dict) else None
        if not rules.is_sha(full) or not full.startswith(short):
            return frozenset()
        return frozenset({full})

    def _commit_refs(self, sha: str) -> tuple[str, ...] | None:
        refs = self.gl.commit_refs(self.pid, sha, limit=REFS_ASKED)
        return None if refs is None else tuple(sorted(f"{kind}:{name}" for kind, name in refs))
