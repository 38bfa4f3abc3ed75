"""One branch cleanup: look again, gather the facts, plan with the rules, delete exactly the owned tags.

The web side only passed plain values from the delivery; here the worker asks GitLab
what is true now (is the branch really gone? does another merge request still use it?)
before a single tag is touched. The doomed tags go through workers/deletion.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from workers import deletion, deployments, history, locks, pipelines, rules
from workers.common import audit, metrics
from workers.common.settings import Settings
from workers.gitlab import GitLab, NotFound
from workers.report import Report
from workers.rules import Code, Reason

log = logging.getLogger("tagsweeper.cleanup")

TRIGGERS = ("merge", "branch_deleted", "manual")
MAX_MERGE_REQUESTS = 20  # older merge requests of a re-used branch name add little
MAX_REF_LOOKUPS = 200  # commits checked one request each for live refs that contain them


class CleanupError(Exception):
    """A cleanup that cannot run as asked (bad arguments); retrying will not help."""


class CleanupIncomplete(Exception):
    """Some deletions failed for a transient reason; the job is retried and finishes them."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Request:
    """What to clean, as plain values (the job's keyword arguments)."""

    project_id: int | str
    branch: str
    trigger: str
    shas: tuple[str, ...] = ()
    project_path: str | None = None
    mr_iid: int | None = None
    target_project_id: int | None = None
    target_branch: str | None = None
    default_branch: str | None = None
    delivery: str | None = None
    force: bool = False

    def validate(self) -> "Request":
        try:
            rules.check_branch_name(self.branch)
        except rules.RuleError as exc:
            raise CleanupError(str(exc)) from None
        if self.trigger not in TRIGGERS:
            raise CleanupError(f"trigger must be one of {', '.join(TRIGGERS)}, got {self.trigger!r}")
        if isinstance(self.project_id, bool) or not isinstance(self.project_id, (int, str)) \
                or (isinstance(self.project_id, str) and not self.project_id.strip()):
            raise CleanupError("project must be a numeric id or a path like group/project")
        if self.mr_iid is not None and (isinstance(self.mr_iid, bool) or not isinstance(self.mr_iid, int)):
            raise CleanupError("mr_iid must be an integer")
        return self


@dataclass
class Context:
    gitlab: GitLab
    conn: redis.Redis
    settings: Settings
    dry_run: bool
    project: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.project["id"]


def run(request: Request, *, gitlab: GitLab, conn: redis.Redis, settings: Settings,
        dry_run: bool | None = None) -> dict:
    """Run one cleanup and return its report (a JSON-able dict).

    Raises CleanupIncomplete when some deletions failed transiently, GitLabError when
    GitLab could not be asked at all, errors.AuthError when a token is refused, CleanupError
    for arguments that can never work.
    """
    request.validate()
    ctx = Context(gitlab, conn, settings, settings.dry_run if dry_run is None else dry_run)
    report = Report(request.project_id, request.branch, request.trigger, ctx.dry_run, request.delivery,
                    request.project_path)
    trail = audit.attach(report, conn, settings)  # every decision is audited and counted as it is made
    try:
        ctx.project = gitlab.project(request.project_id)
    except NotFound:
        raise CleanupError(f"project {request.project_id!r} not found (or GITLAB_TOKEN cannot see it)") from None
    report.project_id = ctx.pid
    report.project_path = ctx.project.get("path_with_namespace") or request.project_path

    # GitLab's id and path, not the delivery's claims. A manual cleanup is the operator's own choice.
    if request.trigger != "manual" and not settings.allowed_projects.allows(
            ctx.pid, ctx.project.get("path_with_namespace")):
        report.skip(f"project {report.project_path or ctx.pid} is not allowed by ALLOWED_PROJECTS")
        trail.skipped(report)
        return report.as_dict()

    # One cleanup of a branch at a time, on any worker: a second one waits here, then looks again.
    with locks.BranchLock(conn, ctx.pid, request.branch, ttl=settings.cleanup_lock_ttl):
        return _run_locked(ctx, request, report, trail)


