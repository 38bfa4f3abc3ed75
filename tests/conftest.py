"""Shared fixtures, for every test module; the helpers behind them live in tests/support/.

- `redis_server` (session), `redis_url` (emptied before each test), `conn`: a real redis-server;
- `gitlab_stack` (session: the GitLab emulator and a real docker-registry wired together) and
  `gitlab` (the emulator, reset, with an empty registry, for each test);
- `make_client` (the product's registry client on that registry, its responses recorded in
  `.recorder`) and `shop` ("acme/shop", project 101, with its root registry repository).
  test_emulator.py and test_registration.py define a `shop` of their own, which wins there.

Assertions in tests/support/ helpers (`assert_registry`, the safety checks, ...) are rewritten
like the tests' own, so a failure shows the values compared.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import redis

pytest.register_assert_rewrite("tests.support")

from tests.support.procs import RedisServer  # noqa: E402  (after register_assert_rewrite)
from workers import registry as reg  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """URL of the real redis-server, emptied before each test."""
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    conn.close()
    return redis_server.url


@pytest.fixture
def conn(redis_url):
    """A client of the emptied real redis-server."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def store(redis_server):
    """A client of the suite's real redis-server, not emptied: a module's running service uses it."""
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


# --- GitLab emulator + real docker-registry -------------------------------------------

class GitLabStack:
    """What `gitlab_stack` yields: the running emulator and registry, wired together."""

    def __init__(self, emulator, registry):
        self.emulator = emulator
        self.registry = registry

    @property
    def registry_client(self):
        # The emulator's own client: tests and the emulator share its caches.
        return self.emulator.registry_client


@pytest.fixture(scope="session")
def gitlab_stack(tmp_path_factory):
    """GitLab emulator on a free port, then a docker-registry whose token realm is the
    emulator's /jwt/auth and which trusts the emulator's signing key."""
    from tests.support.gitlab_emulator import GitLabEmulator
    from tests.support.registry import RegistryServer

    emulator = GitLabEmulator().start()  # binds its port first: the realm needs its URL
    registry = None
    try:
        registry = RegistryServer(tmp_path_factory.mktemp("registry"), realm=emulator.url + "/jwt/auth").start()
        emulator.registry = registry
        yield GitLabStack(emulator, registry)
    finally:
        if registry is not None:
            registry.stop()
        emulator.stop()


@pytest.fixture
def gitlab(gitlab_stack):
    """The GitLab emulator, clean for this test: no projects, groups, faults or logged
    requests, and an empty registry.

    Registry isolation: the registry process lives for the whole session, but before
    each test its repositories are wiped from storage (`RegistryServer.wipe`, safe
    because no blob-descriptor cache is configured) and the shared RegistryClient's
    caches are cleared. Tests may therefore reuse paths such as "acme/shop"; a test
    that starts its own long-lived clients should still prefer unique paths.
    """
    emu = gitlab_stack.emulator
    emu.reset()
    gitlab_stack.registry.wipe()
    emu.registry_client.clear_cache()
    return emu


# --- the product's registry client against the real docker-registry (test_registry_*.py) -------

class Recorder:
    """(method, path, status) of every response the client's session receives."""

    def __init__(self, client: reg.Registry):
        self.seen: list[tuple[str, str, int]] = []
        client.session.hooks["response"].append(self._record)

    def _record(self, response, *args, **kwargs):
        self.seen.append((response.request.method, urlsplit(response.request.url).path, response.status_code))

    def count(self, method: str, path_contains: str = "", status: int | None = None) -> int:
        return sum(1 for m, p, s in self.seen
                   if m == method and path_contains in p and (status is None or s == status))

    def clear(self) -> None:
        self.seen.clear()


@pytest.fixture
def make_client(gitlab, gitlab_stack):
    made: list[reg.Registry] = []

    def make(**kw) -> reg.Registry:
        kw.setdefault("username", "anyone")
        kw.setdefault("password", gitlab.token)
        kw.setdefault("timeout", 10)
        kw.setdefault("backoff", 0.01)
        client = reg.Registry(gitlab_stack.registry.url, **kw)
        client.recorder = Recorder(client)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def shop(gitlab):
    """Project acme/shop with its root registry repository."""
    project = gitlab.add_project(101, "acme/shop")
    project.add_registry_repository("")
    return "acme/shop"
