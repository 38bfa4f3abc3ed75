"""The GitLab emulator's state model: projects with a light commit graph, merge requests with
GitLab's merge methods, and pipelines. Plain Python that tests seed in-process;
`tests.support.gitlab_emulator` serves it over HTTP (and re-exports everything here).

Every mutating method takes the emulator's one lock (`GitLabEmulator.lock`, reentrant).

What was checked against GitLab's source (gitlabhq, GitLab 17-18) and docs:

- Merge methods, `MergeRequests::MergeStrategies::FromSourceBranch#execute_git_merge!`:
  a merge-commit merge returns `{commit_sha: M, merge_commit_sha: M}`; a fast-forward returns
  only `{commit_sha: H}`, so `merge_commit_sha` stays null and the target's head becomes the MR's
  head `sha`; with squash, `squash_commit_sha` is the squash commit in both modes (the squash is
  what then gets merged or fast-forwarded). A fast-forward that would not advance the target
  fails ("Fast-forward merge did not advance the target branch"), and in fast-forward mode a
  source that is behind its target is refused ("Only fast-forward merge is allowed for your
  project. Please update your source branch"). MR API docs: `merge_commit_sha` "Returns null
  until merged", `squash_commit_sha` "SHA of the squash commit. Empty until merged"; `sha` is the
  MR's diff head.
- Pipelines: statuses (`Ci::HasStatus`), sources (`Enums::Ci::Pipeline.sources`), "finished" is
  success/failed/canceled (`HasStatus.finished`), `started_at` is set on the way to running and
  `finished_at` on success/failed/canceled, `before_sha` falls back to forty zeros, merge request
  pipelines never have `tag: true`, a pipeline keeps its commits around (`keep_around_commits`).
- Environments and deployments (app/models/environment.rb, app/models/deployment.rb,
  lib/gitlab/slug/environment.rb, Environments::StopService, Ci::Deployments::DestroyService,
  Deployments::UpdateEnvironmentService; GitLab 17-18): see the "seeding: environments and
  deployments" section of `Project` for what each rule comes from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

ZERO_TIME = "2024-01-01T00:00:00.000Z"
BLANK_SHA = "0" * 40
UTC = dt.timezone.utc
MS = dt.timedelta(milliseconds=1)

# Ci::HasStatus::AVAILABLE_STATUSES (GitLab 17-18, with waiting_for_callback and canceling).
PIPELINE_STATUSES = ("created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending",
                     "running", "success", "failed", "canceling", "canceled", "skipped", "manual",
                     "scheduled")
FINISHED_STATUSES = ("success", "failed", "canceled")  # scope=finished; these set finished_at
# Enums::Ci::Pipeline.sources (without "unknown", which GitLab refuses on create).
PIPELINE_SOURCES = ("push", "web", "trigger", "schedule", "api", "external", "pipeline", "chat", "webide",
                    "merge_request_event", "external_pull_request_event", "parent_pipeline",
                    "ondemand_dast_scan", "ondemand_dast_validation", "security_orchestration_policy",
                    "container_registry_push", "duo_workflow", "pipeline_execution_policy_schedule")
DANGLING_SOURCES = ("webide", "parent_pipeline", "ondemand_dast_scan", "ondemand_dast_validation",
                    "security_orchestration_policy", "container_registry_push", "duo_workflow",
                    "pipeline_execution_policy_schedule")
# Enums::Ci::Pipeline.ci_branch_sources: what a merge request's branch pipelines may come from.
CI_BRANCH_SOURCES = tuple(s for s in PIPELINE_SOURCES if s not in DANGLING_SOURCES and s != "merge_request_event")
MERGE_METHODS = ("merge", "ff", "squash", "squash_ff")
MR_REF = re.compile(r"refs/merge-requests/(\d+)/(head|merge|train)")

# Deployment.statuses (GitLab 17-18: `skipped` and `blocked` included; the API's `status` filter takes
# every key). FINISHED set finished_at; Deployment Hooks fire on running and the finished ones.
DEPLOYMENT_STATUSES = ("created", "running", "success", "failed", "canceled", "skipped", "blocked")
DEPLOYMENT_FINISHED = ("success", "failed", "canceled")
DEPLOYMENT_HOOK_STATUSES = ("running", "success", "failed", "canceled")
# Deployment's state machine: status -> the statuses it may be reached from (None: any other one).
DEPLOYMENT_TRANSITIONS = {"running": ("created", "blocked"), "blocked": ("created",), "created": ("skipped",),
                          "success": None, "failed": None, "canceled": None, "skipped": None}
ENVIRONMENT_STATES = ("available", "stopping", "stopped")  # Environment.valid_states
ENVIRONMENT_TIERS = ("production", "staging", "testing", "development", "other")
AUTO_STOP_SETTINGS = ("always", "with_action")
# Gitlab::Regex.environment_name_regex: letters, digits, '-', '_', '/', '$', '{', '}', '.', spaces; not
# starting or ending with '/'. At most 255 characters.
ENVIRONMENT_NAME = re.compile(r"(?!/)[a-zA-Z0-9_/${}. -]+(?<!/)")
# The one user the emulator knows (the API's UserBasic); `HttpCore.USER` is this dict.
EMULATOR_USER = {"id": 1, "username": "emulator", "name": "GitLab Emulator", "state": "active",
                 "avatar_url": None, "web_url": "http://gitlab.invalid/emulator"}

_FALLBACK_LOCK = threading.RLock()  # for a Project built without an emulator


# ---------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------

def random_sha() -> str:
    return secrets.token_hex(20)


def parse_time(value: Any) -> dt.datetime:
    """A datetime (naive = UTC) or an ISO 8601 string -> an aware UTC datetime cut to milliseconds,
    GitLab's precision in the API. ValueError when it is neither."""
    if isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        value = dt.datetime.fromisoformat(text)  # a date alone is midnight
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"not a time: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def iso(t: dt.datetime) -> str:
    """GitLab's timestamp format: UTC, milliseconds, Z."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _now() -> dt.datetime:
    return parse_time(dt.datetime.now(UTC))


def _now_iso() -> str:
    return iso(_now())


def _base_url(emu: Any) -> str:
    """The emulator's URL while it serves, else a placeholder (a state built without a server)."""
    return emu.url if emu is not None and getattr(emu, "_server", None) is not None else "http://gitlab.invalid"


