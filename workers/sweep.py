"""Reconciliation ("sweep"): find the image tags of branches that no longer exist and clean them.

GitLab never re-sends a failed delivery, sends no Push Hook at all for a push that changes
more than three branches, and nothing arrives while the service is down: branches vanish
without tagsweeper hearing of it. A sweep goes over every tag of a project's registry
repositories, a page at a time, and deletes only what it can show belongs to a dead branch
(see `rules.sweep_tag` / `rules.sweep_commit`), with the same protection rules
(`rules.live_owners`, PROTECTED_TAGS) and the same deletion path as an event cleanup
(`cleanup.open_store`, `cleanup.delete_all`, `Report`). What it cannot attribute is kept and
reported as unclear.

Memory stays flat on big registries: tags are listed and decided a page at a time; what is
held for the whole sweep is the project's refs (live branches, git tags, known branch names)
and a bounded cache of commit lookups.

It runs by hand (`tagsweeper sweep`, workers/cli/sweep.py), as the job `workers.jobs.sweep_project`,
and on a schedule inside `tagsweeper worker` (`Scheduler`, SWEEP_CRON).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import redis

from workers import cleanup, history, pipelines, rules
from workers.common import audit
from workers.gitlab import AuthError, BadResponse, GitLab, GitLabError, NotFound, encode
from workers.registry import AuthError as RegistryAuthError
from workers.report import Report
from workers.common.projects import parse_project
from workers.common.settings import Settings
from workers.tagstore import RegistryTags

log = logging.getLogger("tagsweeper.sweep")

PROJECTS_KEY = "tagsweeper:projects"  # every project that reached a job (SADD by workers.jobs)
JOB_FUNC = "workers.jobs.sweep_project"
PAGE_SIZE = 100  # tags decided at once; GitLab's largest page
CACHE_SIZE = 4096  # commit lookups remembered across pages and repositories of one sweep
REFS_ASKED = 20  # a commit's refs: the first page is enough to know whether there are any
SWEEP_RETRY = (2, [300, 1800])  # a sweep with failed deletions is retried; the next one catches up anyway
FAILURE_TTL = 30 * 86400

Progress = Callable[[str], None]


class SweepError(Exception):
    """A sweep that cannot run as asked (unknown project or group); retrying will not help."""


# --- which projects the schedule sweeps --------------------------------------------------------

def remember_project(conn: redis.Redis, project_id: int | str) -> None:
    """Note that a project sent a delivery: the scheduled sweep covers it from now on."""
    conn.sadd(PROJECTS_KEY, str(project_id))


def forget_project(conn: redis.Redis, project_id: int | str) -> None:
    conn.srem(PROJECTS_KEY, str(project_id))


def scheduled_projects(conn: redis.Redis, settings: Settings) -> list[int | str]:
    """Every project that sent a delivery, and SWEEP_PROJECTS."""
    found: list[int | str] = []
    members = sorted(m.decode() if isinstance(m, bytes) else m for m in conn.smembers(PROJECTS_KEY))
    for value in [*members, *settings.sweep_projects]:
        try:
            project = parse_project(value)
        except ValueError:
            continue  # a blank member
        if project not in found:
            found.append(project)
    return found


# --- one project ------------------------------------------------------------------------------

class _Lru:
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


def remembered_branches(conn: redis.Redis, project_id: int) -> Iterator[str]:
    """Branches pipeline memory has SHAs for (SCAN over history's per-ref keys)."""
    prefix = history._ref_key(project_id, "branch", "")  # noqa: SLF001 - the key layout lives there
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    for key in conn.scan_iter(match=pattern, count=1000):
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        yield name[len(prefix):]


def gather(ctx: cleanup.Context, record: pipelines.Record) -> tuple[rules.SweepFacts, dict[int, rules.MergeRequest]]:
    """The project's refs, its merge requests, and every branch GitLab's record says existed.

    Dead branches come from every ref that ever ran a pipeline (`record`, synced from GitLab's
    pipelines API), from merge requests, and from Pipeline Hooks remembered."""
    gl, pid = ctx.gitlab, ctx.pid
    live_branches = {b["name"]: (b.get("commit") or {}).get("id", "") for b in gl.branches(pid)}
    live_tags = {t["name"]: (t.get("commit") or {}).get("id") or t.get("target", "") for t in gl.git_tags(pid)}
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
                pinned.setdefault(mr.sha, f"commit of open merge request !{iid}")
            if mr.own and source:
                open_sources.setdefault(source, f"source branch of open merge request !{iid}")
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
                    pinned.setdefault(c["id"], f"commit of open merge request !{iid}")
        except NotFound:
            pass
    for ref in record.refs():
        if rules.merge_request_of_ref(ref) is None and ref not in live_tags:
            known.setdefault(ref, "GitLab's pipelines")
    for name in remembered_branches(ctx.conn, pid):
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
        self.store = None
        self.pool: ThreadPoolExecutor | None = None
        self.scanned = self.kept_by_rule = self.unclear = 0
        self.known_dead = 0
        self._candidates = _Lru()  # short SHA -> frozenset of full SHAs
        self._built = _Lru()       # full SHA -> refs from pipeline memory
        self._refs = _Lru()        # full SHA -> refs GitLab lists (None: unknown commit)
        self.record = pipelines.Record(ctx.conn, ctx.pid)
        self.facts: rules.SweepFacts | None = None
        self.mrs: dict[int, rules.MergeRequest] = {}
        self.pipelines_read = 0

    def run(self) -> dict:
        ctx, report = self.ctx, self.report
        reason = self.prepare()
        if reason:
            report.skip(reason)
            return self.result()
        self.known_dead = len({b for b, _ in self.index.dead_tags.values()})
        repositories = list(self.gl.registry_repositories(ctx.pid))
        report.repositories = [_path(r) for r in repositories]
        if repositories:
            self.store = cleanup.open_store(ctx)
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
        failures = report.failures()
        if failures:
            first = failures[0]
            raise cleanup.CleanupIncomplete(
                f"{len(failures)} tag deletion(s) failed, e.g. {first['repository']}:{first['tag']}: "
                f"{first['reason']}; the sweep is retried and deletes what is left", result)
        return result

    def prepare(self) -> str | None:
        """Bring GitLab's pipelines record up to date and plan from GitLab's refs; return why
        nothing can be decided, or None."""
        self.pipelines_read = self.record.sync(self.gl)
        self.facts, self.mrs = gather(self.ctx, self.record)
        reason = implausible(self.facts)
        if reason is None:
            self.index = rules.sweep_index(self.facts, self.policy)
        return reason

    def result(self) -> dict:
        out = self.report.as_dict()
        out.update(scanned=self.scanned, kept_by_rule=self.kept_by_rule, unclear=self.unclear,
                   known_dead_branches=self.known_dead, pipelines_read=self.pipelines_read)
        return out

    # -- listing --------------------------------------------------------------------------------
    def sweep_repository(self, repo: dict, number: int, total: int) -> None:
        where = f"{self.report.project_path or self.ctx.pid}: {_path(repo)} ({number}/{total})"
        if isinstance(self.store, RegistryTags):
            # The registry pages by `last=<tag>`: deleting behind the cursor moves nothing.
            client, path = self.store._where(repo)  # noqa: SLF001 - the same client (and tokens) that deletes
            page: list[str] = []
            for name in client.tags(path, page_size=1000):
                page.append(name)
                if len(page) >= self.page_size:
                    self.decide_page(repo, page)
                    self._show(where)
                    page = []
            if page:
                self.decide_page(repo, page)
            self._show(where)
            return
        # GitLab's API pages by offset: deleting from a page moves what follows up into it,
        # so a page that lost tags is asked for again (skipping the names already decided).
        page_no, done = 1, set()
        while True:
            names, following = self._api_page(repo, page_no)
            fresh = [n for n in names if n not in done]
            removed = self.decide_page(repo, fresh) if fresh else 0
            self._show(where)
            done = set(names)
            if removed:
                continue
            if not following:
                return
            page_no = following

    def _api_page(self, repo: dict, number: int) -> tuple[list[str], int | None]:
        path = f"/projects/{self.ctx.pid}/registry/repositories/{int(repo['id'])}/tags"
        response = self.gl.request("GET", path, params={"page": number, "per_page": self.page_size})
        if response.status_code == 404:
            return [], None  # the repository went away meanwhile
        if response.status_code == 403:
            raise AuthError(f"GET {path}: forbidden (403): the token's user cannot list these tags", 403)
        try:
            items = response.json()
        except ValueError:
            raise BadResponse(f"GET {path}: GitLab answered HTTP {response.status_code} with no JSON") from None
        if not isinstance(items, list):
            raise BadResponse(f"GET {path}: expected a list")
        names = [t["name"] for t in items if isinstance(t, dict) and isinstance(t.get("name"), str)]
        following = response.headers.get("X-Next-Page", "").strip()
        return names, (int(following) if following.isdigit() and names else None)

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
            facts = self.commit_facts(refs)
            verdicts.extend(rules.sweep_commit(r, facts, self.index, self.policy) for r in refs)
        return self.apply(repo, verdicts)

    def commit_facts(self, refs: list[rules.CommitRef]) -> rules.CommitFacts:
        """Look up the commits of one page's SHA tags: the full SHAs short ones stand for, the refs
        GitLab's pipelines (and pipeline memory) say built each, then GitLab's refs for the commits
        no pipeline ran on."""
        shorts = sorted({r.value for r in refs if r.short})
        candidates = self._cached(self._candidates, shorts, self._resolve_short)
        shas = {r.value for r in refs if not r.short}
        shas.update(sha for c in candidates.values() for sha in c)
        built = self._cached(self._built, sorted(shas), None)
        ask = sorted(s for s in shas if not built[s])
        git_refs = self._cached(self._refs, ask, self._commit_refs)
        return rules.CommitFacts(candidates=candidates, built_on=built, git_refs=git_refs)

    def _cached(self, cache: _Lru, keys: list[str], lookup: Callable[[str], Any] | None) -> dict:
        found = {k: cache.get(k) for k in keys if k in cache}
        missing = [k for k in keys if k not in found]
        if missing:
            if lookup is None:  # GitLab's pipelines record and pipeline memory: two round trips
                values = self._built_on(missing)
            else:
                values = list(self.pool.map(lookup, missing))
            for key, value in zip(missing, values):
                cache.put(key, value)
                found[key] = value
        return found

    def _built_on(self, shas: list[str]) -> list[frozenset[str]]:
        """The labels of the refs that built each commit (rules.pipeline_label)."""
        built = self.record.refs_of(shas)
        remembered = history.refs_of(self.ctx.conn, project_id=self.ctx.pid, shas=shas)
        live_tags = self.facts.live_tags if self.facts else {}
        out = []
        for sha in shas:
            labels = {rules.pipeline_label(r, live_tags, self.mrs) for r in built.get(sha, ())}
            out.append(frozenset(labels | set(remembered.get(sha, ()))))
        return out

    def _resolve_short(self, short: str) -> frozenset[str]:
        """Every full SHA a short one may stand for. CI gives a short SHA tag only to a commit a
        pipeline built, so GitLab's pipelines (and pipeline memory) are asked first; a commit
        they do not know is resolved by GitLab's commits API (404 when git finds none, or more
        than one)."""
        built = set(self.record.with_prefix([short]).get(short, ()))
        built |= history.clashing_shas(self.ctx.conn, project_id=self.ctx.pid, shas={short})
        built = {s for s in built if s.startswith(short)}
        if built:
            return frozenset(built)
        try:
            commit = self.gl.get(f"/projects/{self.ctx.pid}/repository/commits/{encode(short)}")
        except NotFound:
            return frozenset()
        full = commit.get("id") if isinstance(commit, dict) else None
        if not rules.is_sha(full) or not full.startswith(short):
            return frozenset()
        return frozenset({full})

    def _commit_refs(self, sha: str) -> tuple[str, ...] | None:
        refs = self.gl.commit_refs(self.ctx.pid, sha, limit=REFS_ASKED)
        return None if refs is None else tuple(sorted(f"{kind}:{name}" for kind, name in refs))

    # -- acting ---------------------------------------------------------------------------------
    def apply(self, repo: dict, verdicts: list[rules.SweepVerdict]) -> int:
        path = _path(repo)
        doomed: list[rules.SweepVerdict] = []
        for v in verdicts:
            if v.action == "keep":
                self.kept_by_rule += 1  # counted, not listed: on a big registry that is most tags
            elif v.action == "unclear":
                self.unclear += 1
                self.report.add("kept", v.tag, f"unclear: {v.reason}", path)
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
                self.report.add("kept", v.tag, f"branch {again[0]!r} exists again", path)
            elif released:
                self.report.add("kept", v.tag, f"built by git tag {released[0]!r}'s pipelines (a release), "
                                               "or by a ref GitLab no longer has pipelines to tell", path)
            else:
                go.append(v.decision())
        before = self.report.count("deleted") + self.report.count("absent")
        if go:
            cleanup.delete_all(self.ctx, self.report, self.store, [repo], go)
        return self.report.count("deleted") + self.report.count("absent") - before


def _path(repo: dict) -> str:
    return repo.get("path") or str(repo.get("id"))


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


def run_group(group: int | str, *, gitlab: GitLab, conn: redis.Redis, settings: Settings,
              dry_run: bool | None = None, page_size: int = PAGE_SIZE,
              progress: Progress | None = None, by_operator: bool = False) -> dict:
    """Sweep every project of a group and its subgroups; one project's trouble does not stop the rest."""
    dry = settings.dry_run if dry_run is None else dry_run
    try:
        found = gitlab.get(f"/groups/{encode(group)}")
    except NotFound:
        raise SweepError(f"group {group!r} not found (or GITLAB_TOKEN cannot see it)") from None
    projects = [(p["id"], p.get("path_with_namespace")) for p in gitlab.paginate(
        f"/groups/{encode(group)}/projects", {"include_subgroups": "true", "with_shared": "false"})]
    reports, failed = [], 0
    for pid, path in projects:
        try:
            reports.append(run_project(pid, gitlab=gitlab, conn=conn, settings=settings, dry_run=dry,
                                       page_size=page_size, progress=progress, by_operator=by_operator))
        except cleanup.CleanupIncomplete as exc:
            reports.append(exc.report)
            failed += 1
        except (SweepError, GitLabError, RegistryAuthError) as exc:
            if isinstance(exc, AuthError) and exc.status == 401:
                raise  # a refused token fails every project alike
            log.warning("sweep of a group's project failed", extra={"project_id": pid, "error": str(exc)})
            reports.append({"project_id": pid, "project": path, "trigger": "sweep", "dry_run": dry,
                            "error": str(exc)})
            failed += 1
    return {"group_id": found.get("id"), "group": found.get("full_path") or str(group), "trigger": "sweep",
            "dry_run": dry, "projects": reports, "failed": failed}


# --- the schedule -------------------------------------------------------------------------------

def slot_of(cron: str, now: datetime) -> tuple[datetime, datetime]:
    """The schedule's latest time at or before `now`, and the one after it (cron in UTC)."""
    from croniter import croniter  # an RQ dependency

    now = now.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    slot = croniter(cron, now).get_prev(datetime)
    return slot, croniter(cron, slot).get_next(datetime)


def job_id(project: int | str, slot: datetime) -> str:
    """One id per project and time slot: however many workers enqueue it, it runs once."""
    if isinstance(project, int):
        ident = str(project)
    else:
        digest = hashlib.sha1(project.encode()).hexdigest()[:8]
        ident = re.sub(r"[^A-Za-z0-9_-]", "_", project)[:80] + "-" + digest
    return f"sweep-{ident}-{slot.astimezone(timezone.utc):%Y%m%dT%H%MZ}"


def enqueue_scheduled(conn: redis.Redis, settings: Settings, now: datetime | None = None) -> list[str]:
    """Enqueue the sweep of every scheduled project for the current time slot; return the new job ids.

    Idempotent per slot: the job ids are deterministic and enqueued with `unique=True`, and
    each job's id is kept for the slot's length, so a second call (another worker, a restart)
    enqueues nothing. A worker that starts after a missed slot enqueues that slot at once.
    """
    from rq import Queue, Retry
    from rq.exceptions import DuplicateJobError

    if not settings.sweep_cron:
        return []
    slot, following = slot_of(settings.sweep_cron, now or datetime.now(timezone.utc))
    keep = int((following - slot).total_seconds()) + 3600
    queue = Queue(settings.queue, connection=conn)
    enqueued = []
    for project in scheduled_projects(conn, settings):
        jid = job_id(project, slot)
        try:
            queue.enqueue_call(JOB_FUNC, kwargs={"project": project}, timeout=settings.sweep_timeout,
                               job_id=jid, unique=True, result_ttl=keep, failure_ttl=max(keep, FAILURE_TTL),
                               retry=Retry(max=SWEEP_RETRY[0], interval=SWEEP_RETRY[1]),
                               description=f"scheduled sweep of project {project}",
                               meta={"trigger": "sweep", "slot": slot.isoformat()})
        except DuplicateJobError:
            continue
        enqueued.append(jid)
    if enqueued:
        log.info("scheduled sweeps enqueued", extra={"slot": slot.isoformat(), "jobs": len(enqueued)})
    return enqueued


class Scheduler(threading.Thread):
    """Enqueues the scheduled sweeps from inside `tagsweeper worker`.

    RQ 3.0's cron (`rq cron`, rq.cron.CronScheduler) is a separate blocking process that
    installs signal handlers (main thread only), evaluates crons in local time and enqueues
    with fresh job ids, so every process running it would enqueue again. This thread checks
    once every `interval` seconds whether SWEEP_CRON reached a new slot and then calls
    `enqueue_scheduled`, whose deterministic job ids make several workers enqueue once.
    """

    def __init__(self, settings: Settings, *, interval: float = 30.0):
        super().__init__(name="tagsweeper-sweep-schedule", daemon=True)
        self.settings = settings
        self.interval = interval
        self.last_slot: datetime | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        conn = redis.Redis.from_url(self.settings.redis_url)
        try:
            while not self._halt.is_set():
                self.tick(conn)
                self._halt.wait(self.interval)
        finally:
            conn.close()

    def tick(self, conn: redis.Redis, now: datetime | None = None) -> list[str]:
        now = now or datetime.now(timezone.utc)
        try:
            slot, _ = slot_of(self.settings.sweep_cron, now)
            if slot == self.last_slot:
                return []
            enqueued = enqueue_scheduled(conn, self.settings, now)
            self.last_slot = slot
            return enqueued
        except Exception as exc:  # Redis away for a moment: the next tick tries again
            log.warning("scheduled sweep not enqueued", extra={"error": f"{type(exc).__name__}: {exc}"})
            return []

    def stop(self) -> None:
        self._halt.set()
