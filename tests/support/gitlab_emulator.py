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
`GET /projects/:id/merge_requests/:iid/pipelines` (Ci::PipelinesForMergeRequestFinder).

Test controls: `requests`/`count()`/`reset_requests()` (log of served requests),
`inject_fault()`/`clear_faults()` (500s, 429 + Retry-After, hangs, dropped connections), `reset()`.
`include_reserved_refs_in_ref_filter` (default False) turns on GitLab 18's feature flag of that
name: `?ref=<branch>` then also matches refs/merge-requests/<iid>/{head,merge,train} of merge
requests from that branch (unless `source` excludes merge_request_event).
"""

from __future__ import annotations

import base64
import datetime as dt
import http
import json
import math
import re
import secrets
import socket
import threading
from typing import Any, Callable
from urllib.parse import quote, unquote, urlencode

from werkzeug.datastructures import MultiDict
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.support import faults
from tests.support.emulator_state import (  # noqa: F401  (re-exported: the seeding API lives there)
    BLANK_SHA, CI_BRANCH_SOURCES, FINISHED_STATUSES, MERGE_METHODS, MR_REF, PIPELINE_SOURCES,
    PIPELINE_STATUSES, ZERO_TIME, Group, MergeRequest, Pipeline, Project, RegistryRepository, _now,
    _now_iso, iso, parse_time, random_sha,
)
from tests.support.faults import Fault
from tests.support.registry import RegistryClient, RegistryServer


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class ApiError(Exception):
    """Raised by handlers; becomes a JSON error response."""

    def __init__(self, status: int, message: str | None = None, key: str = "message"):
        super().__init__(message)
        self.status = status
        self.body = {key: message or _status_line(status)}


def _not_found(what: str) -> ApiError:
    return ApiError(404, f"404 {what} Not Found")


# Hook fields GitLab accepts; booleans with their defaults.
HOOK_EVENT_DEFAULTS = {
    "push_events": True, "issues_events": False, "confidential_issues_events": False,
    "merge_requests_events": False, "tag_push_events": False, "note_events": False,
    "confidential_note_events": False, "job_events": False, "pipeline_events": False,
    "wiki_page_events": False, "deployment_events": False, "releases_events": False,
    "enable_ssl_verification": True,
}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on", "t")


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the emulator keeps its own request log."""

    def log_request(self, *args, **kwargs):  # noqa: D401
        pass


# ---------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------