def environment_slug(name: str) -> str:
    """Gitlab::Slug::Environment#generate: lowercase, every character but a-z0-9 becomes '-', 'env-'
    in front unless it starts with a letter, repeated '-' squeezed; then, when the result is longer
    than 24 characters OR differs from the name at all (e.g. "review/x", "PRODUCTION"), its first 17
    characters, a '-' and a 6-character suffix from the name's SHA-256 (in base 36); otherwise
    it loses one trailing '-'. So "production" -> "production", "review/1-foo" -> "review-1-foo-<6>"."""
    name = name or ""
    slug = re.sub(r"[^a-z0-9]", "-", name.lower())
    if not re.match(r"[a-z]", slug):
        slug = "env-" + slug
    slug = re.sub(r"-+", "-", slug)
    if len(slug) > 24 or slug != name:
        n = int(hashlib.sha256(name.encode()).hexdigest(), 16)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"
        b36 = ""
        while n:
            n, r = divmod(n, 36)
            b36 = digits[r] + b36
        slug = slug[:17]
        if not slug.endswith("-"):
            slug += "-"
        return slug + (b36 or "0")[-6:]
    return slug[:-1] if slug.endswith("-") else slug


def guess_tier(name: str) -> str:
    """Environment#guess_tier: the tier GitLab gives an environment created without one."""
    for pattern, tier in ((r"(dev|review|trunk)", "development"),
                          (r"(test|tst|int|ac(ce|)pt|qa|qc|control|quality)", "testing"),
                          (r"(st(a|)g|mod(e|)l|pre|demo|non)", "staging"),
                          (r"(pr(o|)d|live)", "production")):
        if re.search(pattern, name, re.IGNORECASE):
            return tier
    return "other"


def _norm_commits(commits: Iterable[str | dict], branch: str, titles: dict[str, str] | None = None) -> list[dict]:
    out = []
    for i, c in enumerate(commits):
        c = {"id": c} if isinstance(c, str) else dict(c)
        c.setdefault("title", (titles or {}).get(c["id"]) or f"Commit {i + 1} on {branch}")
        c["short_id"] = c["id"][:8]
        out.append(c)
    return out


# ---------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------

@dataclass
class MergeRequest:
    id: int
    iid: int
    project_id: int  # the TARGET project: MRs live there, as in GitLab
    source_branch: str
    target_branch: str
    source_project_id: int
    state: str = "opened"
    # Oldest first, as given; the API lists them newest first like GitLab.
    commits: list[dict] = field(default_factory=list)
    title: str = ""
    merge_commit_sha: str | None = None
    squash: bool = False
    squash_commit_sha: str | None = None
    draft: bool = False
    force_remove_source_branch: bool = False
    created_at: str = field(default_factory=_now_iso)
    updated_at: str = field(default_factory=_now_iso)
    merged_at: str | None = None
    closed_at: str | None = None
    # "branch": derived from the source branch's history and refreshed when it is pushed to;
    # "given": the seeded `commits`; "fallback": the legacy one commit (source head or random).
    commits_from: str = "given"
    # Every commit the MR ever had, in every version of its diff (GitLab's all_commits).
    all_commit_shas: list[str] = field(default_factory=list)
    # True once merged by Project.merge(): the target's history then holds the result.
    merged_in_graph: bool = False

    @property
    def target_project_id(self) -> int:
        return self.project_id

    @property
    def sha(self) -> str | None:
        return self.commits[-1]["id"] if self.commits else None

    def _set_commits(self, commits: list[dict]) -> None:
        self.commits = commits
        for c in commits:
            if c["id"] not in self.all_commit_shas:
                self.all_commit_shas.append(c["id"])


@dataclass
class Pipeline:
    id: int  # unique across the emulator
    iid: int  # per project
    project_id: int
    sha: str
    ref: str  # a branch, a tag, or refs/merge-requests/<iid>/{head,merge,train}
    status: str
    source: str
    tag: bool
    created_at: str  # ISO 8601, UTC, milliseconds, Z
    updated_at: str
    before_sha: str = BLANK_SHA
    name: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    _emu: Any = field(default=None, repr=False, compare=False)

    @property
    def web_url(self) -> str:
        p = self._emu.projects.get(self.project_id) if self._emu is not None else None
        base = self._emu.url if self._emu is not None and self._emu._server is not None else "http://gitlab.invalid"
        return f"{base}/{p.path if p else self.project_id}/-/pipelines/{self.id}"

    @property
    def merge_request_iid(self) -> int | None:
        m = MR_REF.fullmatch(self.ref)
        return int(m.group(1)) if m else None

    @property
    def duration(self) -> int | None:
        if self.started_at and self.finished_at:
            return int((parse_time(self.finished_at) - parse_time(self.started_at)).total_seconds())
        return None

    def _set_status(self, status: str, at: dt.datetime) -> None:
        self.status = status
        self.updated_at = iso(at)
        if status == "running" or status in FINISHED_STATUSES:
            self.started_at = self.started_at or (self.created_at if status != "running" else iso(at))
        if status in FINISHED_STATUSES:
            self.finished_at = iso(at)


@dataclass
class RegistryRepository:
    id: int
    name: str
    path: str
    project_id: int
    created_at: str = field(default_factory=_now_iso)


@dataclass
class Environment:
    """An environment as GitLab stores it (app/models/environment.rb). `slug` is made once, at
    creation (`environment_slug`), and never changes; `tier` defaults to `guess_tier(name)`."""
    id: int  # unique across the emulator
    project_id: int
    name: str
    slug: str
    state: str  # available, stopping, stopped
    tier: str
    external_url: str | None
    created_at: str
    updated_at: str
    auto_stop_at: str | None = None
    auto_stop_setting: str = "always"
    description: str | None = None
    _project: Any = field(default=None, repr=False, compare=False)

    @property
    def deployments(self) -> list["Deployment"]:
        """Every deployment of this environment, in id order."""
        if self._project is None:
            return []
        return [d for d in self._project.deployments.values() if d.environment_id == self.id]

    @property
    def last_deployment(self) -> "Deployment | None":
        """Environment#last_deployment: `success.ordered`, the successful deployment that finished last
        (ORDER BY finished_at DESC; ties by id here)."""
        done = [d for d in self.deployments if d.status == "success"]
        return max(done, key=lambda d: (d.finished_at or "", d.id)) if done else None

    def basic_json(self) -> dict:
        """Entities::EnvironmentBasic, as deployments embed it."""
        return {"id": self.id, "name": self.name, "slug": self.slug, "external_url": self.external_url,
                "created_at": self.created_at, "updated_at": self.updated_at}

    def as_json(self, *, last_deployment: bool = False) -> dict:
        """Entities::Environment. The list (`last_deployment=False`) has `project` and no
        `last_deployment`, as current GitLab; the single environment has `last_deployment` (the
        newest successful deployment, without its `environment`) and no `project`."""
        out = self.basic_json()
        out["tier"] = self.tier
        if not last_deployment and self._project is not None:
            out["project"] = self._project._basic_project_details()
        if last_deployment:
            last = self.last_deployment
            out["last_deployment"] = None if last is None else {
                k: v for k, v in last.as_json().items() if k != "environment"}
        out.update({"state": self.state, "auto_stop_at": self.auto_stop_at, "description": self.description,
                    "auto_stop_setting": self.auto_stop_setting})
        return out


