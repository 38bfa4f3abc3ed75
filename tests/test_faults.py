"""Fault tolerance end to end, on real parts: GitLab and the token service misbehaving during a
cleanup, Redis restarted under a running service, a worker killed with SIGKILL mid-cleanup,
and several workers cleaning at once.

Everything runs as in production: gunicorn and `tagsweeper worker` subprocesses, a real
redis-server, the GitLab emulator (whose `inject_fault` makes GitLab answer 429/5xx, hang
or drop the connection) and a real docker-registry. The workers run with short maintenance
settings (WORKER_MAINTENANCE_INTERVAL, WORKER_ABANDONED_AFTER, CLEANUP_LOCK_TTL) so that
what takes a minute or two in production takes seconds here; nothing is mocked.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from urllib.parse import unquote

import pytest
import redis
import requests
from rq import Worker
from rq.job import Job

from tests.support.faultproxy import FaultProxy
from tests.support.procs import RedisServer
from tests.support.service import ROOT, Service, job_or_none, load_payload
from tests.support.modes import mode_env
from tests.support.shop import EARLIER, FEATURE, LAST, assert_registry, make_shop, merge_payload
from workers.locks import BranchLock

pytestmark = pytest.mark.e2e

TAG_DELETE = r"/registry/repositories/\d+/tags/"
JWT = r"^/jwt/auth$"
GONE = {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]}  # what make_shop's merge cleans
# Abandoned jobs found within seconds, retried a second later, dead holders' locks freed in 3 s.
# No scheduled sweep: a worker starting after a missed slot would sweep the test's projects too.
FAST = {"WORKER_MAINTENANCE_INTERVAL": "1", "WORKER_ABANDONED_AFTER": "4", "CLEANUP_LOCK_TTL": "3",
        "CLEANUP_RETRIES": "3", "CLEANUP_RETRY_INTERVALS": "1", "SWEEP_CRON": "off"}
_ids = itertools.count(7000)


@pytest.fixture
def start_service(tmp_path, gitlab_stack):
    """start_service(redis_url, mode="api", workers=1, **env): gunicorn and `workers` workers."""
    started: list[Service] = []

    def start(redis_url: str, mode: str = "api", workers: int = 1, **env: str) -> Service:
        emu = gitlab_stack.emulator
        svc = Service(tmp_path / f"svc{len(started)}", redis_url, emu.url, emu.token,
                      **{**FAST, **mode_env(mode, gitlab_stack), **env})
        started.append(svc)
        svc.start_web()
        for _ in range(workers):
            svc.start_worker()
        return svc

    yield start
    for svc in started:
        svc.stop()


def wait_until(predicate, timeout: float, what: str, svc: Service | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout}s" + (f"\n{svc.logs()[-4000:]}" if svc else ""))


def tag_deletes(gitlab, project_id: int | None = None) -> list[tuple[str, int]]:
    """(tag, status) of every tag DELETE GitLab served (api mode), in the order it answered them."""
    out = []
    for method, path, status in gitlab.requests:
        if method == "DELETE" and "/registry/repositories/" in path and "/tags/" in path:
            if project_id is None or path.startswith(f"/api/v4/projects/{project_id}/"):
                out.append((unquote(path.rsplit("/tags/", 1)[1]), status))
    return out


def assert_cleaned_once(report: dict, repos: list[str], gone: set[str]) -> None:
    """Every planned (repository, tag) is deleted or found already absent; nothing failed."""
    assert report["summary"]["failed"] == 0, report
    done = {(d["repository"], d["tag"]): d["decision"] for d in report["decisions"]
            if d["decision"] in ("deleted", "absent")}
    assert set(done) == {(r, t) for r in repos for t in gone}, report


def workers_registered(svc: Service, count: int) -> bool:
    with redis.Redis.from_url(svc.redis_url) as conn:
        return len(Worker.all(connection=conn)) >= count


# --- GitLab and the token service misbehaving ------------------------------------------

def transient_faults(mode: str, kind: str, timeout: int) -> list[tuple[str, str, int, dict]]:
    """(method, path regex, status, options) for inject_fault. In api mode the tag DELETEs
    misbehave; in registry mode deletes go to the registry, so GitLab's token service does."""
    method, path = ("DELETE", TAG_DELETE) if mode == "api" else ("GET", JWT)
    if kind == "5xx":
        return [("GET", r"/repository/branches", 502, {"times": 2}),
                ("GET", r"/merge_requests/\d+/commits", 503, {"times": 1}),
                (method, path, 500, {"times": 1}), (method, path, 503, {"times": 1})]
    if kind == "429":  # GitLab's rate limit: every endpoint, with Retry-After
        return [("*", r"^/(api/v4|jwt)/", 429, {"times": 3, "headers": {"Retry-After": "2"}})]
    if kind == "hang":  # no answer within HTTP_TIMEOUT (the late 504 goes to a closed socket)
        return [("GET", r"/registry/repositories$", 504, {"times": 1, "delay": timeout + 3}),
                (method, path, 504, {"times": 1, "delay": timeout + 3})]
    assert kind == "drop"  # the connection closes without an answer, before or after the work
    return [("GET", r"^/api/v4/projects/\d+$", 0, {"times": 1, "drop": True}),
            (method, path, 0, {"times": 1, "drop": "after"}), (method, path, 0, {"times": 1, "drop": True})]


