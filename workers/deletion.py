"""How a tag dies: the only place the service deletes one.

An event cleanup (workers/cleanup.py) and a sweep (workers/sweep/) hand this module the tags
their rules doomed (rules.Decision) and the registry repositories to delete them from, as
GitLab's API lists them (id, path, location). Here the store REGISTRY_MODE asks for is opened
(`open_store`), the tags are deleted a few at a time (`delete_tags`), or in a dry run looked
up, and each outcome becomes a report entry:

    deleted       gone now (with the digest it pointed at)
    would_delete  a dry run: it exists, and would go
    absent        no such tag in that repository
    kept          GitLab refused the delete (403: a protection rule), or the tag was pushed
                  again since the plan saw it (it is in use)
    failed        the service failed; the job's retry deletes what is left

A refused token (errors.AuthError) fails the whole job at once: retrying won't fix it.

Two stores, one protocol (`Store`): `GitLabStore` (api mode, GitLab's single-tag DELETE) and
`RegistryStore` (registry mode, the registry's v2 API, workers/registry.py). Neither ever
deletes a manifest by digest that another tag still points at.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Protocol

from workers import registry as reg
from workers.common import errors
from workers.common.settings import Settings
from workers.gitlab import GitLab
from workers.report import Report
from workers.rules import Code, Decision, Reason

# What a store's delete_many says of one tag: deleted; absent (no such tag); forbidden (GitLab's
# protection rule answered 403); changed (the tag moved since it was resolved: pushed again).
OUTCOMES = ("deleted", "absent", "forbidden", "changed")

# Per tag: (outcome, the digest it pointed at when known), or the error that tag failed with.
Result = tuple[str, str | None] | errors.ServiceError

ABSENT = Reason(Code.ABSENT, "no such tag in this repository")
CHANGED = Reason(Code.CHANGED, "the tag was pushed again since the plan saw it: in use")
FORBIDDEN = Reason(Code.FORBIDDEN, "GitLab refused the delete (403): a protection rule covers it")


def failure(exc: errors.ServiceError) -> Reason:
    """Why a tag could not be deleted: the error's message, coded transient or not."""
    return Reason(Code.TRANSIENT if isinstance(exc, errors.TransientError) else Code.ERROR, str(exc))


class Store(Protocol):
    """Where tags are looked up, listed and deleted: everything a cleanup and a sweep use."""

    # How many tags of one repository one delete_many call takes (None: all of them at once).
    batch: int | None

    def find(self, repo: dict, tag: str) -> str | None:
        """The tag's digest ("" when the store does not say), or None when there is no such tag."""

    def delete_many(self, repo: dict, tags: list[str]) -> list[Result]:
        """Delete exactly these tags, never another: one Result per tag, in order. A refused
        token raises errors.AuthError."""

    def pages(self, repo: dict, size: int, decide: Callable[[list[str]], int]) -> None:
        """Hand every tag of `repo` to `decide`, at most `size` at a time; `decide` returns how
        many of the tags it was given are gone now (a listing by offset asks for that page again)."""

    def calls(self) -> dict[int | str, int]:
        """The store's own requests by HTTP status (or error name), for the metrics."""

    def close(self) -> None: ...


class GitLabStore:
    """api mode: GitLab's single-tag DELETE, which removes that one tag only."""

    batch = 1  # one request per tag: the tags of a repository are deleted in parallel

    def __init__(self, gitlab: GitLab, project_id: int):
        self.gitlab = gitlab
        self.project_id = project_id

    def find(self, repo: dict, tag: str) -> str | None:
        found = self.gitlab.registry_tag(self.project_id, repo["id"], tag)
        return (found.get("digest") or "") if found else None

    def delete_many(self, repo: dict, tags: list[str]) -> list[Result]:
        results: list[Result] = []
        for tag in tags:
            try:
                results.append((self.gitlab.delete_registry_tag(self.project_id, repo["id"], tag), None))
            except errors.AuthError:
                raise
            except errors.ServiceError as exc:
                results.append(exc)
        return results

    def pages(self, repo: dict, size: int, decide: Callable[[list[str]], int]) -> None:
        # GitLab pages by offset: deleting from a page moves what follows up into it, so a page
        # that lost tags is asked for again (skipping the names already decided).
        number, done = 1, set()
        while True:
            items, following = self.gitlab.registry_tags_page(self.project_id, repo["id"], number, size)
            names = [t["name"] for t in items if isinstance(t, dict) and isinstance(t.get("name"), str)]
            removed = decide([n for n in names if n not in done])
            done = set(names)
            if removed:
                continue
            if not names or not following:
                return
            number = following

    def calls(self) -> dict[int | str, int]:
        return {}  # its requests are the job's GitLab client's, counted with it

    def close(self) -> None:
        pass