@dataclass
class Deployment:
    """A deployment as GitLab stores it (app/models/deployment.rb): made by a CI job (`deployable_id`),
    `iid` per project, `finished_at` set on each move to success/failed/canceled. `transitions`:
    (status, time) of every status it took, oldest first (what a Deployment Hook's
    `status_changed_at` is)."""
    id: int  # unique across the emulator, in creation order
    iid: int  # per project
    project_id: int
    environment_id: int
    ref: str
    sha: str
    tag: bool
    status: str
    created_at: str
    updated_at: str
    finished_at: str | None = None
    deployable_id: int | None = None
    job_name: str = "deploy"
    user: dict = field(default_factory=lambda: dict(EMULATOR_USER))
    transitions: list[tuple[str, str]] = field(default_factory=list)
    _project: Any = field(default=None, repr=False, compare=False)

    @property
    def environment(self) -> Environment:
        return self._project.environments[self.environment_id]

    @property
    def short_sha(self) -> str:
        return self.sha[:8]

    # The job's status for each deployment status (Deployment#sync_status_with maps a job's `manual` to
    # `blocked`; a job that waits is `created` to its deployment).
    JOB_STATUS = {"created": "created", "running": "running", "success": "success", "failed": "failed",
                  "canceled": "canceled", "skipped": "skipped", "blocked": "manual"}

    @property
    def deployable(self) -> dict | None:
        """The CI job that deploys (a small Entities::Ci::Job): its pipeline is the project's newest
        pipeline on the same sha and ref when there is one, else null (the emulator makes none)."""
        if self.deployable_id is None:
            return None
        p = self._project
        emu = p._emu if p is not None else None
        base, path = _base_url(emu), (p.path if p is not None else str(self.project_id))
        pipeline = None
        if p is not None:
            same = [pl for pl in p.pipelines.values() if pl.sha == self.sha and pl.ref == self.ref]
            if same:
                pl = same[-1]
                pipeline = {"id": pl.id, "iid": pl.iid, "project_id": pl.project_id, "sha": pl.sha, "ref": pl.ref,
                            "status": pl.status, "source": pl.source, "created_at": pl.created_at,
                            "updated_at": pl.updated_at, "web_url": pl.web_url}
        started = None if self.status in ("created", "blocked", "skipped") else self.created_at
        duration = None
        if started and self.finished_at:
            duration = (parse_time(self.finished_at) - parse_time(started)).total_seconds()
        return {
            "id": self.deployable_id, "status": self.JOB_STATUS[self.status], "stage": "deploy",
            "name": self.job_name, "ref": self.ref, "tag": self.tag, "coverage": None, "allow_failure": False,
            "created_at": self.created_at, "started_at": started, "finished_at": self.finished_at,
            "erased_at": None, "duration": duration, "queued_duration": None, "user": dict(self.user),
            "commit": {"id": self.sha, "short_id": self.short_sha, "title": f"Commit {self.short_sha}"},
            "pipeline": pipeline, "web_url": f"{base}/{path}/-/jobs/{self.deployable_id}",
            "project": {"ci_job_token_scope_enabled": False}, "artifacts": [], "runner": None,
            "artifacts_expire_at": None, "archived": False, "tag_list": [],
            **({"failure_reason": "script_failure"} if self.status == "failed" else {}),
        }

    def as_json(self) -> dict:
        """Entities::Deployment (the list and the single deployment alike, as GitLab's FOSS
        DeploymentExtended adds nothing). GitLab exposes no `finished_at` here; the job has one."""
        return {"id": self.id, "iid": self.iid, "ref": self.ref, "sha": self.sha, "created_at": self.created_at,
                "updated_at": self.updated_at, "user": dict(self.user),
                "environment": self.environment.basic_json(), "deployable": self.deployable, "status": self.status}

    def status_changed_at(self, status: str | None = None) -> str:
        """When the deployment last moved to `status` (default: its current one); its created_at when it
        never did (a deployment seeded straight as success asked for its `running` moment)."""
        status = status or self.status
        for s, at in reversed(self.transitions):
            if s == status:
                return at
        return self.created_at


class _Branches(dict):
    """`Project.branches`: name -> head SHA, a plain dict to read and write. Writing a head is
    `git update-ref`: the branch then contains exactly that commit's ancestry (just the commit
    when the emulator knows no parents for it, which is what a bare `branches[name] = sha` always
    meant). Deleting forgets the branch's history but not its commits, and stops the environments
    GitLab stops when a branch goes (`Project._stop_environments_for_branch`). Assigning a whole new
    dict (`project.branches = {...}`) rewrites the refs without that side effect."""

    def __init__(self, project: "Project", initial: dict | None = None):
        super().__init__()
        self._project = project
        if initial:
            self.update(initial)

    def __setitem__(self, name: str, sha: str) -> None:
        self._project._update_ref(name, sha)

    def __delitem__(self, name: str) -> None:
        with self._project._lock():
            dict.__delitem__(self, name)
            self._project.history.pop(name, None)
            self._project._stop_environments_for_branch(name)

    def pop(self, name, *default):
        with self._project._lock():
            if name not in self:
                if default:
                    return default[0]
                raise KeyError(name)
            sha = dict.__getitem__(self, name)
            del self[name]
            return sha

    def popitem(self):
        with self._project._lock():
            name, sha = next(reversed(self.items()))
            del self[name]
            return name, sha

    def clear(self) -> None:
        with self._project._lock():
            names = list(self)
            dict.clear(self)
            self._project.history.clear()
            for name in names:
                self._project._stop_environments_for_branch(name)

    def update(self, *args, **kwargs) -> None:
        for name, sha in dict(*args, **kwargs).items():
            self[name] = sha

    def setdefault(self, name, sha=None):
        if name not in self:
            self[name] = sha
        return self[name]

    def __ior__(self, other):
        self.update(other)
        return self

    def _raw_set(self, name: str, sha: str) -> None:
        dict.__setitem__(self, name, sha)


