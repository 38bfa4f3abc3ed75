"""The GitLab client against the emulator over real HTTP: paging, encoding, retries, errors."""

from __future__ import annotations

import pytest

from workers import gitlab as gl


@pytest.fixture
def client(gitlab):
    sleeps: list[float] = []
    c = gl.GitLab(gitlab.url, gitlab.token, timeout=5, backoff=0.01, sleep=sleeps.append)
    c.sleeps = sleeps
    yield c
    c.close()


def test_pagination_reads_every_page(gitlab, client):
    project = gitlab.add_project(501, "acme/paging")
    for i in range(250):
        project.branches[f"b-{i:03d}"] = f"{i:040x}"
    gitlab.reset_requests()
    names = [b["name"] for b in client.branches(501)]
    assert len(names) == 251 and len(set(names)) == 251  # main + 250
    assert gitlab.count("GET", r"/repository/branches") == 3  # 100 per page


def test_paths_and_names_are_encoded(gitlab, client):
    gitlab.add_project(502, "acme/enc").branches["feature/a b#?"] = "a" * 40
    assert client.project("acme/enc")["id"] == 502
    assert client.branch(502, "feature/a b#?")["commit"]["id"] == "a" * 40
    assert client.branch(502, "feature/../../x") is None


def test_retries_5xx_then_succeeds(gitlab, client):
    gitlab.add_project(503, "acme/flaky")
    gitlab.inject_fault("GET", r"/projects/503$", 502, times=2)
    assert client.project(503)["id"] == 503
    assert len(client.sleeps) == 2
    assert client.calls[502] == 2 and client.calls[200] == 1


def test_honours_retry_after(gitlab, client):
    gitlab.add_project(504, "acme/limited")
    gitlab.inject_fault("GET", r"/projects/504$", 429, times=1, headers={"Retry-After": "3"})
    assert client.project(504)["id"] == 504
    assert client.sleeps == [3.0]


def test_long_retry_after_is_left_to_the_job_retry(gitlab, client):
    gitlab.add_project(505, "acme/limited2")
    gitlab.inject_fault("GET", r"/projects/505$", 429, times=1, headers={"Retry-After": "3600"})
    with pytest.raises(gl.TransientError, match="retry after 3600"):
        client.project(505)
    assert client.sleeps == []


def test_gives_up_after_attempts(gitlab, client):
    gitlab.add_project(506, "acme/down")
    gitlab.inject_fault("GET", r"/projects/506$", 503, times=-1)
    with pytest.raises(gl.TransientError, match="still failing after 4 attempts"):
        client.project(506)
    assert gitlab.count("GET", r"/projects/506$") == 4


def test_bad_token_is_a_clear_permanent_error(gitlab):
    gitlab.add_project(507, "acme/auth")
    c = gl.GitLab(gitlab.url, "wrong-token", timeout=5, sleep=lambda s: None)
    with pytest.raises(gl.AuthError, match="GITLAB_TOKEN") as info:
        c.project(507)
    assert "wrong-token" not in str(info.value)
    assert gitlab.count("GET", r"/projects/507$") == 1  # no retry


def test_unreachable_gitlab_times_out_and_raises_transient():
    from tests.support.procs import free_port
    c = gl.GitLab(f"http://127.0.0.1:{free_port()}", "t", timeout=1, attempts=2, sleep=lambda s: None)
    with pytest.raises(gl.TransientError, match="ConnectionError"):
        c.project(1)


def test_hanging_gitlab_hits_the_read_timeout(gitlab):
    gitlab.add_project(508, "acme/slow")
    gitlab.inject_fault("GET", r"/projects/508$", 200, times=1, delay=2.0)
    c = gl.GitLab(gitlab.url, gitlab.token, timeout=0.5, attempts=2, sleep=lambda s: None)
    assert c.project(508)["id"] == 508  # first attempt timed out, second answered
    assert c.calls.get("ReadTimeout") == 1


@pytest.mark.parametrize("value, seconds", [("5", 5.0), ("0", 0.0), (None, None), ("soon", None)])
def test_retry_after_parsing(value, seconds):
    assert gl.retry_after_seconds(value) == seconds
