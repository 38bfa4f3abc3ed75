"""The GitLab REST API client: one request path, a timeout on every call, every endpoint the service uses.

Transient answers (429, 5xx, dropped connections, timeouts) are retried (workers/http.py)
with exponential backoff that honours `Retry-After`; what still fails raises
`TransientError`, and the job's own RQ retry takes over from there.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator
from urllib.parse import quote

import requests

from workers.common import errors
from workers.http import TRANSIENT_STATUSES, Client, retry_after_seconds

__all__ = ["TRANSIENT_STATUSES", "retry_after_seconds"]  # re-exported: GitLab's names for them

log = logging.getLogger("tagsweeper.gitlab")


class GitLabError(errors.ServiceError):
    """Base of every error talking to GitLab."""


class AuthError(GitLabError, errors.AuthError):
    """The token was refused (401) or lacks a permission (403 on something other than a tag)."""


class NotFound(GitLabError):
    """404: the project, branch, repository or tag does not exist (or the token cannot see it)."""


class TransientError(GitLabError, errors.TransientError):
    """GitLab kept answering 429/5xx or did not answer; worth retrying later."""


class BadResponse(GitLabError, errors.BadResponse):
    """An answer the client cannot use (unexpected status or not JSON)."""


def encode(value: str | int) -> str:
    """A path segment: ids as they are, paths and names fully percent-encoded ('/' too)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = str(value)
    # A name GitLab cannot have is "not found" without a request. "" would address the parent
    # (.../branches/ lists them); "." and ".." are dot-segments, sent literally (requests turns
    # %2E back into '.') and resolved by servers and proxies: .../branches/.. is .../repository/.
    # A lone surrogate has no UTF-8 form at all.
    if text in ("", ".", "..") or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise NotFound(f"{text!r} cannot name a GitLab object (no request made)", 404)
    return quote(text, safe="")