def _run_locked(ctx: Context, request: Request, report: Report, trail) -> dict:
    """run() from "look again" on, under the branch's lock."""
    gitlab, settings = ctx.gitlab, ctx.settings
    reason = look_again(ctx, request)
    if reason:
        report.skip(reason)
        trail.skipped(report)
        return report.as_dict()

    facts = gather(ctx, request)
    decisions = rules.plan(facts, settings.policy)
    for d in decisions:
        if not d.delete:
            report.add("kept", d.tag, d.reason)
    doomed = [d for d in decisions if d.delete]
    repositories = list(gitlab.registry_repositories(ctx.pid))
    report.repositories = [deletion.repo_path(r) for r in repositories]
    if doomed and repositories:
        store = deletion.open_store(settings, gitlab, ctx.pid)
        try:
            deletion.delete_tags(store, report, repositories, doomed, dry_run=ctx.dry_run,
                                 concurrency=settings.delete_concurrency)
        finally:
            store.close()
            metrics.tally().add_requests("registry", store.calls())

    result = report.as_dict()
    raise_if_incomplete(report, result, "the job")
    return result


def held_by_environments(report: dict) -> bool:
    """Whether a cleanup that deleted for real kept tags only because live environments used
    them (rules.DEPLOYMENT_CODES): it is worth running again once they are stopped."""
    return not report.get("dry_run") and not report.get("skipped") and any(
        d["decision"] == "kept" and d.get("code") in rules.DEPLOYMENT_CODES for d in report.get("decisions", ()))


def raise_if_incomplete(report: Report, result: dict, retried: str) -> None:
    """Raise CleanupIncomplete, with the report, when some deletions failed (`retried` finishes them)."""
    failures = report.failures()
    if failures:
        first = failures[0]
        raise CleanupIncomplete(
            f"{len(failures)} tag deletion(s) failed, e.g. {first['repository']}:{first['tag']}: "
            f"{first['reason']}; {retried} is retried and deletes what is left", result)


def look_again(ctx: Context, request: Request) -> str | None:
    """Ask GitLab whether the cleanup still makes sense; return why not, or None."""
    gl, branch = ctx.gitlab, request.branch
    live = gl.branch(ctx.pid, branch)
    if request.trigger == "branch_deleted" and live:
        return f"branch {branch!r} exists again"
    if request.trigger == "merge" and live and not request.force:
        # Merged but kept (or pushed to again): a live branch's images are in use. Its deletion
        # (the Push Hook, or the sweep) cleans it.
        return f"branch {branch!r} still exists after the merge: it is cleaned when it is deleted"
    if request.trigger == "manual" and live and not request.force:
        return f"branch {branch!r} still exists: its images are in use (use --force to clean it anyway)"
    if live and live.get("protected") and not request.force:
        return f"branch {branch!r} is protected and still exists"
    if branch == ctx.project.get("default_branch"):
        return f"branch {branch!r} is the project's default branch"
    if request.force:
        return None
    if request.trigger in ("merge", "branch_deleted", "manual"):
        # An open merge request keeps its source branch's images in use, even with the branch gone.
        target = request.target_project_id or ctx.pid
        projects = [target] + ([ctx.pid] if ctx.pid != target else [])
        for project in projects:
            for mr in gl.merge_requests(project, state="opened", source_branch=branch):
                if mr.get("source_project_id", ctx.pid) == ctx.pid and mr.get("iid") != request.mr_iid:
                    return f"open merge request !{mr.get('iid')} still uses branch {branch!r}"
    return None


