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

Test controls: `requests`/`count()`/`reset_requests()` (log of served requests),
`inject_fault()`/`clear_faults()` (500s, 429 + Retry-After, hangs, dropped connections), `reset()`.
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
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, unquote, urlencode

from werkzeug.datastructures import MultiDict
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.support import faults
from tests.support.faults import Fault
from tests.support.registry import RegistryClient, RegistryServer

ZERO_TIME = "2024-01-01T00:00:00.000Z"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def random_sha() -> str:
    return secrets.token_hex(20)


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


# ---------------------------------------------------------------------------------
# State model
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

    @property
    def target_project_id(self) -> int:
        return self.project_id

    @property
    def sha(self) -> str | None:
        return self.commits[-1]["id"] if self.commits else None


@dataclass
class RegistryRepository:
    id: int
    name: str
    path: str
    project_id: int
    created_at: str = field(default_factory=_now_iso)


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
    _emu: "GitLabEmulator | None" = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def namespace_path(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def add_branch(self, name: str, sha: str | None = None) -> str:
        with self._emu.lock:
            self.branches[name] = sha or random_sha()
            return self.branches[name]

    def delete_branch(self, name: str) -> None:
        with self._emu.lock:
            self.branches.pop(name, None)

    def add_tag(self, name: str, sha: str | None = None) -> str:
        with self._emu.lock:
            self.tags[name] = sha or random_sha()
            return self.tags[name]

    def add_commit(self, sha: str | None = None, on: tuple[str, ...] | list[str] = ()) -> str:
        """A commit in the history of the branches `on` (see GitLabEmulator.commit_refs). It stays
        known after those branches are deleted, as GitLab's keep-around refs keep built commits."""
        with self._emu.lock:
            sha = sha or random_sha()
            self.commits[sha] = tuple(on)
            return sha

    def add_merge_request(self, iid: int, source_branch: str, target_branch: str = "main",
                          state: str = "opened", commits: list[str | dict] | None = None,
                          source_project_id: int | None = None, title: str = "",
                          merge_commit_sha: str | None = None) -> MergeRequest:
        """`commits`: shas (or {id, title} dicts), oldest first; [] is an MR without commits
        (nothing to merge: GitLab lists none). Without `commits` (None) the MR gets the source
        branch's head (when that branch exists here) or one random commit."""
        if state not in ("opened", "closed", "merged", "locked"):
            raise ValueError(f"bad merge request state {state!r}")
        with self._emu.lock:
            src_id = self.id if source_project_id is None else source_project_id
            if commits is None:
                src = self._emu.projects.get(src_id)
                head = src.branches.get(source_branch) if src else None
                commits = [head or random_sha()]
            norm = []
            for i, c in enumerate(commits):
                c = {"id": c} if isinstance(c, str) else dict(c)
                c.setdefault("title", f"Commit {i + 1} on {source_branch}")
                c["short_id"] = c["id"][:8]
                norm.append(c)
            mr = MergeRequest(
                id=self._emu._next_id("mr"), iid=iid, project_id=self.id, source_branch=source_branch,
                target_branch=target_branch, source_project_id=src_id, state=state, commits=norm,
                title=title or f"Merge {source_branch} into {target_branch}",
                merge_commit_sha=merge_commit_sha,
            )
            self.merge_requests[iid] = mr
            return mr

    def add_registry_repository(self, name: str = "") -> int:
        with self._emu.lock:
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
        self._requests: list[tuple[str, str, int]] = []
        self._ids: dict[str, int] = {}
        self._server = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._client: RegistryClient | None = None
        self._client_for: RegistryServer | None = None
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
        """Forget projects, groups, faults and the request log (ids keep counting up)."""
        with self.lock:
            self.projects.clear()
            self.groups.clear()
            self._faults.clear()
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
                     drop: bool | str = False) -> None:
        """The next `times` requests matching method ('*' = any) and path_regex (re.search on
        the raw path, e.g. '/api/v4/projects/1/registry/.*/tags/') answer `status` after
        sleeping `delay`. times=-1 keeps answering until clear_faults().

        drop=True closes the connection instead of answering (nothing is done); drop="after"
        does the request, then closes the connection before the answer, so the client never
        learns that it worked. The request log records a dropped request with status 0.
        status=None only sleeps `delay`, then serves the request as usual: a slow GitLab."""
        with self.lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, times,
                                      dict(headers or {}), delay, drop, body))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            return faults.take(self._faults, method, path)

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
        fault = self._take_fault(req.method, raw_path)
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

    def _mr_json(self, mr: MergeRequest) -> dict:
        p = self.projects.get(mr.project_id)
        return {
            "id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title, "state": mr.state,
            "source_branch": mr.source_branch, "target_branch": mr.target_branch,
            "source_project_id": mr.source_project_id, "target_project_id": mr.target_project_id,
            "sha": mr.sha, "merge_commit_sha": mr.merge_commit_sha,
            "web_url": f"{self.url}/{p.path if p else mr.project_id}/-/merge_requests/{mr.iid}",
        }

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

    # commits. The emulator keeps no commit graph; this is the whole model (see commit_refs).
    def commit_refs(self, p: Project) -> dict[str, set[tuple[str, str]]]:
        """Every commit the project knows -> the refs ("branch"/"tag", name) that contain it:

        - a branch contains its head, a git tag the commit it points at;
        - a merge request's commits are in the project it targets (GitLab's refs/merge-requests)
          and, where they came from, in the source project; they are on the source branch while
          that branch exists, and once the merge request is merged, on the target branch too
          (its merge commit as well), while that exists;
        - a commit seeded with `Project.add_commit(sha, on=[...])` is on those branches while
          they exist.
        A branch's deletion leaves its commits known but on no ref (GitLab's keep-around refs)."""
        with self.lock:
            refs: dict[str, set[tuple[str, str]]] = {}

            def on(sha: str | None, kind: str | None = None, name: str | None = None) -> None:
                if not sha:
                    return
                entry = refs.setdefault(sha, set())
                if kind and (kind == "tag" or name in p.branches):
                    entry.add((kind, name))

            for name, sha in p.branches.items():
                on(sha, "branch", name)
            for name, sha in p.tags.items():
                on(sha, "tag", name)
            for sha, branches in p.commits.items():
                on(sha)
                for name in branches:
                    on(sha, "branch", name)
            mrs = [mr for q in self.projects.values() for mr in q.merge_requests.values()
                   if mr.project_id == p.id or mr.source_project_id == p.id]
            for mr in mrs:
                for c in mr.commits:
                    on(c["id"])
                    if mr.source_project_id == p.id:
                        on(c["id"], "branch", mr.source_branch)
                    if mr.state == "merged" and mr.project_id == p.id:
                        on(c["id"], "branch", mr.target_branch)
                if mr.state == "merged" and mr.project_id == p.id:
                    on(mr.merge_commit_sha, "branch", mr.target_branch)
            return refs

    def _resolve_commit(self, p: Project, ref: str) -> str:
        """A full SHA, a unique prefix of one (4+ hex, like git), a branch or a tag name; else 404
        (an ambiguous prefix too: git refuses it, and GitLab answers 404)."""
        known = self.commit_refs(p)
        with self.lock:
            if ref in p.branches:
                return p.branches[ref]
            if ref in p.tags:
                return p.tags[ref]
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
        return self._json({"id": full, "short_id": full[:8], "title": f"Commit {full[:8]}",
                           "message": f"Commit {full[:8]}", "parent_ids": [], "created_at": ZERO_TIME,
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
        with self.lock:
            mrs = sorted(p.merge_requests.values(), key=lambda m: m.iid, reverse=True)  # newest first
            items = [self._mr_json(m) for m in mrs
                     if (state == "all" or m.state == state)
                     and (src is None or m.source_branch == src)
                     and (tgt is None or m.target_branch == tgt)]
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