class GitLabEmulator:
    API = "/api/v4"

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

    # -- WSGI plumbing -----------------------------------------------------------------
    def _wsgi(self, environ, start_response):
        req = Request(environ)
        # RAW_URI keeps %2F intact, so "acme%2Fshop" stays one path segment.
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or req.path
        raw_path = raw.split("?", 1)[0]
        if raw_path.startswith("http://") or raw_path.startswith("https://"):
            raw_path = "/" + raw_path.split("/", 3)[-1]
        resp = self._respond(req, raw_path)
        dropped = environ.get("emulator.drop", False)
        with self.lock:
            self._requests.append((req.method, raw_path, 0 if dropped else resp.status_code))
        if dropped:
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            # A ConnectionError is what werkzeug expects of a vanished client: it stays quiet.
            raise ConnectionResetError("connection dropped by an injected fault")
        return resp(environ, start_response)

    def _respond(self, req: Request, raw_path: str) -> Response:
        fault = self._take_fault(req.method, raw_path, req.query_string.decode("latin-1"))
        if fault is not None:
            if fault.delay:
                self._stopping.wait(fault.delay)
            if fault.drop:
                req.environ["emulator.drop"] = True  # _wsgi closes the connection instead of answering
            if fault.drop != "after" and fault.status is not None:
                body = fault.body if fault.body is not None else {"message": _status_line(fault.status)}
                resp = self._json(body, fault.status)
                resp.headers.update(fault.headers)
                return resp
        try:
            if raw_path == "/jwt/auth":
                return self._jwt_auth(req)
            if not raw_path.startswith(self.API + "/"):
                raise ApiError(404, "404 Not Found", key="error")
            self._authenticate(req)
            sub = raw_path[len(self.API):]
            path_known = False
            for method, rx, handler in self._routes:
                m = rx.fullmatch(sub)
                if m:
                    path_known = True
                    if req.method != method and not (method == "GET" and req.method == "HEAD"):
                        continue
                    args = {k: unquote(v) for k, v in m.groupdict().items()}
                    return handler(req, raw_path, **args)
            if path_known:
                raise ApiError(405, "405 Method Not Allowed")
            raise ApiError(404, "404 Not Found", key="error")
        except ApiError as e:
            return self._json(e.body, e.status)
        except Exception as e:  # a bug or a dead registry: answer like GitLab would
            return self._json({"message": f"500 Internal Server Error ({type(e).__name__})"}, 500)

    @staticmethod
    def _json(body: Any, status: int = 200, headers: dict | None = None) -> Response:
        return Response(json.dumps(body), status=status, headers=headers or {}, mimetype="application/json")

    def _authenticate(self, req: Request) -> None:
        given = req.headers.get("PRIVATE-TOKEN") or req.args.get("private_token")
        auth = req.headers.get("Authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not secrets.compare_digest(given, self.token):
            raise ApiError(401, "401 Unauthorized")

    @staticmethod
    def _params(req: Request) -> MultiDict:
        """GitLab (Grape) takes parameters from the query, a form or a JSON body alike."""
        out = MultiDict(req.args)
        out.update(req.form)
        if req.is_json:
            data = req.get_json(silent=True)
            if isinstance(data, dict):
                for k, v in data.items():
                    out[k] = v
        return out

    def _paginate(self, req: Request, raw_path: str, items: list) -> Response:
        args = req.args
        try:
            per_page = int(args.get("per_page", 20))
        except ValueError:
            per_page = 20
        per_page = 20 if per_page < 1 else min(per_page, 100)
        try:
            page = max(int(args.get("page", 1)), 1)
        except ValueError:
            page = 1
        total = len(items)
        total_pages = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page: page * per_page]

        def link(p: int) -> str:
            q = [(k, v) for k, v in args.items(multi=True) if k not in ("page", "per_page")]
            q += [("page", str(p)), ("per_page", str(per_page))]
            return f"<{self.url}{raw_path}?{urlencode(q)}>"

        links = []
        if page > 1:
            links.append(f'{link(min(page - 1, total_pages))}; rel="prev"')
        if page < total_pages:
            links.append(f'{link(page + 1)}; rel="next"')
        links.append(f'{link(1)}; rel="first"')
        links.append(f'{link(total_pages)}; rel="last"')
        headers = {
            "X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(total),
            "X-Total-Pages": str(total_pages),
            "X-Next-Page": str(page + 1) if page < total_pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "Link": ", ".join(links),
        }
        return self._json(chunk, 200, headers)

    # -- lookups ---------------------------------------------------------------------
    def _project(self, ident: str) -> Project:
        with self.lock:
            if ident.isdigit():
                p = self.projects.get(int(ident))
            else:
                p = next((p for p in self.projects.values() if p.path.lower() == ident.lower()), None)
        if p is None:
            raise _not_found("Project")
        return p

    def _group(self, ident: str) -> Group:
        with self.lock:
            if ident.isdigit():
                g = self.groups.get(int(ident))
            else:
                g = next((g for g in self.groups.values() if g.path.lower() == ident.lower()), None)
        if g is None:
            raise _not_found("Group")
        return g

    def _repo(self, project: Project, rid: str) -> RegistryRepository:
        with self.lock:
            try:
                return project.registry_repository(int(rid))
            except (KeyError, ValueError):
                raise _not_found("Repository") from None

    def _registry_host(self) -> str:
        return self.registry.host if self.registry else "registry.invalid"

    # -- JSON views ------------------------------------------------------------------
    def _project_json(self, p: Project) -> dict:
        with self.lock:
            group = next((g for g in self.groups.values() if g.path == p.namespace_path), None)
        ns_path = p.namespace_path
        return {
            "id": p.id, "name": p.name, "path": p.name, "path_with_namespace": p.path,
            "name_with_namespace": p.path.replace("/", " / "),
            "default_branch": p.default_branch, "web_url": f"{self.url}/{p.path}",
            "container_registry_image_prefix": f"{self._registry_host()}/{p.path}",
            "namespace": {
                "id": group.id if group else 0, "name": ns_path.rsplit("/", 1)[-1], "path": ns_path.rsplit("/", 1)[-1],
                "kind": "group" if group else "user", "full_path": ns_path,
            },
        }

    def _repo_json(self, r: RegistryRepository) -> dict:
        return {
            "id": r.id, "name": r.name, "path": r.path, "project_id": r.project_id,
            "location": f"{self._registry_host()}/{r.path}", "created_at": r.created_at,
            "cleanup_policy_started_at": None, "status": None,
        }

    def _tag_json(self, r: RegistryRepository, tag: str) -> dict:
        return {"name": tag, "path": f"{r.path}:{tag}", "location": f"{self._registry_host()}/{r.path}:{tag}"}

    def _live_tags(self, r: RegistryRepository) -> list[str]:
        if self.registry is None:
            return []
        return sorted(self.registry_client.tags(r.path))

    def _branch_json(self, p: Project, name: str, sha: str) -> dict:
        return {
            "name": name, "merged": False, "protected": name in p.protected_branches,
            "default": name == p.default_branch, "developers_can_push": False, "developers_can_merge": False,
            "can_push": True, "web_url": f"{self.url}/{p.path}/-/tree/{quote(name, safe='')}",
            "commit": {"id": sha, "short_id": sha[:8], "title": f"Head of {name}"},
        }

    USER = {"id": 1, "username": "emulator", "name": "GitLab Emulator", "state": "active",
            "avatar_url": None, "web_url": "http://gitlab.invalid/emulator"}

    def _mr_json(self, mr: MergeRequest) -> dict:
        """MergeRequestBasic's fields (the list and the single view alike), kept simple:
        merge_status is can_be_merged, detailed_merge_status mergeable / draft_status /
        commits_status (no commits) while open and not_open otherwise."""
        p = self.projects.get(mr.project_id)
        if mr.state != "opened":
            detailed = "not_open"
        elif mr.draft:
            detailed = "draft_status"
        else:
            detailed = "mergeable" if mr.commits else "commits_status"
        merged, closed = mr.state == "merged", mr.state == "closed"
        return {
            "id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title, "description": "",
            "state": mr.state, "created_at": mr.created_at, "updated_at": mr.updated_at,
            "merged_by": self.USER if merged else None, "merge_user": self.USER if merged else None,
            "merged_at": mr.merged_at if merged else None,
            "closed_by": self.USER if closed else None, "closed_at": mr.closed_at if closed else None,
            "source_branch": mr.source_branch, "target_branch": mr.target_branch,
            "source_project_id": mr.source_project_id, "target_project_id": mr.target_project_id,
            "author": self.USER, "assignee": None, "assignees": [], "reviewers": [], "labels": [],
            "user_notes_count": 0, "upvotes": 0, "downvotes": 0, "milestone": None,
            "draft": mr.draft, "work_in_progress": mr.draft, "merge_when_pipeline_succeeds": False,
            "merge_status": "can_be_merged", "detailed_merge_status": detailed, "has_conflicts": False,
            "sha": mr.sha, "merge_commit_sha": mr.merge_commit_sha, "squash_commit_sha": mr.squash_commit_sha,
            "squash": mr.squash, "squash_on_merge": mr.squash, "discussion_locked": None,
            "should_remove_source_branch": mr.force_remove_source_branch or None,
            "force_remove_source_branch": mr.force_remove_source_branch,
            "blocking_discussions_resolved": True, "prepared_at": mr.created_at,
            "reference": f"!{mr.iid}",
            "references": {"short": f"!{mr.iid}", "relative": f"!{mr.iid}",
                           "full": f"{p.path if p else mr.project_id}!{mr.iid}"},
            "web_url": f"{self.url}/{p.path if p else mr.project_id}/-/merge_requests/{mr.iid}",
        }

    # Entities::Ci::PipelineBasic (MR pipelines); the project list adds `name` (PipelineBasicWithMetadata).
    PIPELINE_BASIC = ("id", "iid", "project_id", "sha", "ref", "status", "source", "created_at",
                      "updated_at", "web_url")

    def _pipeline_basic(self, pl: Pipeline, with_name: bool = False) -> dict:
        out = {k: getattr(pl, k) for k in self.PIPELINE_BASIC}
        if with_name:
            out["name"] = pl.name
        return out

    def _pipeline_json(self, pl: Pipeline, p: Project) -> dict:
        """Entities::Ci::PipelineWithMetadata: the single pipeline."""
        out = self._pipeline_basic(pl, with_name=True)
        label = {"success": "passed", "running": "running", "failed": "failed"}.get(pl.status, pl.status)
        out.update({
            "before_sha": pl.before_sha, "tag": pl.tag, "yaml_errors": None, "user": self.USER,
            "started_at": pl.started_at, "finished_at": pl.finished_at, "committed_at": None,
            "duration": pl.duration, "queued_duration": None, "coverage": None,
            "detailed_status": {
                "icon": f"status_{pl.status}", "text": label, "label": label, "group": pl.status,
                "tooltip": label, "has_details": False, "details_path": f"/{p.path}/-/pipelines/{pl.id}",
                "illustration": None, "favicon": f"/assets/ci_favicons/favicon_status_{pl.status}.png",
            },
        })
        return out

    @staticmethod
    def _hook_json(hook: dict) -> dict:
        return {k: v for k, v in hook.items() if k != "token"}  # GitLab never returns the token

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

    # misc
    def get_user(self, req, raw_path):
        return self._json({"id": 1, "username": "emulator", "name": "GitLab Emulator", "state": "active"})

    def get_version(self, req, raw_path):
        return self._json({"version": "17.11.0-emulator", "revision": "emulator"})

    # projects
    def get_project(self, req, raw_path, pid):
        return self._json(self._project_json(self._project(pid)))

    def list_registry_repositories(self, req, raw_path, pid):
        p = self._project(pid)
        with self.lock:
            repos = list(p.registry_repositories)
        return self._paginate(req, raw_path, [self._repo_view(req, r) for r in repos])

    def _repo_view(self, req: Request, r: RegistryRepository) -> dict:
        out = self._repo_json(r)
        want_tags = _bool(req.args.get("tags", False))
        want_count = _bool(req.args.get("tags_count", False))
        if want_tags or want_count:
            names = self._live_tags(r)
            if want_tags:
                out["tags"] = [self._tag_json(r, t) for t in names]
            if want_count:
                out["tags_count"] = len(names)
        return out

    def get_registry_repository(self, req, raw_path, rid):
        with self.lock:
            repo = next((r for p in self.projects.values() for r in p.registry_repositories
                         if str(r.id) == rid), None)
        if repo is None:
            raise _not_found("Repository")
        out = self._repo_view(req, repo)
        out.setdefault("tags_count", len(self._live_tags(repo)))
        return self._json(out)

    def list_registry_tags(self, req, raw_path, pid, rid):
        r = self._repo(self._project(pid), rid)
        return self._paginate(req, raw_path, [self._tag_json(r, t) for t in self._live_tags(r)])

    def get_registry_tag(self, req, raw_path, pid, rid, tag):
        r = self._repo(self._project(pid), rid)
        found = self.registry_client.manifest(r.path, tag) if self.registry else None
        if found is None:
            raise _not_found("Tag")
        digest, manifest = found
        out = self._tag_json(r, tag)
        out.update({"revision": None, "short_revision": None, "digest": digest,
                    "created_at": None, "total_size": None})
        config = manifest.get("config") or {}
        if config.get("digest"):
            revision = config["digest"].split(":", 1)[-1]
            out["revision"], out["short_revision"] = revision, revision[:9]
            out["total_size"] = sum(layer.get("size", 0) for layer in manifest.get("layers") or [])
            try:
                out["created_at"] = json.loads(self.registry_client.blob(r.path, config["digest"])).get("created")
            except (ValueError, RuntimeError):
                pass
        return self._json(out)

    def delete_registry_tag(self, req, raw_path, pid, rid, tag):
        p = self._project(pid)
        r = self._repo(p, rid)
        client = self.registry_client if self.registry else None
        if client is None or client.resolve(r.path, tag) is None:
            raise _not_found("Tag")
        with self.lock:
            patterns = list(p.protected_tag_patterns)
        # GitLab checks the tag exists first, then the protection rules.
        if any(re.search(rx, tag) for rx in patterns):
            raise ApiError(403, "403 Forbidden")
        if not client.delete_tag(r.path, tag):
            raise _not_found("Tag")  # it went away between the two calls
        return Response(b"", status=200)

    # repository
    def list_branches(self, req, raw_path, pid):
        p = self._project(pid)
        with self.lock:
            branches = sorted(p.branches.items())
        search = req.args.get("search")
        if search:
            prefix, suffix = search.startswith("^"), search.endswith("$")
            term = search[1 if prefix else 0: len(search) - (1 if suffix else 0)].lower()

            def ok(name: str) -> bool:
                n = name.lower()
                if prefix and suffix:
                    return n == term
                if prefix:
                    return n.startswith(term)
                if suffix:
                    return n.endswith(term)
                return term in n
            branches = [(n, s) for n, s in branches if ok(n)]
        return self._paginate(req, raw_path, [self._branch_json(p, n, s) for n, s in branches])

    def get_branch(self, req, raw_path, pid, branch):
        p = self._project(pid)
        with self.lock:
            sha = p.branches.get(branch)
        if sha is None:
            raise _not_found("Branch")
        return self._json(self._branch_json(p, branch, sha))

    def list_git_tags(self, req, raw_path, pid):
        p = self._project(pid)
        with self.lock:
            tags = sorted(p.tags.items())
        return self._paginate(req, raw_path, [
            {"name": n, "target": s, "message": "", "protected": False,
             "commit": {"id": s, "short_id": s[:8], "title": f"Tagged {n}"}} for n, s in tags])

    # commits: the light commit graph of emulator_state.Project, plus the seeding shortcuts below.
    def known_commits(self, p: Project) -> set[str]:
        """Every commit project `p` can resolve: all that any of its branches ever held (the graph
        never forgets: keep-around refs), branch heads, tag targets, `add_commit` commits, its
        pipelines' commits (also deleted ones), and the commits, merge and squash commits of the
        merge requests it is the target or the source of."""
        with self.lock:
            known = set(p._parents) | set(p._kept) | set(p.branches.values()) | set(p.tags.values())
            known |= set(p.commits)
            for hist in p.history.values():
                known.update(hist)
            for mr in self._merge_requests_of(p):
                known.update(mr.all_commit_shas)
                known.update(c["id"] for c in mr.commits)
                known.update(s for s in (mr.merge_commit_sha, mr.squash_commit_sha) if s)
            known.discard(BLANK_SHA)
            return known

    def _merge_requests_of(self, p: Project) -> list[MergeRequest]:
        return [mr for q in self.projects.values() for mr in q.merge_requests.values()
                if mr.project_id == p.id or mr.source_project_id == p.id]

    def commit_refs(self, p: Project) -> dict[str, set[tuple[str, str]]]:
        """Every commit the project knows (`known_commits`) -> the live refs ("branch"/"tag", name)
        that contain it:

        - a live branch contains every commit of its history (`Project.history`, kept by
          add_branch, push, merge and `branches[name] = sha`) and its head; a git tag the commit
          it points at;
        - a commit seeded with `Project.add_commit(sha, on=[...])` is on those branches while they
          exist;
        - merge requests seeded with their commits (`commits=[...]`, or the legacy single commit
          when the source branch did not exist): the commits are on the source branch while it
          exists; seeded as merged (not through Project.merge), the commits and merge commit are on
          the target branch while it exists, or for a squash MR the squash and merge commits only.
          Merge requests that took their commits from the source branch, and merges done by
          Project.merge, need no rule: the branches' histories hold the truth.
        A branch's deletion leaves its commits known but on no ref."""
        with self.lock:
            refs: dict[str, set[tuple[str, str]]] = {sha: set() for sha in self.known_commits(p)}

            def on(sha: str | None, kind: str, name: str) -> None:
                if sha and (kind == "tag" or name in p.branches):
                    refs.setdefault(sha, set()).add((kind, name))

            for name, head in p.branches.items():
                on(head, "branch", name)
                for sha in p.history.get(name, ()):
                    on(sha, "branch", name)
            for name, sha in p.tags.items():
                on(sha, "tag", name)
            for sha, branches in p.commits.items():
                for name in branches:
                    on(sha, "branch", name)
            for mr in self._merge_requests_of(p):
                seeded_merged = mr.state == "merged" and not mr.merged_in_graph and mr.project_id == p.id
                for c in mr.commits:
                    if mr.commits_from != "branch" and mr.source_project_id == p.id:
                        on(c["id"], "branch", mr.source_branch)
                    if seeded_merged and not mr.squash:
                        on(c["id"], "branch", mr.target_branch)
                if seeded_merged:
                    on(mr.merge_commit_sha, "branch", mr.target_branch)
                    if mr.squash:
                        on(mr.squash_commit_sha, "branch", mr.target_branch)
            return refs

    def _resolve_commit(self, p: Project, ref: str) -> str:
        """A full SHA, a unique prefix of one (4+ hex, like git), a branch or a tag name; else 404
        (an ambiguous prefix too: git refuses it, and GitLab answers 404)."""
        with self.lock:
            if ref in p.branches:
                return p.branches[ref]
            if ref in p.tags:
                return p.tags[ref]
            known = self.known_commits(p)
        if ref in known:
            return ref
        if re.fullmatch(r"[0-9a-f]{4,39}", ref):
            matches = [sha for sha in known if sha.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        raise _not_found("Commit")

    def get_commit(self, req, raw_path, pid, sha):
        p = self._project(pid)
        full = self._resolve_commit(p, sha)
        with self.lock:
            parents = list(p._parents.get(full, ()))
        return self._json({"id": full, "short_id": full[:8], "title": f"Commit {full[:8]}",
                           "message": f"Commit {full[:8]}", "parent_ids": parents, "created_at": ZERO_TIME,
                           "committed_date": ZERO_TIME, "authored_date": ZERO_TIME,
                           "web_url": f"{self.url}/{p.path}/-/commit/{full}"})

    def list_commit_refs(self, req, raw_path, pid, sha):
        p = self._project(pid)
        kind = req.args.get("type", "all")
        if kind not in ("branch", "tag", "all"):
            raise ApiError(400, "type does not have a valid value", key="error")
        full = self._resolve_commit(p, sha)
        refs = sorted(self.commit_refs(p).get(full, set()))
        return self._paginate(req, raw_path, [{"type": t, "name": n} for t, n in refs
                                              if kind == "all" or t == kind])

    # merge requests
    def list_merge_requests(self, req, raw_path, pid):
        p = self._project(pid)
        state = req.args.get("state", "all")
        if state not in ("opened", "closed", "merged", "locked", "all"):
            raise ApiError(400, "state does not have a valid value", key="error")
        src, tgt = req.args.get("source_branch"), req.args.get("target_branch")
        # `iids[]=1&iids[]=2` (GitLab's array parameter): only those merge requests.
        raw_iids = req.args.getlist("iids[]")
        try:
            iids = {int(i) for i in raw_iids} if raw_iids else None
        except ValueError:
            raise ApiError(400, "iids is invalid", key="error") from None
        with self.lock:
            mrs = sorted(p.merge_requests.values(), key=lambda m: m.iid, reverse=True)  # newest first
            items = [self._mr_json(m) for m in mrs
                     if (state == "all" or m.state == state)
                     and (src is None or m.source_branch == src)
                     and (tgt is None or m.target_branch == tgt)
                     and (iids is None or m.iid in iids)]
        return self._paginate(req, raw_path, items)

    def _mr(self, p: Project, iid: str) -> MergeRequest:
        with self.lock:
            mr = p.merge_requests.get(int(iid)) if iid.isdigit() else None
        if mr is None:
            raise _not_found("Merge Request")
        return mr

    def get_merge_request(self, req, raw_path, pid, iid):
        mr = self._mr(self._project(pid), iid)
        with self.lock:
            return self._json(self._mr_json(mr))

    def list_mr_commits(self, req, raw_path, pid, iid):
        mr = self._mr(self._project(pid), iid)
        with self.lock:
            commits = [dict(c) for c in reversed(mr.commits)]  # GitLab lists newest first
        return self._paginate(req, raw_path, commits)

    def merge_request_pipelines(self, mr: MergeRequest) -> list[Pipeline]:
        """Ci::PipelinesForMergeRequestFinder#all: the merge request's own pipelines (source
        merge_request_event on refs/merge-requests/<iid>/..., in its source or target project) and
        the source project's branch pipelines (ci_branch_sources, not tags) on the source branch
        whose SHA is one of the MR's commits in any version of its diff. Merge request pipelines
        first, then newest (highest id) first, as GitLab sorts them."""
        with self.lock:
            target = self.projects.get(mr.project_id)
            source = self.projects.get(mr.source_project_id)
            found: dict[int, Pipeline] = {}
            for proj in {id(x): x for x in (target, source) if x is not None}.values():
                if proj is not target and mr.iid in proj.merge_requests:
                    continue  # in a fork, that iid names the fork's own merge request
                for pl in proj.pipelines.values():
                    if pl.source == "merge_request_event" and pl.merge_request_iid == mr.iid:
                        found[pl.id] = pl
            if source is not None:
                shas = set(mr.all_commit_shas)
                for pl in source.pipelines.values():
                    if pl.source in CI_BRANCH_SOURCES and not pl.tag and pl.ref == mr.source_branch \
                            and pl.sha in shas:
                        found[pl.id] = pl
            return sorted(found.values(), key=lambda pl: (pl.source != "merge_request_event", -pl.id))

    def list_mr_pipelines(self, req, raw_path, pid, iid):
        mr = self._mr(self._project(pid), iid)
        with self.lock:
            items = [self._pipeline_basic(pl) for pl in self.merge_request_pipelines(mr)]
        return self._paginate(req, raw_path, items)

    # pipelines
    PIPELINE_ORDER = ("id", "status", "ref", "updated_at", "user_id")
    PIPELINE_SCOPES = ("running", "pending", "finished", "branches", "tags")

    def list_pipelines(self, req, raw_path, pid):
        """GET /projects/:id/pipelines as lib/api/ci/pipelines.rb validates it (Grape: invalid values
        answer 400 {"error": "<param> does not have a valid value"}, unparsable times
        "<param> is invalid", several errors joined by ", ") and Ci::PipelinesFinder filters it:
        child pipelines left out unless source=parent_pipeline; scope (branches/tags: the newest
        pipeline of each branch/tag that exists now), status, ref (exact), sha (exact), username,
        yaml_errors, updated_after/updated_before (inclusive: UpdatedAtFilterable's gteq/lteq; none
        when before < after), created_after/created_before (strict: Ci::Pipeline's gt/lt), source,
        name; then ORDER BY order_by sort. GitLab adds no tie-breaker: ties are ordered by id in the
        same direction here."""
        p = self._project(pid)
        args = req.args
        errors: list[str] = []

        def choice(name: str, allowed, default=None):
            value = args.get(name, default)
            if value is not None and value not in allowed:
                errors.append(f"{name} does not have a valid value")
                return default
            return value

        def when(name: str):
            value = args.get(name)
            if value is None:
                return None
            try:
                return parse_time(value)
            except (ValueError, TypeError):
                errors.append(f"{name} is invalid")
                return None

        # Grape's declaration order (lib/api/ci/pipelines.rb).
        scope = choice("scope", self.PIPELINE_SCOPES)
        status = choice("status", PIPELINE_STATUSES)
        ref, sha, username = args.get("ref"), args.get("sha"), args.get("username")
        yaml_errors = args.get("yaml_errors")
        if yaml_errors is not None and yaml_errors.lower() not in ("true", "false", "1", "0", "t", "f"):
            errors.append("yaml_errors is invalid")
        updated_before, updated_after = when("updated_before"), when("updated_after")
        created_before, created_after = when("created_before"), when("created_after")
        order_by = choice("order_by", self.PIPELINE_ORDER, "id")
        sort = choice("sort", ("asc", "desc"), "desc")
        source = choice("source", PIPELINE_SOURCES)
        name = args.get("name")
        if errors:
            raise ApiError(400, ", ".join(errors), key="error")

        with self.lock:
            items = list(p.pipelines.values())  # id order
            if source != "parent_pipeline":
                items = [pl for pl in items if pl.source != "parent_pipeline"]
            if scope == "running" or scope == "pending":
                items = [pl for pl in items if pl.status == scope]
            elif scope == "finished":
                items = [pl for pl in items if pl.status in FINISHED_STATUSES]
            elif scope in ("branches", "tags"):
                want_tag = scope == "tags"
                live = set(p.tags if want_tag else p.branches)
                newest: dict[str, Pipeline] = {}
                for pl in items:
                    if pl.tag == want_tag and pl.ref in live:
                        newest[pl.ref] = pl  # ascending ids: the last one wins
                items = sorted(newest.values(), key=lambda pl: pl.id)
            if status:
                items = [pl for pl in items if pl.status == status]
            if ref:
                refs = {ref}
                if self.include_reserved_refs_in_ref_filter and source in (None, "merge_request_event"):
                    for mr in p.merge_requests.values():
                        if mr.source_branch == ref:
                            refs |= {f"refs/merge-requests/{mr.iid}/{k}" for k in ("head", "merge", "train")}
                items = [pl for pl in items if pl.ref in refs]
            if sha:
                items = [pl for pl in items if pl.sha == sha]
            if username is not None and username != self.USER["username"]:
                items = []
            if yaml_errors is not None and yaml_errors.lower() in ("true", "1", "t"):
                items = []  # the emulator's pipelines have no configuration errors
            if updated_before is not None and updated_after is not None and updated_before < updated_after:
                items = []
            if updated_before is not None:
                items = [pl for pl in items if parse_time(pl.updated_at) <= updated_before]
            if updated_after is not None:
                items = [pl for pl in items if parse_time(pl.updated_at) >= updated_after]
            if created_before is not None:
                items = [pl for pl in items if parse_time(pl.created_at) < created_before]
            if created_after is not None:
                items = [pl for pl in items if parse_time(pl.created_at) > created_after]
            if source:
                items = [pl for pl in items if pl.source == source]
            if name:
                items = [pl for pl in items if pl.name == name]

            def key(pl: Pipeline):
                if order_by == "id":
                    return (pl.id,)
                if order_by == "user_id":
                    return (self.USER["id"], pl.id)
                if order_by == "updated_at":
                    return (parse_time(pl.updated_at), pl.id)
                return (getattr(pl, order_by), pl.id)

            items.sort(key=key, reverse=(sort == "desc"))
            out = [self._pipeline_basic(pl, with_name=True) for pl in items]
        return self._paginate(req, raw_path, out)

    def get_pipeline(self, req, raw_path, pid, pipeline_id):
        p = self._project(pid)
        if not re.fullmatch(r"\d+", pipeline_id):
            raise ApiError(400, "pipeline_id is invalid", key="error")
        with self.lock:
            pl = p.pipelines.get(int(pipeline_id))
            if pl is None:
                raise ApiError(404, "404 Not found")
            return self._json(self._pipeline_json(pl, p))

    # groups
    def get_group(self, req, raw_path, gid):
        g = self._group(gid)
        return self._json({"id": g.id, "name": g.name, "path": g.name, "full_path": g.path,
                           "web_url": f"{self.url}/groups/{g.path}"})

    def list_group_projects(self, req, raw_path, gid):
        g = self._group(gid)
        return self._paginate(req, raw_path, [self._project_json(p) for p in self.group_projects(g)])

    def list_group_registry_repositories(self, req, raw_path, gid):
        g = self._group(gid)
        with self.lock:
            repos = [r for p in self.group_projects(g) for r in p.registry_repositories]
        return self._paginate(req, raw_path, [self._repo_json(r) for r in repos])

    # hooks (project and group)
    def _hooks_handler(self, owner: str, action: str) -> Callable:
        def handler(req, raw_path, hid=None, pid=None, gid=None):
            obj = self._project(pid) if owner == "project" else self._group(gid)
            return self._hooks(req, raw_path, owner, obj, action, hid)
        return handler

    def _hooks(self, req, raw_path, owner, obj, action, hid):
        if action == "list":
            with self.lock:
                items = [self._hook_json(h) for h in obj.hooks]
            return self._paginate(req, raw_path, items)
        if action == "create":
            params = self._params(req)
            url = params.get("url")
            if not url:
                raise ApiError(400, "url is missing", key="error")
            self._check_hook_url(url)
            hook = {"id": self._next_id("hook"), "url": url, f"{owner}_id": obj.id,
                    "created_at": _now_iso(), "alert_status": "executable", "disabled_until": None,
                    "push_events_branch_filter": params.get("push_events_branch_filter") or "",
                    "token": params.get("token") or None}
            for key, default in HOOK_EVENT_DEFAULTS.items():
                hook[key] = _bool(params[key]) if key in params else default
            with self.lock:
                obj.hooks.append(hook)
            return self._json(self._hook_json(hook), 201)
        with self.lock:
            hook = next((h for h in obj.hooks if str(h["id"]) == hid), None)
        if hook is None:
            raise ApiError(404, "404 Not found")
        if action == "get":
            return self._json(self._hook_json(hook))
        if action == "delete":
            with self.lock:
                obj.hooks[:] = [h for h in obj.hooks if h is not hook]
            return Response(b"", status=204)
        # update
        params = self._params(req)
        with self.lock:
            if "url" in params and params["url"] != hook["url"]:
                self._check_hook_url(params["url"])
                hook["url"] = params["url"]
                # GitLab resets the secret when the URL changes unless it is sent again.
                if "token" not in params:
                    hook["token"] = None
            if "token" in params:
                hook["token"] = params["token"] or None
            if "push_events_branch_filter" in params:
                hook["push_events_branch_filter"] = params["push_events_branch_filter"] or ""
            for key in HOOK_EVENT_DEFAULTS:
                if key in params:
                    hook[key] = _bool(params[key])
            return self._json(self._hook_json(hook))

    @staticmethod
    def _check_hook_url(url: str) -> None:
        if not re.match(r"^https?://[^\s/]+", str(url)):
            raise ApiError(422, "Invalid url given")

    # registry token service
    def _jwt_auth(self, req: Request) -> Response:
        auth = req.headers.get("Authorization", "")
        user = password = None
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                pass
        if not password or not secrets.compare_digest(password, self.token):
            return self._json({"errors": [{"code": "UNAUTHORIZED", "message": "HTTP Basic: Access denied"}]},
                              401, {"WWW-Authenticate": 'Basic realm="GitLab"'})
        if self.registry is None:
            raise ApiError(503, "no registry attached")
        with self.lock:
            known = [p.path for p in self.projects.values()]
        access = []
        for scope in req.args.getlist("scope"):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                access.append({"type": kind, "name": name, "actions": []})
                continue
            wanted = [a for a in actions.split(",") if a]
            owned = any(name == path or name.startswith(path + "/") for path in known)
            # Only these three exist for GitLab tokens; '*' is never granted.
            granted = [a for a in wanted if a in ("pull", "push", "delete")] if owned else []
            access.append({"type": "repository", "name": name, "actions": granted})
        ttl = 300
        token = self.registry.issuer.issue(user or "anonymous", access, ttl=ttl)
        return self._json({"token": token, "access_token": token, "expires_in": ttl, "issued_at": _now_iso()})
