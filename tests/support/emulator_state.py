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
"""

from __future__ import annotations

import datetime as dt
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


class _Branches(dict):
    """`Project.branches`: name -> head SHA, a plain dict to read and write. Writing a head is
    `git update-ref`: the branch then contains exactly that commit's ancestry (just the commit
    when the emulator knows no parents for it, which is what a bare `branches[name] = sha` always
    meant). Deleting forgets the branch's history but not its commits."""

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
            dict.clear(self)
            self._project.history.clear()

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
