"""Retention on live branches (KEEP_COMMITS): retire the commit tags their newer commits superseded.

Merged and deleted branches are cleaned by their events (workers/cleanup.py) and the sweep; a
branch that lives for ever (`main`, `release/*`) piles up a `:$CI_COMMIT_SHA` and a
`:$CI_COMMIT_SHORT_SHA` per pipeline. A retention pass of a live branch keeps the COMMIT_TAGS
of its newest KEEP_COMMITS built commits and of its newest commit whose pipeline succeeded,
and retires the older ones that nothing else claims (rules.retire). Every fact comes from
GitLab at decision time, as for any deletion:

- which commits the branch built, in which order, and when each was first built: GitLab's
  pipelines (workers/pipelines.py `Record`, synced first);
- the branch's newest successful pipeline: one request;
- live branches, git tags, open merge requests, what live environments run or may roll back
  to (workers/deployments.py), the other refs that built each commit.

Off unless KEEP_COMMITS is set; KEEP_COMMITS_BRANCHES narrows it to matching branches. A pass
runs as the job `workers.jobs.retire_branch` (one scheduled per branch when a Pipeline Hook says
a pipeline succeeded), for every live branch after a sweep, and by hand (`tagsweeper retire`).
It takes the branch's cleanup lock, deletes through workers/deletion.py and reports like a
cleanup (trigger `superseded`).

Cost stays flat as a branch's history grows: a commit whose tags a pass deleted, or found
gone, in every repository is remembered as retired (keys.retired, with the id of its newest
pipeline on the branch then) and not asked about again unless the branch builds it again;
only commits something still claims are looked at by the next pass. That memory expires
RETIRED_TTL after a branch's last pass, so a deleted branch's goes by itself. Project-wide facts are
read only when some branch has commits left to decide, so a pass with nothing to do costs a
pipelines sync and the branch list. A retired commit whose tag is pushed again some other way
(another ref's pipeline, a restored registry) is found by the next sweep, which lists every tag:
it forgets the retirement (`forget_retired`), and the pass after the sweep decides it again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import redis

from workers import cleanup, deletion, deployments, locks, pipelines, rules
from workers.common import audit, keys, metrics
from workers.common.settings import Settings
from workers.gitlab import GitLab, NotFound
from workers.report import Report
from workers.rules import Code, Reason

log = logging.getLogger("tagsweeper.retention")

TRIGGER = "superseded"
RETIRE_CHUNK = 250  # commits whose tags are deleted before the pass remembers them as retired
# A branch's retired set lives this long after its last pass: a deleted branch's (or one no longer in
# KEEP_COMMITS_BRANCHES) goes by itself. A live branch whose set expired has its old commits decided
# again, which costs requests, never a tag.
RETIRED_TTL = 90 * 86400

Progress = Callable[[str], None]


class RetentionError(Exception):
    """A retention pass that cannot run as asked (unknown project, retention off); retrying will not help."""


class Unclear(Exception):
    """A fact a pass relies on cannot be established: the pass retires nothing."""


class Retention:
    """Retention passes of one project's live branches, sharing what GitLab said of the project."""

    def __init__(self, ctx: cleanup.Context, *, delivery: str | None = None):
        self.ctx = ctx
        self.gl: GitLab = ctx.gitlab
        self.settings: Settings = ctx.settings
        self.delivery = delivery
        self.record = pipelines.Record(ctx.conn, ctx.pid)
        self.synced = False
        self.loaded = False
        self.live_branches: dict[str, str] | None = None
        self.live_tags: dict[str, str] = {}
        self.mrs: dict[int, rules.MergeRequest] = {}
        self.pinned: dict[str, Reason] = {}
        self.open_sources: set[str] = set()
        self.repositories: list[dict] = []
        self.protection: deployments.Protection | None = None

    # -- GitLab's record ------------------------------------------------------------------------
    def sync(self) -> None:
        if not self.synced:
            self.record.sync(self.gl)
            self.synced = True

    def heads(self) -> dict[str, str]:
        """Every live branch (name -> head SHA), read once for the passes of one job or command."""
        if self.live_branches is None:
            self.live_branches = self.gl.branch_heads(self.ctx.pid)
        return self.live_branches

    def load(self) -> None:
        """What the project-wide rules need, read once: git tags, open merge requests, the
        registry repositories, what live environments keep."""
        if self.loaded:
            return
        gl, pid = self.gl, self.ctx.pid
        self.heads()
        self.live_tags = gl.tag_commits(pid)
        for item in gl.merge_requests(pid, state="opened"):
            mr = rules.MergeRequest.from_api(item, pid)
            self.mrs[mr.iid] = mr
            if mr.own and mr.source_branch:
                self.open_sources.add(mr.source_branch)
            if mr.sha:
                self.pinned.setdefault(mr.sha, Reason(Code.OPEN_MR_COMMIT,
                                                      f"commit is the head of open merge request !{mr.iid}"))
        self.repositories = list(gl.registry_repositories(pid))
        self.protection = deployments.Protection(gl, self.ctx.conn, pid, self.settings.keep_deployments).load()
        self.loaded = True

    def branches(self) -> list[str]:
        """The live branches retention applies to (KEEP_COMMITS_BRANCHES) that ever ran a pipeline."""
        self.sync()
        return self.record.built(sorted(b for b in self.heads() if self.settings.retires(b)))

    # -- one branch -----------------------------------------------------------------------------
    def run_branch(self, branch: str, *, by_operator: bool = False) -> dict:
        """One branch's pass, under its cleanup lock; returns its report. Raises
        cleanup.CleanupIncomplete (with the report) when some deletions failed transiently."""
        ctx = self.ctx
        report = Report(ctx.pid, branch, TRIGGER, ctx.dry_run, self.delivery,
                        ctx.project.get("path_with_namespace"))
        trail = audit.attach(report, ctx.conn, self.settings)
        reason = self.refuse(branch, by_operator)
        if reason:
            report.skip(reason)
            trail.skipped(report)
            return self.result(report, {})
        with locks.BranchLock(ctx.conn, ctx.pid, branch, ttl=self.settings.cleanup_lock_ttl):
            return self._run_locked(branch, report, trail)

    def refuse(self, branch: str, by_operator: bool) -> str | None:
        """Why a pass of `branch` must not run, or None."""
        if not self.settings.retention:
            return "KEEP_COMMITS is not set: retention on live branches is off"
        if not self.settings.retires(branch):
            return f"branch {branch!r} does not match KEEP_COMMITS_BRANCHES"
        project = self.ctx.project
        if not by_operator and not self.settings.allowed_projects.allows(self.ctx.pid,
                                                                         project.get("path_with_namespace")):
            return f"project {project.get('path_with_namespace') or self.ctx.pid} is not allowed by ALLOWED_PROJECTS"
        return None

    def _run_locked(self, branch: str, report: Report, trail) -> dict:
        ctx, keep = self.ctx, self.settings.keep_commits
        self.sync()
        if branch not in self.heads():  # GitLab's branch list, read in this pass

            report.skip(f"branch {branch!r} does not exist: its cleanup deletes its tags")
            trail.skipped(report)
            return self.result(report, {})
        built = self.record.shas_of([branch])
        retired_key = keys.retired(ctx.pid, branch)
        retired = self.recall(retired_key, built)
        newest = {b.sha for b in rules.newest_built((rules.Built(s, o) for s, o in built.items()), keep)}
        candidates = set(built) - retired - newest
        stats = {"keep": keep, "built": len(built), "retired_before": len(retired),
                 "candidates": len(candidates)}
        if not candidates:
            return self.result(report, stats)  # nothing left to decide: no more requests

        self.load()
        gl, pid = self.gl, ctx.pid
        asked = candidates | newest
        try:
            newest_success = self.newest_success(branch)
        except Unclear as exc:  # what the rules need is not known: keep everything, say why
            report.skip(str(exc))
            trail.skipped(report)
            return self.result(report, stats)
        firsts = self.record.first_built(asked)
        clashing, other_refs = self.other_refs(branch, asked)  # first: it learns merge requests in_use needs
        in_use = self.deployed(set(clashing))
        open_sources = {name: Reason(Code.OPEN_MR_SOURCE, f"tag of the source branch {name!r} of an open merge request")
                        for name in sorted(self.open_sources - set(self.live_branches))}
        facts = rules.RetentionFacts(
            branch=branch, keep=keep, min_age=self.settings.keep_commits_min_age, now=time.time(),
            built=tuple(rules.Built(s, built[s], firsts.get(s)) for s in sorted(asked)),
            newest_success=newest_success, candidates=frozenset(candidates),
            default_branch=ctx.project.get("default_branch"), live_branches=self.live_branches,
            live_tags=self.live_tags, pinned_shas=self.pinned, other_refs=other_refs,
            deployed_shas=dict(in_use.shas), deployed_refs=dict(in_use.refs), open_sources=open_sources)
        decisions = rules.retire(facts, self.settings.policy)
        for d in decisions:
            if not d.delete:
                report.add("kept", d.tag, d.reason)
        report.repositories = [deletion.repo_path(r) for r in self.repositories]
        doomed = {d.tag: d for d in decisions if d.delete}
        stats["retired_now"] = 0
        if doomed and self.repositories:
            store = deletion.open_store(self.settings, gl, pid)
            try:
                # A chunk of commits at a time, each chunk's retired commits remembered when it is
                # done: a pass cut short (a timeout, a lost worker) keeps what it did.
                templates, started = self.settings.policy.commit_templates, set()
                order = sorted(candidates, key=lambda s: built[s])
                for start in range(0, len(order), RETIRE_CHUNK):
                    chunk = order[start:start + RETIRE_CHUNK]
                    names = {n for sha in chunk for n in rules.commit_tags(sha, templates)} - started
                    started |= names
                    go = [doomed[n] for n in sorted(names) if n in doomed]
                    if go:
                        deletion.delete_tags(store, report, self.repositories, go, dry_run=ctx.dry_run,
                                             concurrency=self.settings.delete_concurrency)
                    stats["retired_now"] += self.remember(retired_key, chunk, decisions, report, built)
            finally:
                store.close()
                metrics.tally().add_requests("registry", store.calls())
        result = self.result(report, stats)
        log.info("retention pass finished", extra={"project_id": ctx.pid, "branch": branch, "dry_run": ctx.dry_run,
                                                   "summary": result["summary"], **stats})
        cleanup.raise_if_incomplete(report, result, "the retention pass")
        return result

    def newest_success(self, branch: str, pages: int = 3) -> str | None:
        """The commit of the branch's own newest successful pipeline. GitLab 18's
        include_reserved_refs_in_ref_filter makes `?ref=` list the branch's merge-request pipelines
        too (a merged-results one runs on a temporary merge commit): only `ref == branch` counts."""
        for page in range(1, pages + 1):
            items = self.gl.pipelines_page(self.ctx.pid, {"ref": branch, "status": "success", "order_by": "id",
                                                          "sort": "desc", "per_page": 100, "page": page})
            for p in items:
                if isinstance(p, dict) and p.get("ref") == branch and rules.is_sha(p.get("sha")):
                    return p["sha"]
            if len(items) < 100:
                return None  # every successful pipeline read: the branch never passed
        raise Unclear(f"the newest successful pipeline of branch {branch!r} is not among the {pages * 100} "
                      "newest successful pipelines GitLab lists for it: nothing is retired")

    def other_refs(self, branch: str, shas: set[str]) -> tuple[list[str], dict[str, frozenset[str]]]:
        """The commits asked about (`shas` and those sharing a short SHA with one) and, per commit,
        the live refs other than `branch` whose pipelines built it (cleanup.built_elsewhere, as an
        event cleanup asks)."""
        return cleanup.built_elsewhere(self.ctx, self.record, branch, shas,
                                       alive=set(self.live_branches) | self.open_sources,
                                       live_tags=self.live_tags, mrs=self.mrs)

    def deployed(self, shas: set[str]) -> rules.InUse:
        """What live environments keep (commits, and the branches they run), asked again of GitLab
        where the copy may be short."""
        self.protection.confirm(shas)
        return self.protection.in_use(self.mrs)

    def recall(self, key: str, built: dict[str, float]) -> set[str]:
        """The branch's commits retired before and not built again since. The set is trimmed to
        what the branch's pipelines still list and lives RETIRED_TTL from now. Two round trips."""
        conn = self.ctx.conn
        stored = {_text(sha): at for sha, at in conn.zrange(key, 0, -1, withscores=True)}
        stale = sorted(set(stored) - set(built))  # GitLab no longer lists a pipeline of the branch on it
        pipe = conn.pipeline(transaction=False)
        if stale:
            pipe.zrem(key, *stale)
        pipe.expire(key, RETIRED_TTL)
        pipe.execute()
        # Retired at a pipeline id: a newer pipeline of the branch on that commit pushed its tags again.
        return {sha for sha, at in stored.items() if sha in built and built[sha] <= at}

    def remember(self, key: str, shas: list[str], decisions: list[rules.Decision], report: Report,
                 built: dict[str, float]) -> int:
        """Remember as retired the commits among `shas` whose every tag is gone from every
        repository now: each of their names was doomed, and deleted or found absent wherever it
        was looked for. Not in a dry run. Returns how many."""
        if self.ctx.dry_run:
            return 0
        doomed = {d.tag for d in decisions if d.delete}
        outcomes: dict[str, set[str]] = {}
        for entry in report.decisions:
            outcomes.setdefault(entry["tag"], set()).add(entry["decision"])
        templates = self.settings.policy.commit_templates
        done = [sha for sha in shas
                if all(n in doomed and outcomes.get(n) and outcomes[n] <= {"deleted", "absent"}
                       for n in rules.commit_tags(sha, templates))]
        if done:
            pipe = self.ctx.conn.pipeline(transaction=False)
            pipe.zadd(key, {sha: built[sha] for sha in done})
            pipe.expire(key, RETIRED_TTL)
            pipe.execute()
        return len(done)

    def result(self, report: Report, stats: dict) -> dict:
        out = report.as_dict()
        out["retention"] = stats
        return out


