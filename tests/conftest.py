"""Shared fixtures: real redis-server (and, in support/, the registry and GitLab emulator)."""

from __future__ import annotations

import pytest
import redis

from tests.support.procs import RedisServer


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
