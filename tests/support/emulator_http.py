"""The GitLab emulator's HTTP core: the WSGI app, routing, auth, pagination, JSON answers, errors.

`HttpCore` is the base of `GitLabEmulator` (tests/support/gitlab_emulator.py), which assembles it
with the handlers of each API area (emulator_projects, emulator_merge_requests,
emulator_pipelines, emulator_deployments, emulator_registry, emulator_hooks). A request goes:
`_wsgi` (the raw path, %2F kept; the request log; dropped connections) -> `_respond` (an
injected fault, else `/jwt/auth`, else `/api/v4/...`: `_authenticate`, then the first route of
`_routes` whose regex fullmatches the path and whose method matches, GET also serving HEAD;
405 when the path is known but not the method, 404 otherwise) -> the handler, which answers
with `_json` or `_paginate` (GitLab's offset pagination: X-* headers and `Link`) or raises
`ApiError`. Any other exception is a 500, as GitLab would answer.

Handlers share the lookups here (`_project`, `_group`, `_repo`: 404 when missing, `:id` as a
number or a URL-encoded path) and `_params` (Grape reads query, form and JSON body alike).
Everything is read under the emulator's one lock (`self.lock`).
"""

from __future__ import annotations

import http
import json
import math
import secrets
import socket
from typing import Any
from urllib.parse import unquote, urlencode

from werkzeug.datastructures import MultiDict
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from tests.support.emulator_state import EMULATOR_USER, Group, Project, RegistryRepository


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


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on", "t")


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the emulator keeps its own request log."""

    def log_request(self, *args, **kwargs):  # noqa: D401
        pass


class HttpCore:
    """The WSGI side of `GitLabEmulator`: it expects `lock`, `token`, `url`, `_routes`,
    `_requests`, `_stopping`, `_take_fault` and `_jwt_auth` from the class it is assembled into."""

    API = "/api/v4"

    USER = EMULATOR_USER

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