def forget_retired(conn: redis.Redis, project_id: int, branches: list[str], shas: set[str]) -> None:
    """The commits among `shas` have tags in the registry (a sweep saw them): none of them counts as
    retired on `branches` any more, so the next pass decides them again. One round trip."""
    if not branches or not shas:
        return
    pipe = conn.pipeline(transaction=False)
    for branch in branches:
        pipe.zrem(keys.retired(project_id, branch), *sorted(shas))
    pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run(project: int | str, *, gitlab: GitLab, conn: redis.Redis, settings: Settings, branch: str | None = None,
        dry_run: bool | None = None, progress: Progress | None = None, by_operator: bool = False,
        delivery: str | None = None) -> dict:
    """Retention passes of one project: of `branch`, or of every live branch retention applies to.

    Returns one branch's report, or for every branch {"project_id", "project", "dry_run",
    "trigger", "branches": [report, ...]}. Raises RetentionError for an unknown project (and,
    for every branch, when retention is off), cleanup.CleanupIncomplete (with the result) when
    some deletions failed transiently: the other branches' passes run first."""
    if isinstance(project, bool) or not isinstance(project, (int, str)) \
            or (isinstance(project, str) and not project.strip()):
        raise RetentionError("project must be a numeric id or a path like group/project")
    if branch is not None:
        try:
            rules.check_branch_name(branch)
        except rules.RuleError as exc:
            raise RetentionError(str(exc)) from None
    dry = settings.dry_run if dry_run is None else dry_run
    ctx = cleanup.Context(gitlab, conn, settings, dry)
    try:
        ctx.project = gitlab.project(project)
    except NotFound:
        raise RetentionError(f"project {project!r} not found (or GITLAB_TOKEN cannot see it)") from None
    passes = Retention(ctx, delivery=delivery)
    if branch is not None:
        return passes.run_branch(branch, by_operator=by_operator)
    if not settings.retention:
        raise RetentionError("KEEP_COMMITS is not set: retention on live branches is off (set it to the "
                             "number of newest commits each branch keeps)")
    where = ctx.project.get("path_with_namespace") or ctx.pid
    result = {"project_id": ctx.pid, "project": ctx.project.get("path_with_namespace"), "dry_run": dry,
              "trigger": TRIGGER, "branches": []}
    incomplete = 0
    names = passes.branches()
    for number, name in enumerate(names, 1):
        if progress is not None:
            progress(f"{where}: branch {name} ({number}/{len(names)})")
        try:
            result["branches"].append(passes.run_branch(name, by_operator=by_operator))
        except cleanup.CleanupIncomplete as exc:
            result["branches"].append(exc.report)
            incomplete += 1
    if incomplete:
        raise cleanup.CleanupIncomplete(f"{incomplete} branch(es) had tag deletions that failed; the retention "
                                        "pass is retried and deletes what is left", result)
    return result