class GitLab(Client):
    """A thin client of GitLab's REST API v4."""

    transient_error = TransientError
    log = log
    log_message = "gitlab call failed"
    asked = "GitLab asked"

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, attempts: int = 4,
                 backoff: float = 0.5, max_wait: float = 60.0, pool_size: int = 10,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(timeout=timeout, attempts=attempts, backoff=backoff, max_wait=max_wait,
                         pool_size=pool_size, sleep=sleep, headers={"PRIVATE-TOKEN": token})
        self.api = url.rstrip("/") + "/api/v4"

    def request(self, method: str, path: str, *, params: dict | None = None,
                json: Any = None) -> requests.Response:
        """Send one request, retrying transient failures; return the response of a 2xx/404/403."""
        what = f"{method} {path}"
        return self._check(self._send(method, self.api + path, what, params=params, json=json), what)

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        status = response.status_code
        if status < 300 or status in (403, 404):
            return response
        if status == 401:
            raise AuthError(f"{what}: GitLab refused GITLAB_TOKEN (401): check that it is valid, "
                            "not expired, and has the api scope", status)
        raise BadResponse(f"{what}: unexpected HTTP {status}: {_message(response)}", status)

    def get(self, path: str, params: dict | None = None) -> Any:
        """The JSON of a GET; 404 raises NotFound, 403 AuthError."""
        return self._get(path, params)[0]

    def _get(self, path: str, params: dict | None) -> tuple[Any, requests.Response]:
        response = self.request("GET", path, params=params)
        if response.status_code == 404:
            raise NotFound(f"GET {path}: {_message(response)}", 404)
        if response.status_code == 403:
            raise forbidden(f"GET {path}", response)
        return _json(response, path), response

    def page(self, path: str, params: dict | None = None) -> list:
        """One page of a list endpoint, as asked (`page`, `per_page` and filters in `params`)."""
        return self._list(path, params)[0]

    def paginate(self, path: str, params: dict | None = None, per_page: int = 100) -> Iterator[dict]:
        """Yield every item of a list endpoint, page by page (X-Next-Page), never all at once."""
        query = dict(params or {}, per_page=per_page, page=1)
        while True:
            items, following = self.page_and_next(path, query)
            yield from items
            if following is None:
                return
            query["page"] = following

    def page_and_next(self, path: str, params: dict | None) -> tuple[list, int | None]:
        """One page of a list endpoint and the number of the next one (None: this was the last)."""
        items, response = self._list(path, params)
        following = response.headers.get("X-Next-Page", "").strip()
        if following and not following.isdigit():
            raise BadResponse(f"GET {path}: X-Next-Page is not a page number: {following[:20]!r}")
        return items, (int(following) if following and items else None)

    def _list(self, path: str, params: dict | None) -> tuple[list, requests.Response]:
        items, response = self._get(path, params)
        if not isinstance(items, list):
            raise BadResponse(f"GET {path}: expected a list")
        return items, response

    # The endpoints the service uses.

    def project(self, project: int | str) -> dict:
        return self.get(f"/projects/{encode(project)}")

    def branch(self, project: int | str, branch: str) -> dict | None:
        try:
            return self.get(f"/projects/{encode(project)}/repository/branches/{encode(branch)}")
        except NotFound:
            return None

    def branches(self, project: int | str) -> Iterator[dict]:
        return self.paginate(f"/projects/{encode(project)}/repository/branches")

    def git_tags(self, project: int | str) -> Iterator[dict]:
        return self.paginate(f"/projects/{encode(project)}/repository/tags")

    def branch_heads(self, project: int | str) -> dict[str, str]:
        """Every branch of the project: name -> the SHA of its head commit."""
        return {b["name"]: (b.get("commit") or {}).get("id", "") for b in self.branches(project)}

    def tag_commits(self, project: int | str) -> dict[str, str]:
        """Every git tag of the project: name -> the SHA of the commit it points at."""
        return {t["name"]: (t.get("commit") or {}).get("id") or t.get("target", "") for t in self.git_tags(project)}

    def merge_requests(self, project: int | str, **params: Any) -> Iterator[dict]:
        return self.paginate(f"/projects/{encode(project)}/merge_requests", params)

    def merge_request(self, project: int | str, iid: int) -> dict:
        return self.get(f"/projects/{encode(project)}/merge_requests/{int(iid)}")

    def merge_request_commits(self, project: int | str, iid: int) -> Iterator[dict]:
        return self.paginate(f"/projects/{encode(project)}/merge_requests/{int(iid)}/commits")

    def pipelines_page(self, project: int | str, params: dict) -> list[dict]:
        """One page of `GET /projects/:id/pipelines` with GitLab's filters (`updated_after`, `order_by`, ...)."""
        return self.page(f"/projects/{encode(project)}/pipelines", params)

    def pipeline(self, project: int | str, pipeline_id: int) -> dict:
        """One pipeline, with the fields the list leaves out (`tag`, `before_sha`)."""
        return self.get(f"/projects/{encode(project)}/pipelines/{int(pipeline_id)}")

    def environments(self, project: int | str, state: str) -> Iterator[dict]:
        """The project's environments in one state (`available`, `stopping` or `stopped`). GitLab's
        list leaves each environment's `last_deployment` out."""
        return self.paginate(f"/projects/{encode(project)}/environments", {"states": state})

    def deployments_page(self, project: int | str, params: dict) -> list[dict]:
        """One page of `GET /projects/:id/deployments` with GitLab's filters (`environment`, `status`,
        `updated_after`, `order_by`, ...)."""
        return self.page(f"/projects/{encode(project)}/deployments", params)

    def merge_requests_by_iid(self, project: int | str, iids: list[int]) -> Iterator[dict]:
        """The merge requests with these iids (`iids[]`), up to 100 per request."""
        iids = sorted({int(i) for i in iids})
        for start in range(0, len(iids), 100):
            yield from self.paginate(f"/projects/{encode(project)}/merge_requests",
                                     {"state": "all", "iids[]": iids[start:start + 100]})

    def commit(self, project: int | str, ref: str) -> dict | None:
        """The commit a SHA (a short one too) or ref names; None when git finds none (or more than one)."""
        try:
            return self.get(f"/projects/{encode(project)}/repository/commits/{encode(ref)}")
        except NotFound:
            return None

    def commit_refs(self, project: int | str, sha: str, limit: int = 100) -> list[tuple[str, str]] | None:
        """The branches and tags that contain a commit, as (type, name); None when GitLab knows no
        such commit. Only the first `limit` refs are asked for: callers need "any live ref"."""
        try:
            items = self.page(f"/projects/{encode(project)}/repository/commits/{encode(sha)}/refs",
                              {"type": "all", "per_page": limit, "page": 1})
        except NotFound:
            return None
        return [(str(i.get("type")), str(i.get("name"))) for i in items if isinstance(i, dict)]

    def registry_repositories(self, project: int | str) -> Iterator[dict]:
        return self.paginate(f"/projects/{encode(project)}/registry/repositories")

    def registry_tags_page(self, project: int | str, repository_id: int, page: int,
                           per_page: int = 100) -> tuple[list[dict], int | None]:
        """One page of a registry repository's tags and the next page's number (None: the last);
        an empty last page when the repository is gone."""
        try:
            return self.page_and_next(f"/projects/{encode(project)}/registry/repositories/"
                                      f"{int(repository_id)}/tags", {"page": page, "per_page": per_page})
        except NotFound:
            return [], None

    def registry_tag(self, project: int | str, repository_id: int, tag: str) -> dict | None:
        try:
            return self.get(f"/projects/{encode(project)}/registry/repositories/"
                            f"{int(repository_id)}/tags/{encode(tag)}")
        except NotFound:
            return None

    def delete_registry_tag(self, project: int | str, repository_id: int, tag: str) -> str:
        """Delete exactly one tag. Returns 'deleted', 'absent' or 'forbidden' (a protection rule)."""
        path = f"/projects/{encode(project)}/registry/repositories/{int(repository_id)}/tags/{encode(tag)}"
        response = self.request("DELETE", path)
        if response.status_code == 404:
            # After a failed attempt, a 404 means our earlier request did the deletion.
            return "deleted" if getattr(response, "attempts", 1) > 1 else "absent"
        if response.status_code == 403:
            return "forbidden"
        return "deleted"

    # Writes: parameters go in a JSON body (never the query string, which proxies log).

    def send(self, method: str, path: str, data: dict | None = None) -> Any:
        """POST/PUT/DELETE `data` as JSON; return the answer's JSON (None when it has no body).
        404 raises NotFound, 403 AuthError, any other non-2xx BadResponse (from `request`)."""
        what = f"{method} {path}"
        response = self.request(method, path, json=data)
        if response.status_code == 404:
            raise NotFound(f"{what}: {_message(response)}", 404)
        if response.status_code == 403:
            raise forbidden(what, response)
        if response.status_code == 204 or not response.content:
            return None
        return _json(response, path)

    def post(self, path: str, data: dict | None = None) -> Any:
        return self.send("POST", path, data)

    def put(self, path: str, data: dict | None = None) -> Any:
        return self.send("PUT", path, data)

    def delete(self, path: str) -> Any:
        return self.send("DELETE", path)

    # Webhooks of a project or a group (kind "project" or "group").

    def group(self, group: int | str) -> dict:
        return self.get(f"/groups/{encode(group)}")

    def group_projects(self, group: int | str) -> Iterator[dict]:
        """Every project of a group and of its subgroups (not those shared with it)."""
        return self.paginate(f"/groups/{encode(group)}/projects",
                             {"include_subgroups": "true", "with_shared": "false"})

    @staticmethod
    def _hooks_path(kind: str, owner: int | str) -> str:
        if kind not in ("project", "group"):
            raise ValueError(f"hooks belong to a project or a group, not {kind!r}")
        return f"/{kind}s/{encode(owner)}/hooks"

    def hooks(self, kind: str, owner: int | str) -> Iterator[dict]:
        return self.paginate(self._hooks_path(kind, owner))

    def add_hook(self, kind: str, owner: int | str, fields: dict) -> dict:
        """Create a hook. Not idempotent: a POST retried after a lost answer can create two."""
        return self.post(self._hooks_path(kind, owner), fields)

    def edit_hook(self, kind: str, owner: int | str, hook_id: int, fields: dict) -> dict:
        """Update a hook. Send `token` every time: GitLab drops it when the URL changes."""
        return self.put(f"{self._hooks_path(kind, owner)}/{int(hook_id)}", fields)

    def delete_hook(self, kind: str, owner: int | str, hook_id: int) -> bool:
        """Delete a hook; False when it was already gone."""
        try:
            self.delete(f"{self._hooks_path(kind, owner)}/{int(hook_id)}")
        except NotFound:
            return False
        return True

    @classmethod
    def from_settings(cls, settings) -> "GitLab":
        """The client of GITLAB_URL with GITLAB_TOKEN, as `settings` (workers.common.settings.Settings)
        say: the one place tagsweeper builds it. ConfigError when the connection is not configured."""
        settings.require_gitlab()
        return cls(settings.gitlab_url, settings.gitlab_token, timeout=settings.http_timeout,
                   pool_size=settings.delete_concurrency + 2)  # the deletions' threads, and the sweep's look-ups


def forbidden(what: str, response: requests.Response) -> AuthError:
    """A 403 on something other than a tag delete: the token lacks a scope or its user a role."""
    return AuthError(f"{what}: GitLab refused GITLAB_TOKEN (403: {_message(response)}): give the token the api "
                     "scope, and its user at least Developer on the project (Maintainer for protected "
                     "container tags, hooks and registry-mode deletes)", 403)


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:200] or response.reason or ""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(body)[:200]


def _json(response: requests.Response, path: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise BadResponse(f"GET {path}: GitLab answered HTTP {response.status_code} with no JSON") from None