@pytest.mark.parametrize("kind", ["5xx", "429", "hang", "drop"])
@pytest.mark.parametrize("mode", ["api", "registry"])
def test_transient_faults_during_a_cleanup_are_retried_and_it_finishes(gitlab, redis_url, start_service,
                                                                      mode, kind):
    timeout = 2
    svc = start_service(redis_url, mode, HTTP_TIMEOUT=str(timeout))
    project, repos, digests = make_shop(gitlab)
    faults = transient_faults(mode, kind, timeout)
    for method, path, status, options in faults:
        gitlab.inject_fault(method, path, status, **options)
    started = time.monotonic()
    response = svc.post(merge_payload(project), "Merge Request Hook", key=f"{mode}-{kind}")
    assert response.status_code == 202, response.text
    job = svc.wait_for_job(response.json()["job_id"], timeout=90)
    took = time.monotonic() - started

    assert job.get_status() == "finished", svc.logs()[-4000:]
    assert job.retries_left == 3  # the clients' own retries rode it out: no job retry was needed
    assert_cleaned_once(job.return_value(), repos, GONE)
    assert_registry(gitlab, repos, digests, GONE)
    # Every injected fault was served (hangs answer late, once the client has given up).
    for method, path, status, options in faults:
        wait_until(lambda: sum(1 for m, p, s in gitlab.requests if s == status and (method == "*" or m == method)
                               and re.search(path, p)) >= options["times"],
                   timeout + 10, f"fault {method} {path} {status} served", svc)
    # Only the planned tags were ever asked to be deleted.
    assert {tag for tag, _ in tag_deletes(gitlab)} <= GONE
    if kind == "429":
        assert took >= 3 * 2 - 0.5  # each of the three answers' Retry-After: 2 was waited for
    if kind == "hang":
        assert "ReadTimeout" in svc.logs()  # the client gave up after HTTP_TIMEOUT and asked again
    if kind == "drop" and mode == "api":
        # A delete was done but its answer lost; its retry found the tag gone (404): a success.
        dropped = {p for m, p, s in gitlab.requests if m == "DELETE" and s == 0}
        assert any(("DELETE", p, 404) in gitlab.requests for p in dropped), gitlab.requests


