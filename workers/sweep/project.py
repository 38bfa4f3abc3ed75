"""One project's sweep: list its registry repositories' tags a page at a time, decide each page
with the rules, look again at what would go, and delete it through workers/deletion.py."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

import redis

from workers import cleanup, deletion, deployments, pipelines, retention, rules
from workers.common import audit
from workers.common.settings import Settings
from workers.gitlab import GitLab, NotFound
from workers.report import Report
from workers.rules import Code, Reason
from workers.sweep.facts import Commits, gather, implausible
from workers.sweep.schedule import forget_project

log = logging.getLogger("tagsweeper.sweep")

PAGE_SIZE = 100  # tags decided at once; GitLab's largest page

Progress = Callable[[str], None]


class SweepError(Exception):
    """A sweep that cannot run as asked (unknown project or group); retrying will not help."""


class ProjectSweep:
    """Decide and clean one project's registry repositories, a page of tags at a time."""

    def __init__(self, ctx: cleanup.Context, report: Report, *, page_size: int = PAGE_SIZE,
                 progress: Progress | None = None):
        self.ctx = ctx
        self.gl: GitLab = ctx.gitlab
        self.report = report
        self.policy = ctx.settings.policy
        self.page_size = max(1, min(int(page_size), 100))
        self.progress = progress
        self.index: rules.SweepIndex | None = None
        self.store: deletion.Store | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.scanned = self.kept_by_rule = self.unclear = 0
        self.known_dead = 0
        self.record = pipelines.Record(ctx.conn, ctx.pid)
        self.facts: rules.SweepFacts | None = None
        self.mrs: dict[int, rules.MergeRequest] = {}
        self.commits: Commits | None = None
        self.pipelines_read = 0
        self.protection = deployments.Protection(ctx.gitlab, ctx.conn, ctx.pid, ctx.settings.keep_deployments)
        self.retained: list[str] = []  # live branches retention applies to (KEEP_COMMITS)

    def run(self) -> dict:
        ctx, report = self.ctx, self.report
        reason = self.prepare()
        if reason:
            report.skip(reason)
            return self.result()
        self.known_dead = len({b for b, _ in self.index.dead_tags.values()})
        repositories = list(self.gl.registry_repositories(ctx.pid))
        report.repositories = [deletion.repo_path(r) for r in repositories]
        if repositories:
            self.store = deletion.open_store(ctx.settings, self.gl, ctx.pid)
            try:
                with ThreadPoolExecutor(max_workers=max(1, ctx.settings.delete_concurrency),
                                        thread_name_prefix="sweep") as self.pool:
                    for number, repo in enumerate(repositories, 1):
                        self.sweep_repository(repo, number, len(repositories))
            finally:
                self.store.close()
        result = self.result()
        log.info("sweep finished", extra={"project_id": ctx.pid, "project": report.project_path,
                                          "dry_run": ctx.dry_run, "scanned": self.scanned,
                                          "summary": result["summary"], "unclear": self.unclear})
        cleanup.raise_if_incomplete(report, result, "the sweep")
        return result

    def prepare(self) -> str | None:
        """Bring GitLab's pipelines record up to date and plan from GitLab's refs; return why
        nothing can be decided, or None."""
        self.pipelines_read = self.record.sync(self.gl)
        self.facts, self.mrs = gather(self.ctx, self.record)
        in_use = self.protection.load().in_use(self.mrs)
        self.facts = replace(self.facts, deployed_shas=in_use.shas, deployed_refs=in_use.refs)
        self.commits = Commits(self.gl, self.ctx.conn, self.ctx.pid, self.record, self.facts.live_tags, self.mrs)
        reason = implausible(self.facts)
        if reason is None:
            self.index = rules.sweep_index(self.facts, self.policy)
        settings = self.ctx.settings
        self.retained = sorted(b for b in self.facts.live_branches if settings.retires(b))
        return reason

    def result(self) -> dict:
        out = self.report.as_dict()
        out.update(scanned=self.scanned, kept_by_rule=self.kept_by_rule, unclear=self.unclear,
                   known_dead_branches=self.known_dead, pipelines_read=self.pipelines_read,
                   deployments_read=self.protection.read, live_environments=len(self.protection.live))
        return out

    # -- listing --------------------------------------------------------------------------------
    def sweep_repository(self, repo: dict, number: int, total: int) -> None:
        where = f"{self.report.project_path or self.ctx.pid}: {deletion.repo_path(repo)} ({number}/{total})"

        def decide(names: list[str]) -> int:
            removed = self.decide_page(repo, names) if names else 0
            self._show(where)
            return removed

        self.store.pages(repo, self.page_size, decide)

    def _show(self, where: str) -> None:
        if self.progress is None:
            return
        gone = self.report.count("would_delete" if self.ctx.dry_run else "deleted")
        verb = "would delete" if self.ctx.dry_run else "deleted"
        self.progress(f"{where}: {self.scanned} tags scanned, {verb} {gone}, {self.unclear} unclear")

    # -- deciding ---------------------------------------------------------------------------------
    def decide_page(self, repo: dict, names: list[str]) -> int:
        """Decide and clean one page of tags; return how many tags vanished from the listing."""
        self.scanned += len(names)
        verdicts: list[rules.SweepVerdict] = []
        refs: list[rules.CommitRef] = []
        for name in names:
            outcome = rules.sweep_tag(name, self.index, self.policy)
            (refs if isinstance(outcome, rules.CommitRef) else verdicts).append(outcome)
        if refs:
            facts = self.commits.facts(refs, self.pool)
            # A commit deployed to a live environment beyond the newest the copy holds: GitLab says.
            shas = {r.value for r in refs} | {s for found in facts.candidates.values() for s in found}
            # A commit a retention pass retired has a tag here again: the next pass decides it again.
            retention.forget_retired(self.ctx.conn, self.ctx.pid, self.retained,
                                     {s for s in shas if rules.is_sha(s)})
            if self.protection.confirm(shas):
                self.index = rules.with_deployed(self.index, self.protection.in_use(self.mrs).shas, self.policy)
            verdicts.extend(rules.sweep_commit(r, facts, self.index, self.policy) for r in refs)
        return self.apply(repo, verdicts)

    # -- acting ---------------------------------------------------------------------------------
    def apply(self, repo: dict, verdicts: list[rules.SweepVerdict]) -> int:
        path = deletion.repo_path(repo)
        doomed: list[rules.SweepVerdict] = []
        for v in verdicts:
            if v.action == "keep" and v.code in rules.DEPLOYMENT_CODES:
                self.report.add("kept", v.tag, v.reason, path)  # listed: released once the environment stops
            elif v.action == "keep":
                self.kept_by_rule += 1  # counted, not listed: on a big registry that is most tags
            elif v.action == "unclear":
                self.unclear += 1
                self.report.add("kept", v.tag, Reason(v.code, f"unclear: {v.reason}"), path)
            else:
                doomed.append(v)
        if not doomed:
            return 0
        # Look again right before deleting: a dead branch may have been pushed again meanwhile.
        names = sorted({b for v in doomed for b in v.branches})
        back = {b for b, live in zip(names, self.pool.map(lambda b: self.gl.branch(self.ctx.pid, b), names))
                if live}
        # A ref no merge request names as its branch may have been a git tag: its images are a release's.
        sources = {mr.source_branch for mr in self.mrs.values() if mr.own}
        tags = self.record.tag_refs(self.gl, [b for b in names if b not in back and b not in sources])
        go: list[rules.Decision] = []
        for v in doomed:
            again = [b for b in v.branches if b in back]
            released = [b for b in v.branches if b in tags]
            if again:
                self.report.add("kept", v.tag, Reason(Code.EXISTS_AGAIN, f"branch {again[0]!r} exists again"), path)
            elif released:
                self.report.add("kept", v.tag, Reason(Code.GIT_TAG_BUILD,
                                                      f"built by git tag {released[0]!r}'s pipelines (a release), "
                                                      "or by a ref GitLab no longer has pipelines to tell"), path)
            else:
                go.append(v.decision())
        before = self.report.count("deleted") + self.report.count("absent")
        if go:
            deletion.delete_tags(self.store, self.report, [repo], go, dry_run=self.ctx.dry_run,
                                 concurrency=self.ctx.settings.delete_concurrency)
        return self.report.count("deleted") + self.report.count("absent") - before