@dataclass
class Project:
    id: int
    path: str  # path_with_namespace, e.g. "acme/shop"
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    merge_requests: dict[int, MergeRequest] = field(default_factory=dict)
    registry_repositories: list[RegistryRepository] = field(default_factory=list)
    protected_tag_patterns: list[str] = field(default_factory=list)
    protected_branches: list[str] = field(default_factory=list)
    hooks: list[dict] = field(default_factory=list)
    # Commits seeded with add_commit: sha -> the branches whose history contains it.
    commits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Live branch -> every commit it contains, oldest first (linearised ancestry, head last).
    history: dict[str, list[str]] = field(default_factory=dict)
    # Pipeline id -> pipeline, in id order.
    pipelines: dict[int, Pipeline] = field(default_factory=dict)
    _emu: Any = field(default=None, repr=False, compare=False)
    # Every commit the graph ever held -> its parents (a root has none). Never shrinks: GitLab
    # keeps commits with pipelines or merge requests around after their branch is gone.
    _parents: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)
    # Commits kept around without being in the graph (pipelines' SHAs), also after deletion.
    _kept: dict[str, None] = field(default_factory=dict, repr=False, compare=False)
    _pipeline_iid: int = field(default=0, repr=False, compare=False)
    # Environment id -> environment, and deployment id -> deployment, both in id order.
    environments: dict[int, Environment] = field(default_factory=dict)
    deployments: dict[int, Deployment] = field(default_factory=dict)
    _deployment_iid: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        initial = dict(self.branches)
        object.__setattr__(self, "branches", _Branches(self))
        self.branches.update(initial)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "branches" and "_parents" in self.__dict__ and not isinstance(value, _Branches):
            # project.branches = {...}: same as clearing and writing every head.
            self.history.clear()
            object.__setattr__(self, name, _Branches(self))
            self.branches.update(value)
            return
        object.__setattr__(self, name, value)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def namespace_path(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def _lock(self):
        return self._emu.lock if self._emu is not None else _FALLBACK_LOCK

    # -- the commit graph (callers hold the lock) -------------------------------------
    def _ancestry(self, sha: str) -> list[str]:
        """The commit and everything reachable from it through recorded parents, oldest first,
        first parents before second ones; the commit alone when it has no recorded parents."""
        out: list[str] = []
        done: set[str] = set()
        stack: list[tuple[str, bool]] = [(sha, False)]
        while stack:
            commit, expanded = stack.pop()
            if expanded:
                out.append(commit)
                continue
            if commit in done:
                continue
            done.add(commit)
            stack.append((commit, True))
            for parent in reversed(self._parents.get(commit, ())):
                if parent not in done:
                    stack.append((parent, False))
        return out

    def _record(self, sha: str, parents: tuple[str, ...] = ()) -> None:
        self._parents.setdefault(sha, tuple(p for p in parents if p))

    def _chain(self, base: str | None, commits: Iterable[str]) -> list[str]:
        """Give commits without recorded parents a linear chain on `base`; return them."""
        out, prev = [], base
        for c in commits:
            self._record(c, (prev,) if prev else ())
            out.append(c)
            prev = c
        return out

    def _set_branch(self, name: str, head: str, history: list[str]) -> None:
        self.branches._raw_set(name, head)
        self.history[name] = history

    def _update_ref(self, name: str, sha: str) -> None:
        """`branches[name] = sha`: the branch now holds `sha` and its ancestry."""
        with self._lock():
            self._record(sha)
            self._set_branch(name, sha, self._ancestry(sha))
            self._refresh_merge_requests(name)

    def _head_history(self, name: str) -> list[str]:
        """The branch's history, its head last (also when a test edited `history` by hand)."""
        head = self.branches[name]
        hist = self.history.get(name) or []
        return hist if hist and hist[-1] == head else [*hist, head]

    def _refresh_merge_requests(self, branch: str) -> None:
        """GitLab's MergeRequests::RefreshService for a push to `branch`: the open merge requests
        whose commits came from it get the branch's commits that their target lacks."""
        if self._emu is None:
            return
        for mr in list(self._emu._derived_mrs.get((self.id, branch), ())):
            target = self._emu.projects.get(mr.project_id)
            if mr.state != "opened" or target is None or target.merge_requests.get(mr.iid) is not mr \
                    or branch not in self.branches:
                continue
            titles = {c["id"]: c["title"] for c in mr.commits}
            mr._set_commits(_norm_commits(target._mr_commits_from(self, branch, mr.target_branch),
                                          branch, titles))
            mr.updated_at = _now_iso()

    def _mr_commits_from(self, source: "Project", source_branch: str, target_branch: str) -> list[str]:
        """The source branch's commits that this (target) project's target branch lacks, oldest first."""
        src = source._head_history(source_branch)
        tgt = set(self._head_history(target_branch)) if target_branch in self.branches else set()
        return [c for c in src if c not in tgt]

    # -- seeding: branches, tags, commits ---------------------------------------------
    def add_branch(self, name: str, sha: str | None = None, from_branch: str | None = None) -> str:
        """Create (or re-create) branch `name`; returns its head.

        - `add_branch(name)`: a new root commit; `add_branch(name, sha)`: the branch at `sha` (with
          `sha`'s known ancestry when the emulator already has that commit, else `sha` alone);
        - `add_branch(name, from_branch=X)`: at X's head, containing all of X's history;
        - `add_branch(name, sha, from_branch=X)`: a new commit `sha` on top of X (an already known
          `sha` keeps its own ancestry)."""
        with self._lock():
            if from_branch is not None and (sha is None or sha not in self._parents):
                base = list(self._head_history(from_branch))  # KeyError: no such branch
                if sha is not None:
                    self._record(sha, (base[-1],))
                    base.append(sha)
                self._set_branch(name, base[-1], base)
            else:
                sha = sha or random_sha()
                self._record(sha)
                self._set_branch(name, sha, self._ancestry(sha))
            sha = self.branches[name]
            self._refresh_merge_requests(name)
            return sha

    def push(self, branch: str, sha: str | None = None, count: int = 1) -> str:
        """Push `count` new commits (random SHAs, or the one `sha`) onto an existing branch;
        returns the new head. KeyError when the branch does not exist (use add_branch). Open
        merge requests whose commits come from the branch get the new commits."""
        with self._lock():
            if branch not in self.branches:
                raise KeyError(branch)
            if count < 1 or (sha is not None and count != 1):
                raise ValueError("push one given sha, or count >= 1 random ones")
            hist = self._head_history(branch)
            if sha is not None and sha in self._parents:
                if sha in hist:
                    raise ValueError(f"{sha[:8]} is already on {branch!r}")
                hist = hist + [c for c in self._ancestry(sha) if c not in set(hist)]  # fast-forward onto it
            else:
                new = [sha] if sha is not None else [random_sha() for _ in range(count)]
                hist = hist + self._chain(hist[-1], new)
            self._set_branch(branch, hist[-1], hist)
            self._refresh_merge_requests(branch)
            return hist[-1]

    def delete_branch(self, name: str) -> None:
        """Delete a branch (no error when missing). Its commits stay known: keep-around refs."""
        with self._lock():
            self.branches.pop(name, None)

    def add_tag(self, name: str, sha: str | None = None) -> str:
        with self._lock():
            self.tags[name] = sha or random_sha()
            return self.tags[name]

    def add_commit(self, sha: str | None = None, on: tuple[str, ...] | list[str] = ()) -> str:
        """A commit in the history of the branches `on` (see GitLabEmulator.commit_refs). It stays
        known after those branches are deleted, as GitLab's keep-around refs keep built commits."""
        with self._lock():
            sha = sha or random_sha()
            self.commits[sha] = tuple(on)
            return sha

    # -- seeding: merge requests ------------------------------------------------------
    def add_merge_request(self, iid: int, source_branch: str, target_branch: str = "main",
                          state: str = "opened", commits: list[str | dict] | None = None,
                          source_project_id: int | None = None, title: str = "",
                          merge_commit_sha: str | None = None, *, squash: bool = False,
                          squash_commit_sha: str | None = None, draft: bool = False) -> MergeRequest:
        """`commits`: shas (or {id, title} dicts), oldest first, used as given; [] is an MR without
        commits (nothing to merge: GitLab lists none). Without `commits` (None): when the source
        branch exists, its commits that the target branch lacks (possibly none), kept up to date
        as the source branch is pushed to; when it does not, one random commit.

        A merge request seeded as merged (state="merged") did not go through Project.merge():
        commit_refs puts its commits and merge commit on the target branch (its squash commit and
        merge commit instead when `squash`)."""
        if state not in ("opened", "closed", "merged", "locked"):
            raise ValueError(f"bad merge request state {state!r}")
        with self._lock():
            src_id = self.id if source_project_id is None else source_project_id
            src = self._emu.projects.get(src_id) if self._emu is not None else (self if src_id == self.id else None)
            commits_from = "given"
            if commits is None:
                if src is not None and source_branch in src.branches:
                    commits, commits_from = self._mr_commits_from(src, source_branch, target_branch), "branch"
                else:
                    commits, commits_from = [random_sha()], "fallback"
            now = _now_iso()
            mr = MergeRequest(
                id=self._emu._next_id("mr") if self._emu is not None else iid, iid=iid, project_id=self.id,
                source_branch=source_branch, target_branch=target_branch, source_project_id=src_id,
                state=state, title=title or f"Merge {source_branch} into {target_branch}",
                merge_commit_sha=merge_commit_sha, squash=squash, squash_commit_sha=squash_commit_sha,
                draft=draft, created_at=now, updated_at=now, commits_from=commits_from,
                merged_at=now if state == "merged" else None, closed_at=now if state == "closed" else None,
            )
            mr._set_commits(_norm_commits(commits, source_branch))
            self.merge_requests[iid] = mr
            if commits_from == "branch" and self._emu is not None:
                self._emu._derived_mrs.setdefault((src_id, source_branch), []).append(mr)
            return mr

    def _open_mr(self, iid: int) -> MergeRequest:
        mr = self.merge_requests[iid]  # KeyError: unknown
        if mr.state != "opened":
            raise ValueError(f"merge request !{iid} is {mr.state}, not opened")
        return mr

    def merge(self, iid: int, method: str = "merge", remove_source_branch: bool = False) -> MergeRequest:
        """Merge an open merge request the way GitLab does (see the module docstring for the source):

        - "merge" (merge commit): new merge commit M (parents: target head, MR head); the target
          gets the MR's commits it lacks, then M; merge_commit_sha=M, squash_commit_sha=None.
        - "ff" (fast-forward merge): the target's head becomes the MR's head `sha`; the target gets
          the MR's commits; merge_commit_sha=None. Refused when the source branch is behind the
          target, or when nothing would advance.
        - "squash" (merge commit with squash): squash commit S on the target's head, merge commit M;
          the target gets S and M, NOT the MR's own commits; squash_commit_sha=S, merge_commit_sha=M.
        - "squash_ff" (fast-forward with squash): squash commit S, the target's new head;
          squash_commit_sha=S, merge_commit_sha=None. Refused when the source is behind the target.

        Sets state "merged" and merged_at; `remove_source_branch` deletes the source branch.
        ValueError when GitLab would refuse (not open, no commits, no target branch, rebase needed)."""
        if method not in MERGE_METHODS:
            raise ValueError(f"merge method {method!r} is not one of {MERGE_METHODS}")
        with self._lock():
            mr = self._open_mr(iid)
            if not mr.commits:
                raise ValueError(f"merge request !{iid} has no commits: nothing to merge")
            if mr.target_branch not in self.branches:
                raise ValueError(f"target branch {mr.target_branch!r} does not exist")
            src = self._emu.projects.get(mr.source_project_id) if self._emu is not None else self
            target_hist = self._head_history(mr.target_branch)
            target_head = target_hist[-1]
            shas = [c["id"] for c in mr.commits]
            if method in ("ff", "squash_ff"):
                if src is not None and mr.source_branch in src.branches \
                        and target_head not in set(src._head_history(mr.source_branch)):
                    raise ValueError("Only fast-forward merge is allowed for your project. "
                                     "Please update your source branch")
                if method == "ff" and shas[-1] in set(target_hist):
                    raise ValueError("Fast-forward merge did not advance the target branch")
            missing = [c for c in shas if c not in set(target_hist)]
            if method in ("merge", "ff"):
                # Commits from a fork (or seeded without parents) get a linear chain on the target.
                prev = target_head
                for c in missing:
                    self._record(c, (prev,))
                    prev = c
            if method == "merge":
                merge_sha = random_sha()
                self._record(merge_sha, (target_head, shas[-1]))
                new_hist, head = target_hist + missing + [merge_sha], merge_sha
                mr.merge_commit_sha, mr.squash, mr.squash_commit_sha = merge_sha, False, None
            elif method == "ff":
                new_hist, head = target_hist + missing, shas[-1]
                mr.merge_commit_sha, mr.squash, mr.squash_commit_sha = None, False, None
            elif method == "squash":
                squash_sha, merge_sha = random_sha(), random_sha()
                self._record(squash_sha, (target_head,))
                self._record(merge_sha, (target_head, squash_sha))
                new_hist, head = target_hist + [squash_sha, merge_sha], merge_sha
                mr.merge_commit_sha, mr.squash, mr.squash_commit_sha = merge_sha, True, squash_sha
            else:  # squash_ff
                squash_sha = random_sha()
                self._record(squash_sha, (target_head,))
                new_hist, head = target_hist + [squash_sha], squash_sha
                mr.merge_commit_sha, mr.squash, mr.squash_commit_sha = None, True, squash_sha
            self._set_branch(mr.target_branch, head, new_hist)
            now = _now_iso()
            mr.state, mr.merged_at, mr.updated_at, mr.merged_in_graph = "merged", now, now, True
            mr.force_remove_source_branch = bool(remove_source_branch)
            self._refresh_merge_requests(mr.target_branch)
            if remove_source_branch and src is not None:
                src.delete_branch(mr.source_branch)
            return mr

    def close(self, iid: int) -> MergeRequest:
        """Close an open merge request (state "closed", closed_at)."""
        with self._lock():
            mr = self._open_mr(iid)
            mr.state = "closed"
            mr.closed_at = mr.updated_at = _now_iso()
            return mr

    def reopen(self, iid: int) -> MergeRequest:
        """Reopen a closed merge request; commits taken from its source branch are refreshed."""
        with self._lock():
            mr = self.merge_requests[iid]
            if mr.state != "closed":
                raise ValueError(f"merge request !{iid} is {mr.state}, not closed")
            mr.state, mr.closed_at, mr.updated_at = "opened", None, _now_iso()
            src = self._emu.projects.get(mr.source_project_id) if self._emu is not None else self
            if src is not None and mr.commits_from == "branch":
                src._refresh_merge_requests(mr.source_branch)
            return mr

    def retarget(self, iid: int, new_target: str) -> MergeRequest:
        """Point an open merge request at another (existing) target branch, as GitLab does when
        the target is deleted after its own merge or when someone edits it. Commits taken from
        the source branch are recomputed against the new target; given ones stay."""
        with self._lock():
            mr = self._open_mr(iid)
            if new_target not in self.branches:
                raise ValueError(f"target branch {new_target!r} does not exist")
            mr.target_branch, mr.updated_at = new_target, _now_iso()
            src = self._emu.projects.get(mr.source_project_id) if self._emu is not None else self
            if src is not None and mr.commits_from == "branch":
                src._refresh_merge_requests(mr.source_branch)
            return mr

    # -- seeding: pipelines -----------------------------------------------------------
    def add_pipeline(self, sha: str, ref: str, *, status: str = "success", source: str = "push",
                     tag: bool | None = None, created_at: dt.datetime | str | None = None,
                     before_sha: str | None = None, name: str | None = None) -> Pipeline:
        """A pipeline as GitLab stores it. `ref`: a branch, a git tag, or for merge request pipelines
        `refs/merge-requests/<iid>/head` (`/merge` for merged results, whose `sha` is a temporary
        merge commit; `/train`), which need source="merge_request_event" (and that source needs
        such a ref). `tag` defaults to whether `ref` is a git tag of the project now. `created_at`
        (datetime or ISO string) seeds history in the past; `updated_at` is the emulator's clock:
        max(created_at, the last time handed out + 1 ms), so it never goes backwards. `before_sha`
        defaults to the commit before `sha` on branch `ref` for push pipelines, else forty zeros.
        The pipeline's commits become known to the project (keep-around refs)."""
        if status not in PIPELINE_STATUSES:
            raise ValueError(f"bad pipeline status {status!r}")
        if source not in PIPELINE_SOURCES:
            raise ValueError(f"bad pipeline source {source!r}")
        is_mr_ref = MR_REF.fullmatch(ref) is not None
        if (source == "merge_request_event") != is_mr_ref:
            raise ValueError("merge request pipelines (source merge_request_event) and only they "
                             f"run on refs/merge-requests/<iid>/head|merge|train (got {ref!r}, {source!r})")
        if not re.fullmatch(r"[0-9a-f]{40}", sha or ""):
            raise ValueError(f"pipeline sha must be a full SHA, got {sha!r}")
        with self._lock():
            if tag is None:
                tag = ref in self.tags and not is_mr_ref
            if tag and is_mr_ref:
                raise ValueError("merge request pipelines are never tag pipelines")
            created = parse_time(created_at) if created_at is not None else _now()
            updated = self._emu._tick(created) if self._emu is not None else created
            if before_sha is None:
                before_sha = BLANK_SHA
                hist = self.history.get(ref) if source == "push" and not tag else None
                if hist and sha in hist and hist.index(sha) > 0:
                    before_sha = hist[hist.index(sha) - 1]
            self._pipeline_iid += 1
            pipeline = Pipeline(
                id=self._emu._next_id("pipeline") if self._emu is not None else self._pipeline_iid,
                iid=self._pipeline_iid, project_id=self.id, sha=sha, ref=ref, status=status, source=source,
                tag=bool(tag), created_at=iso(created), updated_at=iso(updated), before_sha=before_sha,
                name=name, _emu=self._emu)
            if status == "running" or status in FINISHED_STATUSES:
                pipeline.started_at = pipeline.created_at
            if status in FINISHED_STATUSES:
                pipeline.finished_at = pipeline.updated_at
            self.pipelines[pipeline.id] = pipeline
            self._kept.update(dict.fromkeys(c for c in (sha, before_sha) if c != BLANK_SHA))
            return pipeline

    def update_pipeline(self, pipeline_id: int, status: str, *, at: dt.datetime | str | None = None) -> Pipeline:
        """Change a pipeline's status; its updated_at moves on the emulator's clock (now, or `at`,
        but never before the last time handed out). KeyError when it is not this project's."""
        if status not in PIPELINE_STATUSES:
            raise ValueError(f"bad pipeline status {status!r}")
        with self._lock():
            pipeline = self.pipelines[pipeline_id]
            when = parse_time(at) if at is not None else _now()
            pipeline._set_status(status, self._emu._tick(when) if self._emu is not None else when)
            return pipeline

    def delete_pipeline(self, pipeline_id: int) -> None:
        """Delete a pipeline (KeyError when it is not this project's). Its commits stay known."""
        with self._lock():
            self.pipelines.pop(pipeline_id)

    # -- seeding: environments and deployments ---------------------------------------
    # What GitLab does, and where it says so (GitLab 17-18):
    # - an environment's slug is made once (Gitlab::Slug::Environment, `environment_slug`), its tier
    #   guessed from its name when not given (Environment#guess_tier); names are unique per project;
    # - states available/stopping/stopped: `stop` goes available -> stopping (when stop jobs must run)
    #   or stopped, `stop_complete` available|stopping -> stopped, `start` stopped|stopping ->
    #   available. A deployment that succeeds fires the job's environment action, `start` by default
    #   (Deployments::UpdateEnvironmentService): a stopped environment is available again;
    # - deleting a branch stops the available environments whose last successful deployment came
    #   from that branch, stop job or not, unless their auto_stop_setting is `with_action` (GitLab
    #   17.7+; before, always) (Environments::StopService#execute_for_branch, Environment#stop_with_actions!);
    # - only stopped environments can be deleted (EnvironmentPolicy), and their deployments go with
    #   them (Environment `use_fast_destroy :all_deployments`);
    # - a deployment's sha must be a commit of the project and its ref a branch, tag or commit at
    #   creation (Deployment#valid_sha, #valid_ref); it keeps its commit around
    #   (refs/environments/<slug>/deployments/<iid>), so it outlives its branch;
    # - statuses and moves are Deployment's state machine (DEPLOYMENT_TRANSITIONS); finished_at is set
    #   on every move to success/failed/canceled;
    # - a running deployment, and an environment's last (newest successful) deployment, cannot be
    #   deleted (Ci::Deployments::DestroyService).
    def _basic_project_details(self) -> dict:
        """Entities::BasicProjectDetails, the `project` of an environment in the list (the fields a
        client could use; GitLab sends a few more, all about the project)."""
        base = _base_url(self._emu)
        ns = self.namespace_path
        group = None
        if self._emu is not None:
            group = next((g for g in self._emu.groups.values() if g.path == ns), None)
        host = base.split("://", 1)[-1]
        return {
            "id": self.id, "description": "", "name": self.name,
            "name_with_namespace": self.path.replace("/", " / "), "path": self.name,
            "path_with_namespace": self.path, "created_at": ZERO_TIME, "default_branch": self.default_branch,
            "tag_list": [], "topics": [], "ssh_url_to_repo": f"git@{host}:{self.path}.git",
            "http_url_to_repo": f"{base}/{self.path}.git", "web_url": f"{base}/{self.path}",
            "readme_url": None, "forks_count": 0, "avatar_url": None, "star_count": 0,
            "last_activity_at": ZERO_TIME,
            "namespace": {"id": group.id if group else 0, "name": ns.rsplit("/", 1)[-1],
                          "path": ns.rsplit("/", 1)[-1], "kind": "group" if group else "user", "full_path": ns,
                          "parent_id": None, "avatar_url": None, "web_url": f"{base}/{ns}"},
        }

    def get_environment(self, name: str) -> Environment:
        """The environment named `name` (KeyError when there is none)."""
        with self._lock():
            for env in self.environments.values():
                if env.name == name:
                    return env
            raise KeyError(name)

    def _new_environment(self, name: str, state: str, tier: str | None, external_url: str | None,
                         created: dt.datetime, auto_stop_setting: str) -> Environment:
        if not isinstance(name, str) or not name or len(name) > 255 or not ENVIRONMENT_NAME.fullmatch(name):
            raise ValueError(f"environment name {name!r}: can contain only letters, digits, '-', '_', '/', '$', "
                             "'{', '}', '.', and spaces, but it cannot start or end with '/'")
        if state not in ENVIRONMENT_STATES:
            raise ValueError(f"bad environment state {state!r}, not one of {ENVIRONMENT_STATES}")
        if tier is not None and tier not in ENVIRONMENT_TIERS:
            raise ValueError(f"bad environment tier {tier!r}, not one of {ENVIRONMENT_TIERS}")
        if auto_stop_setting not in AUTO_STOP_SETTINGS:
            raise ValueError(f"bad auto_stop_setting {auto_stop_setting!r}, not one of {AUTO_STOP_SETTINGS}")
        if any(e.name == name for e in self.environments.values()):
            raise ValueError(f"environment {name!r} exists (names are unique per project)")
        slug = environment_slug(name)
        if any(e.slug == slug for e in self.environments.values()):
            raise ValueError(f"environment slug {slug!r} of {name!r} is taken")
        env = Environment(
            id=self._emu._next_id("environment") if self._emu is not None else len(self.environments) + 1,
            project_id=self.id, name=name, slug=slug, state=state, tier=tier or guess_tier(name),
            external_url=external_url or None, created_at=iso(created), updated_at=iso(created),
            auto_stop_setting=auto_stop_setting, _project=self)
        self.environments[env.id] = env
        return env

    def add_environment(self, name: str, *, state: str = "available", tier: str | None = None,
                        external_url: str | None = None, auto_stop_setting: str = "always") -> Environment:
        """An environment, as created by the API or a first deploy job (see `deploy`, which does it
        itself). `tier` defaults to GitLab's guess from the name; `auto_stop_setting` "with_action"
        keeps it available when its branch is deleted (the emulator models no stop jobs)."""
        with self._lock():
            return self._new_environment(name, state, tier, external_url, _now(), auto_stop_setting)

    def _check_ref_and_sha(self, ref: str, sha: str) -> bool:
        """Deployment#valid_sha and #valid_ref; returns whether `ref` is a git tag."""
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise ValueError(f"deployment sha must be a full SHA, got {sha!r}")
        if not isinstance(ref, str) or not ref:
            raise ValueError("deployment ref: can't be blank")
        known_commits = getattr(self._emu, "known_commits", None)
        known = known_commits(self) if known_commits is not None else None
        if known is not None and sha not in known:
            raise ValueError(f"deployment sha {sha[:8]}: The commit does not exist")
        m = MR_REF.fullmatch(ref)
        ok = ref in self.branches or ref in self.tags or (m is not None and int(m.group(1)) in self.merge_requests) \
            or (known is not None and ref in known) or known is None
        if not ok:
            raise ValueError(f"deployment ref {ref!r}: The branch or tag does not exist")
        return ref in self.tags and ref not in self.branches

    def deploy(self, environment: str, *, ref: str, sha: str, status: str = "success",
               at: dt.datetime | str | None = None) -> Deployment:
        """A deployment made by a CI job, as GitLab records it: to `environment` (by name, created
        when missing, as a deploy job does), of `sha` from `ref` (a branch, tag or
        refs/merge-requests/<iid>/..., which must exist now, as GitLab checks on create; delete the
        branch afterwards to model a deleted branch). `at` (datetime or ISO string, default now) is
        its created_at; updated_at (and finished_at when `status` is success/failed/canceled) is the
        emulator's clock, the one pipelines use: max(at, the last time handed out + 1 ms). A success
        makes a stopped environment available again. Ids are global; iid counts per project."""
        if status not in DEPLOYMENT_STATUSES:
            raise ValueError(f"bad deployment status {status!r}, not one of {DEPLOYMENT_STATUSES}")
        with self._lock():
            tag = self._check_ref_and_sha(ref, sha)
            created = parse_time(at) if at is not None else _now()
            try:
                env = self.get_environment(environment)
            except KeyError:
                env = self._new_environment(environment, "available", None, None, created, "always")
            updated = self._emu._tick(created) if self._emu is not None else created
            self._deployment_iid += 1
            dep = Deployment(
                id=self._emu._next_id("deployment") if self._emu is not None else self._deployment_iid,
                iid=self._deployment_iid, project_id=self.id, environment_id=env.id, ref=ref, sha=sha, tag=tag,
                status=status, created_at=iso(created), updated_at=iso(updated),
                deployable_id=self._emu._next_id("job") if self._emu is not None else None,
                job_name=f"deploy {environment}"[:255], _project=self)
            dep.transitions.append(("created", dep.created_at))
            if status != "created":
                dep.transitions.append((status, dep.updated_at))
            if status in DEPLOYMENT_FINISHED:
                dep.finished_at = dep.updated_at
            self.deployments[dep.id] = dep
            self._kept[sha] = None
            if status == "success":
                self._deployment_succeeded(dep, updated)
            return dep

    def _deployment_succeeded(self, dep: Deployment, at: dt.datetime) -> None:
        """Deployments::UpdateEnvironmentService: the job's environment action (`start`)."""
        env = dep.environment
        if env.state in ("stopped", "stopping"):
            env.state, env.updated_at = "available", iso(at)

    def update_deployment(self, deployment_id: int, status: str, *, at: dt.datetime | str | None = None) -> Deployment:
        """Move a deployment to `status` along GitLab's state machine (ValueError for a move it does
        not allow, e.g. success -> running); updated_at moves on the emulator's clock (now, or `at`,
        never before the last time handed out), finished_at too on success/failed/canceled. KeyError
        when it is not this project's."""
        if status not in DEPLOYMENT_STATUSES:
            raise ValueError(f"bad deployment status {status!r}, not one of {DEPLOYMENT_STATUSES}")
        with self._lock():
            dep = self.deployments[deployment_id]
            allowed = DEPLOYMENT_TRANSITIONS[status]
            if status == dep.status or (allowed is not None and dep.status not in allowed):
                raise ValueError(f"deployment {deployment_id} cannot go from {dep.status} to {status}")
            when = parse_time(at) if at is not None else _now()
            t = self._emu._tick(when) if self._emu is not None else when
            dep.status, dep.updated_at = status, iso(t)
            dep.transitions.append((status, dep.updated_at))
            if status in DEPLOYMENT_FINISHED:
                dep.finished_at = dep.updated_at
            if status == "success":
                self._deployment_succeeded(dep, t)
            return dep

    def stop_environment(self, name: str, *, state: str = "stopped",
                         at: dt.datetime | str | None = None) -> Environment:
        """Stop an environment: available -> "stopping" (stop jobs running) or "stopped"; stopping ->
        stopped. ValueError for any other move (an already stopped one); KeyError when unknown."""
        if state not in ("stopping", "stopped"):
            raise ValueError(f"stop to 'stopping' or 'stopped', not {state!r}")
        with self._lock():
            env = self.get_environment(name)
            if env.state == "stopped" or (env.state == "stopping" and state == "stopping"):
                raise ValueError(f"environment {name!r} is {env.state}: cannot go to {state}")
            env.state, env.updated_at = state, iso(parse_time(at) if at is not None else _now())
            if state == "stopped":
                env.auto_stop_at = None
            return env

    def start_environment(self, name: str, *, at: dt.datetime | str | None = None) -> Environment:
        """stopped|stopping -> available (ValueError when already available; KeyError when unknown)."""
        with self._lock():
            env = self.get_environment(name)
            if env.state == "available":
                raise ValueError(f"environment {name!r} is already available")
            env.state, env.updated_at = "available", iso(parse_time(at) if at is not None else _now())
            return env

    def delete_environment(self, name: str) -> None:
        """Delete a stopped environment and its deployments (ValueError for one that is not stopped:
        GitLab answers 403; KeyError when unknown)."""
        with self._lock():
            env = self.get_environment(name)
            if env.state != "stopped":
                raise ValueError(f"environment {name!r} is {env.state}: GitLab only deletes stopped environments")
            for dep in env.deployments:
                del self.deployments[dep.id]
            del self.environments[env.id]

    def delete_deployment(self, deployment_id: int) -> None:
        """Delete a deployment (KeyError when it is not this project's). Refused like GitLab does
        (ValueError): "Cannot destroy running deployment", and "Deployment currently deployed to
        environment" for its environment's last (newest successful) deployment."""
        with self._lock():
            dep = self.deployments[deployment_id]
            if dep.status == "running":
                raise ValueError("Cannot destroy running deployment")
            if dep.environment.last_deployment is dep:
                raise ValueError("Deployment currently deployed to environment")
            del self.deployments[deployment_id]

    def _stop_environments_for_branch(self, branch: str) -> list[Environment]:
        """Environments::StopService#execute_for_branch, run when a branch is deleted: every available
        environment whose last successful deployment came from `branch` stops (no stop jobs are
        modelled, so straight to stopped), unless its auto_stop_setting is "with_action"."""
        stopped = []
        now = _now_iso()
        for env in self.environments.values():
            last = env.last_deployment
            if env.state == "available" and last is not None and last.ref == branch \
                    and env.auto_stop_setting == "always":
                env.state, env.auto_stop_at, env.updated_at = "stopped", None, now
                stopped.append(env)
        return stopped

    # -- registry -------------------------------------------------------------------
    def add_registry_repository(self, name: str = "") -> int:
        with self._lock():
            repo = RegistryRepository(
                id=self._emu._next_id("registry_repository"), name=name,
                path=self.path if name == "" else f"{self.path}/{name}", project_id=self.id,
            )
            self.registry_repositories.append(repo)
            return repo.id

    def registry_repository(self, rid: int) -> RegistryRepository:
        for repo in self.registry_repositories:
            if repo.id == rid:
                return repo
        raise KeyError(rid)


@dataclass
class Group:
    id: int
    path: str
    hooks: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]