class RegistryStore:
    """registry mode: the registry's own API with a token from GitLab's /jwt/auth.

    One client per registry host (a project's repositories normally share one), each
    caching tokens per repository and remembering whether the host deletes tags the OCI way.
    """

    # One call per repository: each tag is resolved once, right before it is rewritten, and the
    # rewritten tags are deleted together (Registry.delete_tags).
    batch = None

    def __init__(self, *, username: str, password: str, registry_url: str = "", timeout: float = 30.0,
                 pool_size: int = 10):
        self._username, self._password = username, password
        self.registry_url = registry_url.rstrip("/")
        self.timeout = timeout
        self.pool_size = pool_size
        self._clients: dict[str, reg.Registry] = {}
        self._lock = threading.Lock()

    def _where(self, repo: dict) -> tuple[reg.Registry, str]:
        """The client of the repository's registry host, and the repository's path there."""
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

    def delete_many(self, repo: dict, tags: list[str]) -> list[Result]:
        client, path = self._where(repo)
        return client.delete_tags(path, tags)

    def pages(self, repo: dict, size: int, decide: Callable[[list[str]], int]) -> None:
        # The registry pages by `last=<tag>`: deleting behind the cursor moves nothing. The same
        # client (and tokens) lists and deletes.
        client, path = self._where(repo)
        page: list[str] = []
        for name in client.tags(path, page_size=1000):
            page.append(name)
            if len(page) >= size:
                decide(page)
                page = []
        decide(page)  # the last one, perhaps empty

    def calls(self) -> dict[int | str, int]:
        total: dict[int | str, int] = {}
        for client in self._clients.values():
            for key, n in client.calls.items():
                total[key] = total.get(key, 0) + n
        return total

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def open_store(settings: Settings, gitlab: GitLab, project_id: int) -> Store:
    """The store REGISTRY_MODE asks for (close it when done)."""
    if settings.registry_mode == "registry":
        return RegistryStore(username=settings.registry_user, password=settings.gitlab_token,
                             registry_url=settings.registry_url, timeout=settings.http_timeout,
                             pool_size=settings.delete_concurrency + 2)
    return GitLabStore(gitlab, project_id)


def delete_tags(store: Store, report: Report, repositories: list[dict], doomed: list[Decision], *,
                dry_run: bool, concurrency: int) -> None:
    """Delete (or, in a dry run, look up) every doomed tag in every repository, a few at a time,
    and report each outcome. Raises errors.AuthError when a token is refused."""
    work = _look_up if dry_run else _delete
    size = 1 if dry_run else store.batch or max(1, len(doomed))
    # Tag-major order: neighbouring jobs hit different repositories, which can proceed in parallel.
    jobs = [(repo, doomed[i:i + size]) for i in range(0, len(doomed), size) for repo in repositories]

    def run(job: tuple[dict, list[Decision]]) -> None:
        work(store, report, *job)

    lanes = max(1, min(concurrency, len(jobs)))
    if lanes == 1:
        for job in jobs:
            run(job)
        return
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="delete") as pool:
        list(pool.map(run, jobs))


def _delete(store: Store, report: Report, repo: dict, decisions: list[Decision]) -> None:
    path = repo_path(repo)
    try:
        results: Iterable[Result] = store.delete_many(repo, [d.tag for d in decisions])
    except errors.AuthError:
        raise
    except errors.ServiceError as exc:
        results = [exc] * len(decisions)
    for decision, result in zip(decisions, results):
        if isinstance(result, errors.ServiceError):
            report.add("failed", decision.tag, failure(result), path)
            continue
        outcome, digest = result
        if outcome == "deleted":
            report.add("deleted", decision.tag, decision.reason, path, digest)
        elif outcome == "absent":
            report.add("absent", decision.tag, ABSENT, path)
        elif outcome == "changed":
            report.add("kept", decision.tag, CHANGED, path, digest)
        else:
            report.add("kept", decision.tag, FORBIDDEN, path)


def _look_up(store: Store, report: Report, repo: dict, decisions: list[Decision]) -> None:
    """A dry run: what would go, with the digest it points at."""
    path = repo_path(repo)
    for decision in decisions:
        try:
            digest = store.find(repo, decision.tag)
        except errors.AuthError:
            raise
        except errors.ServiceError as exc:
            report.add("failed", decision.tag, failure(exc), path)
            continue
        if digest is None:
            report.add("absent", decision.tag, ABSENT, path)
        else:
            report.add("would_delete", decision.tag, decision.reason, path, digest or None)


def repo_path(repo: dict) -> str:
    """How reports name a registry repository: its path (or its id)."""
    return repo.get("path") or str(repo.get("id"))
