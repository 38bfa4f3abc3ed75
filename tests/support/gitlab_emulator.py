"""An emulator of the parts of GitLab's REST API (v4) that tagsweeper uses, over real HTTP.

It is a plain werkzeug WSGI app served by `werkzeug.serving.make_server` in a daemon
thread. State is plain Python that tests seed in-process (`add_project`, ...). The
container-registry endpoints are backed by a real docker-registry (`RegistryServer`):
tag lists are read live from it and single tags are deleted the way GitLab does on a
third-party registry (retag onto a unique manifest, delete that digest).

Behaviour follows GitLab's documentation (see ../shared/reference/gitlab.md):
auth by `PRIVATE-TOKEN` or `Authorization: Bearer`, `:id` as number or URL-encoded
path, offset pagination headers and `Link`, error bodies `{"message": "404 ... Not Found"}`,
and `/jwt/auth` issuing registry tokens.

The state model (tests/support/emulator_state.py, re-exported here) has a light commit graph
(per-branch histories, `Project.push`, commits kept around after their branch is deleted),
merge requests with GitLab's merge methods (`Project.merge(iid, "merge"|"ff"|"squash"|"squash_ff")`)
and pipelines (`Project.add_pipeline`), served as `GET /projects/:id/pipelines` (GitLab's
PipelinesFinder filters and ordering), `GET /projects/:id/pipelines/:pipeline_id` and
`GET /projects/:id/merge_requests/:iid/pipelines` (Ci::PipelinesForMergeRequestFinder); and
environments and deployments (`Project.add_environment`, `Project.deploy`, ...), served as
`GET /projects/:id/environments[/:environment_id]` and `GET /projects/:id/deployments[/:deployment_id]`
(Environments::EnvironmentsFinder, DeploymentsFinder with GitLab's 400s for filters it refuses).

Test controls: `requests`/`count()`/`reset_requests()` (log of served requests),
`inject_fault()`/`clear_faults()` (500s, 429 + Retry-After, hangs, dropped connections), `reset()`.
`include_reserved_refs_in_ref_filter` (default False) turns on GitLab 18's feature flag of that
name: `?ref=<branch>` then also matches refs/merge-requests/<iid>/{head,merge,train} of merge
requests from that branch (unless `source` excludes merge_request_event).
`environment_search_api_min_chars` (default True, GitLab's feature flag of that name) refuses an
environments `search` shorter than 3 characters.

The emulator is split by what a reader looks for:

- tests/support/emulator_state.py: the state model (projects, commit graph, merge requests,
  pipelines, environments and deployments, registry repositories, groups);
- tests/support/emulator_http.py: the WSGI app, routing, auth, pagination, errors;
- tests/support/emulator_projects.py, emulator_merge_requests.py, emulator_pipelines.py,
  emulator_deployments.py, emulator_registry.py (with /jwt/auth) and emulator_hooks.py: the
  handlers of each API area;
- this module: `GitLabEmulator` itself, assembled from those: its lifecycle, seeding, test
  controls and the route table (every endpoint it serves, in one place).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from typing import Callable

from werkzeug.serving import make_server

from tests.support import faults
from tests.support.emulator_deployments import DeploymentsApi
from tests.support.emulator_hooks import HOOK_EVENT_DEFAULTS, HooksApi  # noqa: F401  (re-exported)
from tests.support.emulator_http import ApiError, HttpCore, _QuietHandler  # noqa: F401  (ApiError: re-exported)
from tests.support.emulator_merge_requests import MergeRequestsApi
from tests.support.emulator_pipelines import PipelinesApi
from tests.support.emulator_projects import ProjectsApi
from tests.support.emulator_registry import RegistryApi
from tests.support.emulator_state import (  # noqa: F401  (re-exported: the seeding API lives there)
    BLANK_SHA, CI_BRANCH_SOURCES, DEPLOYMENT_FINISHED, DEPLOYMENT_HOOK_STATUSES, DEPLOYMENT_STATUSES,
    ENVIRONMENT_STATES, ENVIRONMENT_TIERS, FINISHED_STATUSES, MERGE_METHODS, MR_REF, PIPELINE_SOURCES,
    PIPELINE_STATUSES, ZERO_TIME, Deployment, Environment, Group, MergeRequest, Pipeline, Project,
    RegistryRepository, _now, _now_iso, environment_slug, guess_tier, iso, parse_time, random_sha,
)
from tests.support.faults import Fault
from tests.support.registry import RegistryClient, RegistryServer


class GitLabEmulator(HttpCore, ProjectsApi, MergeRequestsApi, PipelinesApi, DeploymentsApi, RegistryApi, HooksApi):
    """GitLab on a free loopback port: `start()`, seed it (`add_project`, `add_group`), point the
    code under test at `url` (or `api_url`) with `token`, and `stop()`."""

    def __init__(self, registry: RegistryServer | None = None, token: str = "glpat-emulator-token"):
        self.token = token
        self.registry = registry
        self.lock = threading.RLock()  # the one lock guarding all state below
        self.projects: dict[int, Project] = {}
        self.groups: dict[int, Group] = {}
        self._faults: list[Fault] = []
        self._fault_queries: dict[int, re.Pattern] = {}  # id(fault) -> its query_regex
        self._requests: list[tuple[str, str, int]] = []
        self._ids: dict[str, int] = {}
        self._server = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._client: RegistryClient | None = None
        self._client_for: RegistryServer | None = None
        # The database clock of pipelines' updated_at: never goes backwards, 1 ms steps.
        self._clock: dt.datetime | None = None
        # (source project id, source branch) -> merge requests whose commits come from that branch.
        self._derived_mrs: dict[tuple[int, str], list[MergeRequest]] = {}
        self.include_reserved_refs_in_ref_filter = False
        self.environment_search_api_min_chars = True
        self._routes = self._build_routes()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "GitLabEmulator":
        # Port 0: the OS picks a free port and we hold it from now on, so the
        # registry's realm can be built from .url before the registry exists.
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gitlab-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping in an injected delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + self.API

    @property
    def registry_client(self) -> RegistryClient:
        if self.registry is None:
            raise RuntimeError("no registry attached to the emulator")
        with self.lock:
            if self._client is None or self._client_for is not self.registry:
                self._client = RegistryClient(self.registry.url, self.registry.issuer, subject="gitlab-emulator")
                self._client_for = self.registry
            return self._client

    # -- state seeding ---------------------------------------------------------------
    def _next_id(self, kind: str) -> int:
        with self.lock:
            self._ids[kind] = self._ids.get(kind, 0) + 1
            return self._ids[kind]

    def _tick(self, at: dt.datetime | None = None) -> dt.datetime:
        """The next time of the pipelines' clock: `at` (default now), but at least 1 ms after the
        last one handed out."""
        with self.lock:
            t = parse_time(at) if at is not None else _now()
            if self._clock is not None and t <= self._clock:
                t = self._clock + dt.timedelta(milliseconds=1)
            self._clock = t
            return t

    def add_project(self, id: int, path: str, default_branch: str = "main") -> Project:
        with self.lock:
            if id in self.projects:
                raise ValueError(f"project {id} exists")
            p = Project(id=id, path=path, default_branch=default_branch, _emu=self)
            p.branches[default_branch] = random_sha()
            p.protected_branches.append(default_branch)
            self.projects[id] = p
            return p

    def add_group(self, id: int, path: str) -> Group:
        with self.lock:
            g = Group(id=id, path=path)
            self.groups[id] = g
            return g

    def group_projects(self, group: Group) -> list[Project]:
        with self.lock:
            return sorted((p for p in self.projects.values() if p.path.startswith(group.path + "/")),
                          key=lambda p: p.id)

    def reset(self) -> None:
        """Forget projects, groups, faults and the request log. Ids keep counting up; the
        pipelines' clock starts afresh (no pipeline is left that it could go back behind), so
        each test can seed past pipelines in order."""
        with self.lock:
            self.projects.clear()
            self._derived_mrs.clear()
            self._clock = None
            self.groups.clear()
            self._faults.clear()
            self._fault_queries.clear()
            self._requests.clear()

    # -- test controls ---------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, raw path without query, status) of every request served, oldest first."""
        with self.lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self.lock:
            self._requests.clear()

    def count(self, method: str | None = None, path_regex: str | None = None) -> int:
        rx = re.compile(path_regex) if path_regex else None
        return sum(1 for m, p, _ in self.requests
                   if (method is None or m == method.upper()) and (rx is None or rx.search(p)))

    def inject_fault(self, method: str, path_regex: str, status: int | None, times: int = 1,
                     headers: dict | None = None, delay: float = 0.0, body: dict | None = None,
                     drop: bool | str = False, query_regex: str | None = None) -> None:
        """The next `times` requests matching method ('*' = any) and path_regex (re.search on
        the raw path, e.g. '/api/v4/projects/1/registry/.*/tags/') answer `status` after
        sleeping `delay`. times=-1 keeps answering until clear_faults(). `query_regex`, when
        given, must also re.search the raw query string (e.g. r'(^|&)page=2(&|$)': one page only).

        drop=True closes the connection instead of answering (nothing is done); drop="after"
        does the request, then closes the connection before the answer, so the client never
        learns that it worked. The request log records a dropped request with status 0.
        status=None only sleeps `delay`, then serves the request as usual: a slow GitLab."""
        with self.lock:
            fault = Fault(method.upper(), re.compile(path_regex), status, times,
                          dict(headers or {}), delay, drop, body)
            self._faults.append(fault)
            if query_regex is not None:
                self._fault_queries[id(fault)] = re.compile(query_regex)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()
            self._fault_queries.clear()

    def _take_fault(self, method: str, path: str, query: str = "") -> Fault | None:
        with self.lock:
            candidates = [f for f in self._faults
                          if id(f) not in self._fault_queries or self._fault_queries[id(f)].search(query)]
            return faults.take(candidates, method, path)

    # -- routes ------------------------------------------------------------------------
    def _build_routes(self) -> list[tuple[str, re.Pattern, Callable]]:
        P = r"/projects/(?P<pid>[^/]+)"
        G = r"/groups/(?P<gid>[^/]+)"
        R = P + r"/registry/repositories/(?P<rid>[^/]+)"
        table = [
            ("GET", r"/user", self.get_user),
            ("GET", r"/version", self.get_version),
            ("GET", P, self.get_project),
            ("GET", P + r"/registry/repositories", self.list_registry_repositories),
            ("GET", r"/registry/repositories/(?P<rid>[^/]+)", self.get_registry_repository),
            ("GET", R + r"/tags", self.list_registry_tags),
            ("GET", R + r"/tags/(?P<tag>[^/]+)", self.get_registry_tag),
            ("DELETE", R + r"/tags/(?P<tag>[^/]+)", self.delete_registry_tag),
            ("GET", P + r"/repository/branches", self.list_branches),
            ("GET", P + r"/repository/branches/(?P<branch>.+)", self.get_branch),
            ("GET", P + r"/repository/tags", self.list_git_tags),
            ("GET", P + r"/repository/commits/(?P<sha>[^/]+)", self.get_commit),
            ("GET", P + r"/repository/commits/(?P<sha>[^/]+)/refs", self.list_commit_refs),
            ("GET", P + r"/merge_requests", self.list_merge_requests),
            ("GET", P + r"/merge_requests/(?P<iid>[^/]+)", self.get_merge_request),
            ("GET", P + r"/merge_requests/(?P<iid>[^/]+)/commits", self.list_mr_commits),
            ("GET", P + r"/merge_requests/(?P<iid>[^/]+)/pipelines", self.list_mr_pipelines),
            ("GET", P + r"/pipelines", self.list_pipelines),
            ("GET", P + r"/pipelines/(?P<pipeline_id>[^/]+)", self.get_pipeline),
            ("GET", P + r"/environments", self.list_environments),
            ("GET", P + r"/environments/(?P<environment_id>[^/]+)", self.get_environment),
            ("GET", P + r"/deployments", self.list_deployments),
            ("GET", P + r"/deployments/(?P<deployment_id>[^/]+)", self.get_deployment),
            ("GET", G, self.get_group),
            ("GET", G + r"/projects", self.list_group_projects),
            ("GET", G + r"/registry/repositories", self.list_group_registry_repositories),
        ]
        for owner, prefix in (("project", P), ("group", G)):
            table += [
                ("GET", prefix + r"/hooks", self._hooks_handler(owner, "list")),
                ("POST", prefix + r"/hooks", self._hooks_handler(owner, "create")),
                ("GET", prefix + r"/hooks/(?P<hid>[^/]+)", self._hooks_handler(owner, "get")),
                ("PUT", prefix + r"/hooks/(?P<hid>[^/]+)", self._hooks_handler(owner, "update")),
                ("DELETE", prefix + r"/hooks/(?P<hid>[^/]+)", self._hooks_handler(owner, "delete")),
            ]
        return [(m, re.compile(rx), h) for m, rx, h in table]