def test_token_service_outage_longer_than_the_client_retries_is_finished_by_the_job_retry(
        gitlab, redis_url, start_service):
    """Registry mode: GitLab's /jwt/auth answers 503 for longer than one job attempt. The attempt
    ends incomplete, RQ retries it, and once the token service recovers the retry finishes."""
    svc = start_service(redis_url, "registry", CLEANUP_RETRY_INTERVALS="2")
    project, repos, digests = make_shop(gitlab)
    gitlab.inject_fault("GET", JWT, 503, times=-1)
    response = svc.post(merge_payload(project), "Merge Request Hook", key="jwt-down")
    job_id = response.json()["job_id"]
    conn = redis.Redis.from_url(redis_url)
    # The first attempt gave up with its partial report kept and a retry scheduled.
    job = wait_until(lambda: (j := job_or_none(conn, job_id)) and j.meta.get("report") and j,
                     60, "first attempt incomplete", svc)
    assert job.get_status() in ("scheduled", "queued", "started")
    assert job.meta["report"]["summary"]["failed"] > 0
    assert_registry(gitlab, repos, digests, set())
    gitlab.clear_faults()  # the token service is back

    job = svc.wait_for_job(job_id, timeout=60)
    assert job.get_status() == "finished", svc.logs()[-4000:]
    assert job.retries_left < 3
    assert job.meta.get("report") is None  # the successful retry replaced the partial report
    assert_cleaned_once(job.return_value(), repos, GONE)
    assert_registry(gitlab, repos, digests, GONE)


@pytest.mark.parametrize("mode, path, status, body, says", [
    ("api", r"^/api/v4/projects/\d+$", 403, {"error": "insufficient_scope",
                                             "error_description": "The request requires higher privileges"},
     "GitLab refused GITLAB_TOKEN (403: insufficient_scope): give the token the api scope"),
    ("registry", JWT, 401, None, "check that the registry password/token is valid"),
    ("registry", JWT, 403, None, "check that the registry password/token is valid"),
])
def test_a_refused_token_fails_at_once_and_says_what_to_fix(gitlab, redis_url, start_service,
                                                            mode, path, status, body, says):
    svc = start_service(redis_url, mode, CLEANUP_RETRY_INTERVALS="60")
    project, repos, digests = make_shop(gitlab)
    gitlab.inject_fault("GET", path, status, times=-1, body=body)
    response = svc.post(merge_payload(project), "Merge Request Hook", key=f"refused-{status}")
    job = svc.wait_for_job(response.json()["job_id"], timeout=30)
    # Failed for good at once: a retry would sit "scheduled" for 60 s instead.
    assert job.get_status() == "failed", svc.logs()[-4000:]
    assert job.retries_left == 0
    message = job.latest_result().exc_string
    assert says in message and f"{status}" in message and "token" in message
    assert gitlab.token not in svc.logs()
    assert_registry(gitlab, repos, digests, set())


# --- Redis restarted under the running service -------------------------------------------

