"""Where tags are looked up and deleted: through GitLab's REST API, or the registry v2 API.

Both stores answer the same two questions for one tag of one registry repository (a
repository as GitLab's API lists it: id, path, location), so a cleanup is the same in
either mode. Neither ever deletes a manifest by digest that a tag still points at.
"""

from __future__ import annotations

import threading
from typing import Protocol

from workers import registry as reg
from workers.gitlab import GitLab

# Outcomes of delete(): deleted; absent (no such tag); forbidden (GitLab's protection rule
# answered 403); changed (the tag moved since it was resolved: a pipeline pushed it again).
OUTCOMES = ("deleted", "absent", "forbidden", "changed")


class TagStore(Protocol):
    # True where a deletion must know the digest the plan saw (it may overwrite the tag).
    resolves_first: bool

    def find(self, repo: dict, tag: str) -> str | None:
        """The tag's digest, or None when the repository has no such tag."""

    def delete(self, repo: dict, tag: str, expected: str | None = None) -> tuple[str, str | None]:
        """Delete exactly this tag, unless it no longer points at `expected`: (outcome, digest)."""

    def close(self) -> None: ...


class GitLabTags:
    """api mode: GitLab's single-tag DELETE, which removes that one tag only."""

    resolves_first = False  # GitLab deletes the tag as it is now, in one request

    def __init__(self, gitlab: GitLab, project_id: int):
        self.gitlab = gitlab
        self.project_id = project_id

    def find(self, repo: dict, tag: str) -> str | None:
        found = self.gitlab.registry_tag(self.project_id, repo["id"], tag)
        return (found.get("digest") or "") if found else None

    def delete(self, repo: dict, tag: str, expected: str | None = None) -> tuple[str, str | None]:
        return self.gitlab.delete_registry_tag(self.project_id, repo["id"], tag), expected

    def close(self) -> None:
        pass


class RegistryTags:
    """registry mode: the registry's own API with a token from GitLab's /jwt/auth.

    One client per registry host (a project's repositories normally share one), each
    caching tokens per repository and remembering whether the host deletes tags the OCI way.
    """

    # A registry without OCI tag deletion needs the tag overwritten first: resolve it in the
    # plan so the overwrite can be skipped if a pipeline pushed the tag again meanwhile.
    resolves_first = True

    def __init__(self, *, username: str, password: str, registry_url: str = "", timeout: float = 30.0,
                 pool_size: int = 10):
        self._username, self._password = username, password
        self.registry_url = registry_url.rstrip("/")
        self.timeout = timeout
        self.pool_size = pool_size
        self._clients: dict[str, reg.Registry] = {}
        self._lock = threading.Lock()

    def _where(self, repo: dict) -> tuple[reg.Registry, str]:
        if self.registry_url:
            base, path = self.registry_url, repo["path"]
        else:
            base, path = reg.registry_base(repo["location"])
        with self._lock:
            client = self._clients.get(base)
            if client is None:
                client = reg.Registry(base, username=self._username, password=self._password,
                                      timeout=self.timeout, pool_size=self.pool_size)
                self._clients[base] = client
        return client, path

    def find(self, repo: dict, tag: str) -> str | None:
        client, path = self._where(repo)
        return client.resolve(path, tag)

    def delete(self, repo: dict, tag: str, expected: str | None = None) -> tuple[str, str | None]:
        client, path = self._where(repo)
        return client.delete_tag(path, tag, expected_digest=expected)

    def delete_many(self, repo: dict, tags: list[str]) -> list:
        """Delete these tags of one repository, each resolved once right before it is rewritten
        (no separate find): per tag (outcome, digest) or the RegistryError it failed with."""
        client, path = self._where(repo)
        return client.delete_tags(path, tags)

    def calls(self) -> dict:
        total: dict = {}
        for client in self._clients.values():
            for key, n in client.calls.items():
                total[key] = total.get(key, 0) + n
        return total

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
