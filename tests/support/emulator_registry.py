"""The GitLab emulator's container registry: repositories and tags as GitLab's API shows them,
and the token service the real docker-registry trusts.

`GET /projects/:id/registry/repositories` (`tags`, `tags_count`), `/registry/repositories/:id`,
`/groups/:id/registry/repositories`, `GET /projects/:id/registry/repositories/:id/tags[/:tag]`
and `DELETE .../tags/:tag`: tag lists are read live from the attached registry, and a tag is
deleted the way GitLab does on a third-party registry (protected tag patterns answer 403).
`/jwt/auth` issues registry tokens for the emulator's token (HTTP Basic), granting pull, push
and delete on the repositories of known projects. A mixin of `GitLabEmulator`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets

from werkzeug.wrappers import Request, Response

from tests.support.emulator_http import ApiError, _bool, _not_found
from tests.support.emulator_state import RegistryRepository, _now_iso


class RegistryApi:
    """Registry repositories and tags, and /jwt/auth: a mixin of `GitLabEmulator`."""

    def _registry_host(self) -> str:
        return self.registry.host if self.registry else "registry.invalid"

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

    def list_group_registry_repositories(self, req, raw_path, gid):
        g = self._group(gid)
        with self.lock:
            repos = [r for p in self.group_projects(g) for r in p.registry_repositories]
        return self._paginate(req, raw_path, [self._repo_json(r) for r in repos])

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