def test_redis_restart_loses_nothing_accepted_and_both_processes_recover(tmp_path, gitlab, start_service):
    """A Redis with appendonly yes / appendfsync always is killed (SIGKILL) while one cleanup
    runs, one waits in the queue and one is still scheduled (CLEANUP_DELAY), and started again
    on the same port. Deliveries during the outage get 503 (GitLab records the failure and can
    re-send); web and worker carry on without a restart; every delivery accepted before the
    outage is cleaned afterwards."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        svc = start_service(server.url, "api", CLEANUP_DELAY="2", DELETE_CONCURRENCY="1")
        shops = [make_shop(gitlab, next(_ids)) for _ in range(5)]
        # Slow deletes (each held 0.3 s, then done): the first cleanup is still running when Redis dies.
        gitlab.inject_fault("DELETE", TAG_DELETE, None, times=-1, delay=0.3)
        accepted = []
        for project, _, _ in shops[:2]:
            r = svc.post(merge_payload(project), "Merge Request Hook", key=f"before-{project.id}")
            assert r.status_code == 202, r.text
            accepted.append(r.json()["job_id"])
        conn = redis.Redis.from_url(server.url)
        wait_until(lambda: tag_deletes(gitlab, shops[0][0].id), 30, "first cleanup deleting", svc)
        wait_until(lambda: (j := job_or_none(conn, accepted[1])) and j.get_status() == "queued", 10, "second queued",
                   svc)
        r = svc.post(merge_payload(shops[2][0]), "Merge Request Hook", key="scheduled")
        assert r.status_code == 202, r.text
        accepted.append(r.json()["job_id"])
        wait_until(lambda: job_or_none(conn, accepted[2]), 10, "third a job", svc)
        assert [Job.fetch(j, connection=conn).get_status() for j in accepted] == ["started", "queued", "scheduled"]
        pids = (svc.web.pid, svc.workers[0].pid)

        server.crash()
        third = merge_payload(shops[3][0])
        started = time.monotonic()
        during = svc.post(third, "Merge Request Hook", key="during")
        assert during.status_code == 503 and "Redis" in during.json()["error"]
        assert time.monotonic() - started < 10  # GitLab's own limit for an answer
        assert requests.get(svc.url + "/readyz", timeout=10).status_code == 503
        assert requests.get(svc.url + "/healthz", timeout=10).status_code == 200
        time.sleep(2)  # a few seconds of outage
        server.start()  # same port, same append-only file

        for job_id in accepted:  # fsynced before the 202: still there
            assert Job.exists(job_id, connection=conn)
        wait_until(lambda: requests.get(svc.url + "/readyz", timeout=10).status_code == 200, 15, "web ready", svc)
        again = svc.post(third, "Merge Request Hook", key="during")  # GitLab's "Resend"
        assert again.status_code == 202, again.text
        after = svc.post(merge_payload(shops[4][0]), "Merge Request Hook", key="after")
        assert after.status_code == 202, after.text

        for job_id in accepted + [again.json()["job_id"], after.json()["job_id"]]:
            job = svc.wait_for_job(job_id, timeout=90)
            assert job.get_status() == "finished", svc.logs()[-6000:]
        for project, repos, digests in shops:
            assert_registry(gitlab, repos, digests, GONE)
        # The same processes did it all.
        assert (svc.web.pid, svc.workers[0].pid) == pids
        assert svc.web.poll() is None and svc.workers[0].poll() is None
    finally:
        server.stop()


# --- a worker killed in the middle of a cleanup ------------------------------------------

def test_worker_killed_mid_cleanup_its_job_is_retried_on_another_worker(gitlab, redis_url, start_service):
    """SIGKILL takes a worker, its work horse and all, in the middle of deleting tags. RQ's
    maintenance on the surviving worker finds the job abandoned (no heartbeat for
    WORKER_ABANDONED_AFTER), retries it, and the retry finishes the cleanup: exactly the
    planned tags are gone, nothing else was touched."""
    svc = start_service(redis_url, "api", workers=0, DELETE_CONCURRENCY="1")
    busy, busy_repos, busy_digests = make_shop(gitlab, next(_ids))
    victim, repos, digests = make_shop(gitlab, next(_ids))
    # Every delete is held a while, then done; the first worker's own cleanup is slower still,
    # so it is still busy when the second worker takes the victim's cleanup.
    gitlab.inject_fault("DELETE", rf"^/api/v4/projects/{busy.id}/" + TAG_DELETE[1:], None, times=-1, delay=0.8)
    gitlab.inject_fault("DELETE", TAG_DELETE, None, times=-1, delay=0.4)
    first = svc.start_worker()
    wait_until(lambda: workers_registered(svc, 1), 20, "first worker", svc)
    conn = redis.Redis.from_url(redis_url)
    # The first worker gets a long cleanup of its own, so the second one takes the victim's.
    b = svc.post(merge_payload(busy), "Merge Request Hook", key="busy")
    wait_until(lambda: (j := job_or_none(conn, b.json()["job_id"])) and j.get_status() == "started", 20, "busy", svc)
    second = svc.start_worker()
    wait_until(lambda: workers_registered(svc, 2), 20, "second worker", svc)
    v = svc.post(merge_payload(victim), "Merge Request Hook", key="victim")
    job_id = v.json()["job_id"]
    wait_until(lambda: len(tag_deletes(gitlab, victim.id)) >= 2, 30, "victim's cleanup deleting", svc)
    job = Job.fetch(job_id, connection=conn)
    assert job.worker_name and job.worker_name.endswith("-1")
    svc.kill_worker(second)
    killed_at = len(tag_deletes(gitlab, victim.id))

    job = svc.wait_for_job(job_id, timeout=60)
    assert job.get_status() == "finished", svc.logs()[-6000:]
    assert job.worker_name.endswith("-0")  # finished by the surviving worker
    assert job.retries_left == 2  # one retry spent: RQ retried it, it did not move it to failed
    assert first.poll() is None
    assert 0 < killed_at < len(repos) * len(GONE)  # it really died half-way
    report = job.return_value()
    assert_cleaned_once(report, repos, GONE)
    assert any(d["decision"] == "absent" for d in report["decisions"])  # what the dead one had deleted
    assert_registry(gitlab, repos, digests, GONE)
    assert svc.wait_for_job(b.json()["job_id"], timeout=60).get_status() == "finished"
    assert_registry(gitlab, busy_repos, busy_digests, GONE)
    assert {tag for tag, _ in tag_deletes(gitlab)} <= GONE  # no tag outside the plan was ever touched
    assert not svc.failed_jobs()


# --- several workers at once ---------------------------------------------------------------

SEARCH = "feature/search"
SEARCH_SHAS = ("7" * 40, "8" * 40)


def add_search_branch(gitlab, project, repos, digests) -> set[str]:
    """A second merged branch of the same project, with its own images; returns its tags."""
    project.add_merge_request(40, SEARCH, "main", state="merged", commits=list(SEARCH_SHAS),
                              merge_commit_sha="9" * 40)
    tags = {"feature-search", *SEARCH_SHAS, *(s[:8] for s in SEARCH_SHAS)}
    for repo in repos:
        d = gitlab.registry_client.push_image(repo, sorted(tags), content=f"{repo}-search")
        digests.update({(repo, t): d for t in tags})
    return tags


def test_one_cleanup_per_branch_at_a_time_and_different_branches_in_parallel(gitlab, redis_url, start_service):
    """Three workers get, at once, the merge of a branch, the push deleting that same branch,
    and the merge of another branch of the same project. Evidence from the order in which
    GitLab answered (not from timing): the second cleanup of the same branch made its first
    request under the lock only after the first one's last delete, and found every tag
    already gone; the other branch's deletes interleave with the first one's."""
    svc = start_service(redis_url, "api", workers=3, DELETE_CONCURRENCY="1", CLEANUP_LOCK_TTL="2")
    project, repos, digests = make_shop(gitlab, next(_ids))
    search_tags = add_search_branch(gitlab, project, repos, digests)
    # Each delete is held 0.4 s: a cleanup takes about 4 s, twice the lock's ttl (renewals keep it).
    gitlab.inject_fault("DELETE", TAG_DELETE, None, times=-1, delay=0.4)
    wait_until(lambda: workers_registered(svc, 3), 20, "three workers", svc)
    push = load_payload("push_branch_deleted.json")
    push["project_id"] = push["project"]["id"] = project.id
    push["project"]["path_with_namespace"] = project.path
    search = merge_payload(project, iid=40, source_branch=SEARCH, last_commit={"id": SEARCH_SHAS[-1]})
    responses = [svc.post(merge_payload(project), "Merge Request Hook", key="m-38"),
                 svc.post(push, "Push Hook", key="push"),
                 svc.post(search, "Merge Request Hook", key="m-40")]
    assert [r.status_code for r in responses] == [202, 202, 202], [r.text for r in responses]
    jobs = [svc.wait_for_job(r.json()["job_id"], timeout=90) for r in responses]
    assert [j.get_status() for j in jobs] == ["finished"] * 3, svc.logs()[-6000:]
    merge_job, push_job, search_job = jobs
    # Three different workers ran them, the two cleanups of the branch at overlapping times.
    assert len({j.worker_name for j in jobs}) == 3
    assert push_job.started_at < merge_job.ended_at and merge_job.started_at < push_job.ended_at

    log = [(m, unquote(p), s) for m, p, s in gitlab.requests if p.startswith(f"/api/v4/projects/{project.id}/")]
    branch_lookups = [i for i, (m, p, _) in enumerate(log)
                      if m == "GET" and p.endswith("/repository/branches/" + FEATURE)]
    assert len(branch_lookups) == 2  # "look again", each cleanup's first request under the lock
    second_start = branch_lookups[1]
    feature_deletes = [(i, p.rsplit("/tags/", 1)[1], s) for i, (m, p, s) in enumerate(log)
                       if m == "DELETE" and p.rsplit("/tags/", 1)[1] in GONE]
    deleted = [(i, tag) for i, tag, s in feature_deletes if s == 200]
    # Each tag deleted once, all of it before the second cleanup started; the second found them gone.
    assert sorted(tag for _, tag in deleted) == sorted(list(GONE) * len(repos))
    assert max(i for i, _ in deleted) < second_start
    assert [s for i, _, s in feature_deletes if i > second_start] == [404] * (len(GONE) * len(repos))
    first_job, second_job = (merge_job, push_job) if merge_job.ended_at < push_job.ended_at else (push_job, merge_job)
    assert first_job.return_value()["summary"]["deleted"] == len(GONE) * len(repos)
    assert second_job.return_value()["summary"]["absent"] == len(GONE) * len(repos)
    # The other branch's deletes ran during the first cleanup's: they interleave.
    search_deletes = [i for i, (m, p, s) in enumerate(log) if m == "DELETE" and p.rsplit("/tags/", 1)[1] in search_tags]
    first, last = min(i for i, _ in deleted), max(i for i, _ in deleted)
    assert any(first < i < last for i in search_deletes)
    assert any(min(search_deletes) < i < max(search_deletes) for i, _ in deleted)
    assert_registry(gitlab, repos, digests, GONE | search_tags)


# --- the lock itself, on the real Redis ------------------------------------------------------

def test_branch_lock_waits_for_the_holder_and_is_per_branch(redis_url):
    conn = redis.Redis.from_url(redis_url)
    holder = BranchLock(conn, 1, "feature/a", ttl=5).acquire()
    try:
        with pytest.raises(TimeoutError, match="still held by pid"):
            BranchLock(conn, 1, "feature/a", ttl=5).acquire(wait=0.5)
        BranchLock(conn, 1, "feature/b", ttl=5).acquire(wait=0).release()  # another branch: free
        BranchLock(conn, 2, "feature/a", ttl=5).acquire(wait=0).release()  # another project: free
    finally:
        holder.release()
    BranchLock(conn, 1, "feature/a", ttl=5).acquire(wait=0).release()


def test_branch_lock_is_renewed_while_held_and_released_only_by_its_holder(redis_url):
    conn = redis.Redis.from_url(redis_url)
    lock = BranchLock(conn, 1, "long", ttl=1).acquire()
    time.sleep(2.5)  # more than twice its ttl: renewals kept it
    with pytest.raises(TimeoutError):
        BranchLock(conn, 1, "long", ttl=1).acquire(wait=0)
    # Suppose it expired anyway (Redis away for a whole ttl) and another cleanup took it:
    lock._stop.set()
    conn.delete(lock.key)
    other = BranchLock(conn, 1, "long", ttl=5).acquire(wait=0)
    lock.release()  # compare-and-delete: the other holder's lock stays
    assert conn.get(other.key).decode().startswith(other.token.split()[0])
    other.release()
    assert conn.get(other.key) is None


def test_branch_lock_of_a_killed_holder_expires(redis_url):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, redis\nfrom workers.locks import BranchLock\n"
         f"BranchLock(redis.Redis.from_url({redis_url!r}), 1, 'x', ttl=2).acquire()\n"
         "print('held', flush=True)\ntime.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        conn = redis.Redis.from_url(redis_url)
        with pytest.raises(TimeoutError):
            BranchLock(conn, 1, "x", ttl=2).acquire(wait=0)
        holder.kill()
        holder.wait()
        lock = BranchLock(conn, 1, "x", ttl=2).acquire(wait=10)  # within the dead holder's ttl
        assert lock.waited <= 3
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()


# --- the registry itself misbehaving (registry mode, through a fault-injecting proxy) --------------
# REGISTRY_URL is a FaultProxy in front of the real docker-registry; tokens still come from the
# emulator's /jwt/auth. On distribution 2.8 a tag goes by the tombstone fallback: HEAD the tag, PUT a
# tombstone onto it, DELETE the tombstone's digest (after one refused DELETE by tag, a deletes-enabled
# check on a digest nothing has, and the dummy config's upload).

BY_TAG = r"/manifests/(?!sha256:)"  # HEAD, PUT or DELETE of a tag
TOMBSTONE = r"/manifests/sha256:(?!0{64}$)"  # DELETE of a tombstone by digest, not the deletes-enabled check
SLOW = 2.5  # a hang: more than HTTP_TIMEOUT=1 (the client gives up and asks again), then the answer


@pytest.fixture
def registry_proxy(gitlab_stack):
    proxy = FaultProxy(gitlab_stack.registry.url)
    yield proxy
    proxy.stop()


def registry_faults(kind: str, repo: str) -> list[tuple[str, str, int | None, dict]]:
    """(method, path regex, status, options) for FaultProxy.inject_fault."""
    if kind == "5xx":
        return [("HEAD", BY_TAG, 502, {"times": 2}), ("DELETE", BY_TAG, 500, {"times": 1}),
                ("PUT", BY_TAG, 503, {"times": 2}), ("DELETE", TOMBSTONE, 500, {"times": 1}),
                ("POST", r"/blobs/uploads/$", 503, {"times": 1})]
    if kind == "429":  # one repository's requests, made one after another: the three waits add up
        return [("*", rf"^/v2/{re.escape(repo)}/manifests/", 429, {"times": 3, "headers": {"Retry-After": "1"}})]
    if kind == "hang":
        return [("HEAD", BY_TAG, None, {"times": 1, "delay": SLOW}),  # slow, then answered to a closed socket
                # Never done: a late 504. (A tombstone PUT done late, after its retry and the tombstone's
                # DELETE, would put the tag back on a tombstone: no client can undo a write it never saw.)
                ("PUT", BY_TAG, 504, {"times": 1, "delay": SLOW}),
                ("DELETE", TOMBSTONE, None, {"times": 1, "delay": SLOW})]  # done late, after the retry did it
    assert kind == "drop"  # closed without an answer: before the registry saw it, or after it did the work
    return [("HEAD", BY_TAG, None, {"times": 1, "drop": True}),
            ("PUT", BY_TAG, None, {"times": 1, "drop": "after"}),
            ("DELETE", TOMBSTONE, None, {"times": 1, "drop": "after"})]


def served(proxy: FaultProxy, method: str, path: str) -> list:
    """The proxy's log entries where a fault injected as (method, path) was served."""
    return [e for e in proxy.entries if e.fault and (method == "*" or e.method == method) and re.search(path, e.path)]