def gather(ctx: Context, request: Request) -> rules.Facts:
    """Collect, as plain values, everything the rules need to know: GitLab's record as of now.

    Which commits the branch built, and which other refs built them, come from GitLab's
    pipelines (`pipelines.Record`, brought up to date first), not from the Pipeline Hooks that
    happened to arrive; those only add candidates and protection, never take any away. What
    live environments run or may roll back to comes from GitLab's environments and deployments
    (`deployments.Protection`) the same way."""
    gl, pid, branch = ctx.gitlab, ctx.pid, request.branch
    record = pipelines.Record(ctx.conn, pid)
    record.sync(gl)
    live_branches = gl.branch_heads(pid)
    live_branches.pop(branch, None)
    live_tags = gl.tag_commits(pid)

    pinned: dict[str, str] = {}
    default = ctx.project.get("default_branch") or request.default_branch
    if default and default in live_branches:
        pinned[live_branches[default]] = Reason(Code.DEFAULT_BRANCH_HEAD,
                                                f"commit is the head of the default branch {default!r}")
    target_pid = request.target_project_id or pid
    if request.target_branch:
        if target_pid == pid:
            head = live_branches.get(request.target_branch)
        else:
            head = ((gl.branch(target_pid, request.target_branch) or {}).get("commit") or {}).get("id")
        if head:
            pinned.setdefault(head, Reason(Code.TARGET_BRANCH_HEAD,
                                           f"commit is the head of the target branch {request.target_branch!r}"))

    # The merge requests GitLab knows: the branch's own (every state) and every open one.
    mrs: dict[int, rules.MergeRequest] = {}
    for item in gl.merge_requests(pid, state="all", source_branch=branch):
        mr = rules.MergeRequest.from_api(item, pid)
        mrs.setdefault(mr.iid, mr)
    own_iids = sorted(mr.iid for mr in mrs.values() if mr.own and mr.source_branch == branch)
    open_sources: set[str] = set()
    for item in gl.merge_requests(pid, state="opened"):
        mr = rules.MergeRequest.from_api(item, pid)
        mrs[mr.iid] = mr
        if mr.own and mr.source_branch != branch:
            open_sources.add(mr.source_branch)
        if mr.sha:
            pinned.setdefault(mr.sha, Reason(Code.OPEN_MR_COMMIT,
                                             f"commit is the head of open merge request !{mr.iid}"))
    merged = list(mrs.values())
    if request.mr_iid is not None and target_pid != pid:  # a fork's merge request lives in the target
        try:
            merged.append(rules.MergeRequest.from_api(gl.merge_request(target_pid, request.mr_iid), pid))
        except NotFound:
            pass
    if target_pid == pid:  # a fork's fast-forward head is upstream's commit, not the fork's
        own_merged = [mr for mr in merged if mr.source_branch == branch]
        for sha, why in rules.fast_forward_pins(own_merged, live_branches).items():
            pinned.setdefault(sha, why)

    # The branch's commits: what GitLab ran its pipelines and its merge requests' pipelines on,
    # its merge requests' commits, and what the delivery and the Pipeline Hooks named.
    own_refs = [branch] + [f"refs/merge-requests/{iid}/{kind}" for iid in own_iids
                           for kind in ("head", "merge", "train")]
    shas = set(record.shas_of(own_refs))
    shas.update(s for s in request.shas if rules.is_sha(s))
    shas.update(history.branch_shas(ctx.conn, project_id=pid, branch=branch))
    mr_shas = merge_request_shas(ctx, request, target_pid, own_iids)
    shas.update(mr_shas)
    for sha, why in contained_elsewhere(ctx, branch, sorted(shas - mr_shas - set(pinned))).items():
        pinned.setdefault(sha, why)

    # Commits sharing a short SHA with one of ours: their `:short_sha` tag is the same name.
    asked, other_refs = built_elsewhere(ctx, record, branch, shas, alive=set(live_branches) | open_sources,
                                        live_tags=live_tags, mrs=mrs)
    # What live environments run or may roll back to: GitLab's deployments, asked again for an
    # environment where one of these commits was deployed beyond the newest the copy holds.
    protection = deployments.Protection(gl, ctx.conn, pid, ctx.settings.keep_deployments).load()
    protection.confirm(asked)
    in_use = protection.in_use(mrs)
    return rules.Facts(branch=branch, shas=frozenset(shas), default_branch=default,
                       live_branches=live_branches, live_tags=live_tags, pinned_shas=pinned,
                       other_refs=other_refs, deployed_shas=in_use.shas, deployed_refs=in_use.refs,
                       open_sources={name: Reason(Code.OPEN_MR_SOURCE,
                                                  f"tag of the source branch {name!r} of an open merge request")
                                     for name in sorted(open_sources - set(live_branches))})


