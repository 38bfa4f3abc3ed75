"""The GitLab emulator's webhook handlers, for projects and groups alike.

`GET|POST /projects/:id/hooks`, `GET|PUT|DELETE /projects/:id/hooks/:hook_id`, and the same
under `/groups/:id`. Event flags default as GitLab's do (`HOOK_EVENT_DEFAULTS`), the secret
token is never returned, and changing the URL without sending the token again clears it.
A mixin of `GitLabEmulator`.
"""

from __future__ import annotations

import re
from typing import Callable

from werkzeug.wrappers import Response

from tests.support.emulator_http import ApiError, _bool
from tests.support.emulator_state import _now_iso

# Hook fields GitLab accepts; booleans with their defaults.
HOOK_EVENT_DEFAULTS = {
    "push_events": True, "issues_events": False, "confidential_issues_events": False,
    "merge_requests_events": False, "tag_push_events": False, "note_events": False,
    "confidential_note_events": False, "job_events": False, "pipeline_events": False,
    "wiki_page_events": False, "deployment_events": False, "releases_events": False,
    "enable_ssl_verification": True,
}


class HooksApi:
    """Project and group webhooks: a mixin of `GitLabEmulator`."""

    @staticmethod
    def _hook_json(hook: dict) -> dict:
        return {k: v for k, v in hook.items() if k != "token"}  # GitLab never returns the token

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