def stray_registry_writes(proxy: FaultProxy, repos: list[str], digests: dict) -> list:
    """Registry requests outside the project's repositories, and writes to anything but a planned
    tag or a digest no pushed image has (the tombstones, the deletes-enabled check)."""
    repo = "|".join(re.escape(r) for r in sorted(repos, key=len, reverse=True))
    images = set(digests.values())
    stray = []
    for e in proxy.entries:
        m = re.fullmatch(rf"/v2/(?:({repo})/(manifests/(.+)|blobs/.*|tags/list))?", e.path)
        if not m:
            stray.append(e)
        elif m[3] and e.method in ("PUT", "DELETE"):
            ref = m[3]
            if (ref in images) if ref.startswith("sha256:") else (ref not in GONE):
                stray.append(e)
    return stray


@pytest.mark.parametrize("kind", ["5xx", "429", "hang", "drop"])
def test_registry_faults_during_a_cleanup_are_retried_and_it_finishes(gitlab, redis_url, start_service,
                                                                      registry_proxy, kind):
    """The registry answers 500/502/503, 429 with Retry-After, hangs past HTTP_TIMEOUT or drops
    the connection during a cleanup: the client's own retries ride it out, the cleanup finishes,
    exactly the planned tags are gone and `latest` (on the same image) and the rest stay."""
    svc = start_service(redis_url, "registry", REGISTRY_URL=registry_proxy.url,
                        HTTP_TIMEOUT="1" if kind == "hang" else "10")
    project, repos, digests = make_shop(gitlab)
    faults = registry_faults(kind, repos[0])
    for method, path, status, options in faults:
        registry_proxy.inject_fault(method, path, status, **options)
    response = svc.post(merge_payload(project), "Merge Request Hook", key=f"registry-{kind}")
    assert response.status_code == 202, response.text
    job = svc.wait_for_job(response.json()["job_id"], timeout=60)

    assert job.get_status() == "finished", svc.logs()[-4000:]
    assert job.retries_left == 3  # no job retry was needed
    assert_cleaned_once(job.return_value(), repos, GONE)
    assert_registry(gitlab, repos, digests, GONE)
    assert gitlab.count("DELETE") == 0  # every tag went through the registry, i.e. the proxy
    # Every injected fault was served (a hang is logged when its late answer is written).
    for method, path, status, options in faults:
        wait_until(lambda m=method, p=path, n=options["times"]: len(served(registry_proxy, m, p)) >= n,
                   SLOW + 5, f"fault {method} {path} served", svc)
    assert stray_registry_writes(registry_proxy, repos, digests) == []
    log = registry_proxy.entries
    if kind == "5xx":
        assert {e.status for e in log if e.fault} == {500, 502, 503}
    if kind == "429":
        faulted = [e for e in log if e.fault]
        assert [e.status for e in faulted] == [429] * 3
        for e in faulted:  # the client asked again only once Retry-After: 1 had passed
            again = next(n for n in log if n.arrived > e.arrived and (n.method, n.path) == (e.method, e.path))
            assert again.arrived - e.arrived >= 0.95, (e, again)
    if kind == "hang":
        assert "ReadTimeout" in svc.logs()  # the client gave up after HTTP_TIMEOUT and asked again
        late = served(registry_proxy, "DELETE", TOMBSTONE)[0]
        # Its retry deleted the tombstone; the hung request reached the registry afterwards: 404.
        assert late.status == 404 and ("DELETE", late.path, 202) in registry_proxy.requests
    if kind == "drop":
        assert "ConnectionError" in svc.logs()
        assert {e.status for e in log if e.fault} == {0}
        dropped = served(registry_proxy, "DELETE", TOMBSTONE)[0]
        # The tombstone was deleted but the answer lost; the retry found it gone (404): a success.
        retry = next(e for e in log if e.arrived > dropped.arrived and e.path == dropped.path)
        assert (retry.method, retry.status) == ("DELETE", 404)