def built_elsewhere(ctx: Context, record: pipelines.Record, branch: str, shas: set[str], *, alive: set[str],
                    live_tags: dict[str, str], mrs: dict[int, rules.MergeRequest]
                    ) -> tuple[list[str], dict[str, frozenset[str]]]:
    """Which live refs other than `branch` built each of `shas`, or a commit sharing its short SHA
    (whose `:short_sha` tag is the same name): GitLab's pipelines (`record`, synced), plus what
    Pipeline Hooks named. `alive`: the live branches and open merge requests' sources. Returns the
    commits asked about (shas and the clashing ones) and, per commit, its live builders as pipeline
    labels (rules.pipeline_label). Merge requests the pipelines' refs name are read from GitLab
    into `mrs`; a ref that may have been a git tag is asked once (Record.tag_refs)."""
    gl, pid = ctx.gitlab, ctx.pid
    prefixes = record.with_prefix(s[:8] for s in shas)
    clashes = {c for found in prefixes.values() for c in found} - shas
    clashes |= history.clashing_shas(ctx.conn, project_id=pid, shas=shas)
    asked = sorted(shas | clashes)
    built = record.refs_of(asked)
    unknown = {rules.merge_request_of_ref(r) for refs in built.values() for r in refs} - {None} - set(mrs)
    if unknown:
        for item in gl.merge_requests_by_iid(pid, sorted(unknown)):
            mr = rules.MergeRequest.from_api(item, pid)
            mrs.setdefault(mr.iid, mr)
    labels = {sha: {rules.pipeline_label(r, live_tags, mrs) for r in refs} for sha, refs in built.items()}
    for sha, refs in history.refs_of(ctx.conn, project_id=pid, shas=asked).items():
        labels.setdefault(sha, set()).update(refs)
    own = f"branch:{branch}"
    maybe_tags = {label.split(":", 1)[1] for found in labels.values() for label in found
                  if label.startswith("branch:") and label != own} - alive
    maybe_tags -= {mr.source_branch for mr in mrs.values() if mr.own}  # known to be branches
    tag_refs = record.tag_refs(gl, maybe_tags) if maybe_tags else set()
    other_refs: dict[str, frozenset[str]] = {}
    for sha, found in labels.items():
        live = frozenset(l for l in found if l != own and rules.label_is_live(l, alive, tag_refs))
        if live:
            other_refs[sha] = live
    return asked, other_refs


def contained_elsewhere(ctx: Context, branch: str, shas: list[str]) -> dict[str, str]:
    """SHAs that a live branch or tag contains, with the reason to keep their tags.

    A merge request's own commits are the branch's work (after a merge the target contains
    them too), so only the other SHAs are asked about: the commit a branch was created from,
    say. Pipeline memory would name the ref that built it, unless that hook was lost; GitLab
    knows which refs contain it. Past MAX_REF_LOOKUPS commits, the rest are kept unasked.
    """
    pinned: dict[str, str] = {}
    for i, sha in enumerate(shas):
        if i >= MAX_REF_LOOKUPS:
            pinned[sha] = Reason(Code.NOT_CHECKED, "not checked against live refs (more than MAX_REF_LOOKUPS commits)")
            continue
        refs = ctx.gitlab.commit_refs(ctx.pid, sha) or []
        live = [(kind, name) for kind, name in refs if not (kind == "branch" and name == branch)]
        if live:
            kind, name = live[0]
            pinned[sha] = Reason(Code.ON_LIVE_REF, f"commit is on live {kind} {name!r}")
    return pinned


def merge_request_shas(ctx: Context, request: Request, target_pid: int | str, own_iids: list[int]) -> set[str]:
    """Commits of the branch's merge requests: the merged one, or every one it was the source of."""
    gl = ctx.gitlab
    if request.mr_iid is not None:
        mrs = [(target_pid, request.mr_iid)]
    else:
        mrs = [(ctx.pid, iid) for iid in sorted(own_iids, reverse=True)[:MAX_MERGE_REQUESTS]]
    shas: set[str] = set()
    for project, iid in mrs:
        try:
            shas.update(c.get("id", "") for c in gl.merge_request_commits(project, iid))
        except NotFound:
            log.info("merge request not found", extra={"project_id": project, "mr_iid": iid})
    return {s for s in shas if rules.is_sha(s)}