def run_project(project: int | str, *, gitlab: GitLab, conn: redis.Redis, settings: Settings,
                dry_run: bool | None = None, page_size: int = PAGE_SIZE,
                progress: Progress | None = None, by_operator: bool = False) -> dict:
    """Sweep one project; return its report. Raises SweepError for an unknown project and
    cleanup.CleanupIncomplete (with the report) when some deletions failed transiently.

    A scheduled sweep is held to ALLOWED_PROJECTS like an event cleanup (a delivery's claims
    put projects in the schedule); a sweep an operator runs by hand is their own choice."""
    dry = settings.dry_run if dry_run is None else dry_run
    ctx = cleanup.Context(gitlab, conn, settings, dry)
    try:
        ctx.project = gitlab.project(project)
    except NotFound:
        raise SweepError(f"project {project!r} not found (or GITLAB_TOKEN cannot see it)") from None
    report = Report(ctx.pid, None, "sweep", dry, None, ctx.project.get("path_with_namespace"))
    trail = audit.attach(report, conn, settings)
    if not by_operator and not settings.allowed_projects.allows(ctx.pid, ctx.project.get("path_with_namespace")):
        report.skip(f"project {report.project_path or ctx.pid} is not allowed by ALLOWED_PROJECTS")
        trail.skipped(report)
        forget_project(conn, project)
        return report.as_dict()
    return ProjectSweep(ctx, report, page_size=page_size, progress=progress).run()