def test_registry_failing_past_the_client_retries_leaves_a_failed_job_that_a_replay_finishes(
        gitlab, redis_url, start_service, registry_proxy):
    """The registry answers 503 to everything for longer than the client's retries and the job's
    CLEANUP_RETRIES: the job fails with the reason, nothing is deleted; once the registry is back,
    replaying the failed job (the dashboard's "requeue") finishes the cleanup."""
    svc = start_service(redis_url, "registry", REGISTRY_URL=registry_proxy.url, CLEANUP_RETRIES="1")
    project, repos, digests = make_shop(gitlab)
    registry_proxy.inject_fault("*", r"^/v2/", 503, times=-1)
    response = svc.post(merge_payload(project), "Merge Request Hook", key="registry-down")
    job_id = response.json()["job_id"]
    job = svc.wait_for_job(job_id, timeout=90)

    assert job.get_status() == "failed", svc.logs()[-4000:]
    assert job.retries_left == 0  # its CLEANUP_RETRIES=1 retry was spent too
    message = job.latest_result().exc_string
    assert "tag deletion(s) failed" in message and "still failing after 4 attempts (HTTP 503)" in message
    report = job.meta["report"]
    assert report["summary"]["failed"] == len(repos) * len(GONE)
    assert all("HTTP 503" in d["reason"] for d in report["decisions"] if d["decision"] == "failed")
    # Nothing but 503 was answered. Each attempt spent the client's 4 tries at least once, and at
    # most once per repository: the other tags failed with it unasked, not each after 4 tries more.
    assert {s for _, _, s in registry_proxy.requests} == {503}
    assert 2 * 4 <= len(registry_proxy.requests) <= 2 * len(repos) * 4
    assert_registry(gitlab, repos, digests, set())

    registry_proxy.clear_faults()  # the registry is back
    Job.fetch(job_id, connection=redis.Redis.from_url(redis_url)).requeue()
    job = svc.wait_for_job(job_id, timeout=60)
    assert job.get_status() == "finished", svc.logs()[-4000:]
    assert "report" not in job.meta  # the failed run's partial report is gone with it
    assert_cleaned_once(job.return_value(), repos, GONE)
    assert_registry(gitlab, repos, digests, GONE)
    assert stray_registry_writes(registry_proxy, repos, digests) == []
