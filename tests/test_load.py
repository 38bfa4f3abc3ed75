"""A burst of 2,000 GitLab deliveries against the real service, end to end.

gunicorn with two web workers and two RQ workers, on loopback, receive a shuffled mix sent
by 16 client threads: merges, branch deletions (some of them of just-merged branches),
pipelines, events that need nothing, re-sent and doubled deliveries, bad tokens and broken
bodies. The test checks GitLab's side of the contract (every answer is the right 2xx/4xx and
arrives within GitLab's 10-second webhook timeout: a correctness bound, not a benchmark),
that each distinct cleanup was enqueued exactly once, and that afterwards the workers did
all of it: the registry holds exactly what the rules say. Bounded: a fixed count, a few
minutes at most on two cores.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote

import pytest
import redis
import requests
from rq import Queue
from rq.registry import FailedJobRegistry

from tests.support.service import SECRET, Service, gitlab_headers, load_payload
from tests.support.shop import merge_payload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GITLAB_TIMEOUT = 10.0  # seconds GitLab waits for a webhook's answer
PROJECTS = 10
MERGED, MERGED_AND_DELETED, DELETED, LIVE = 10, 5, 10, 4  # branches per project
PIPELINES = 10  # per project, each delivered four times (pending, running, success twice)
IGNORED = 750
BAD_TOKENS = 50
MALFORMED = 50
THREADS = 16
rng = random.Random(20261123)


def sha() -> str:
    return "%040x" % rng.getrandbits(160)


def slug(branch: str) -> str:
    return branch.lower().replace("/", "-")


@dataclass
class Shop:
    project: object
    repo: str
    digests: dict = field(default_factory=dict)  # tag -> digest pushed
    gone: set = field(default_factory=set)  # tags the cleanups must delete


@dataclass
class Delivery:
    event: str
    body: bytes
    key: str
    expect: str  # "cleanup", "pipeline", "ignored", "unauthorized", "bad_request"
    group: str | None = None  # deliveries of one event share it
    token: str = SECRET


def seed(gitlab) -> tuple[list[Shop], list[Delivery]]:
    """Projects with merged, deleted and live branches and their images; the deliveries to send."""
    shops: list[Shop] = []
    deliveries: list[Delivery] = []
    images: list[tuple[Shop, list[str], str]] = []
    for p in range(PROJECTS):
        project = gitlab.add_project(9100 + p, f"load/p{p}", default_branch="main")
        main_sha = project.branches["main"]
        project.add_registry_repository("")
        shop = Shop(project, project.path)
        shops.append(shop)
        images.append((shop, ["latest", "main", main_sha, main_sha[:8]], f"{p}-main"))
        iid = 0
        for b in range(MERGED):
            branch, commits = f"feature/m{b}", [sha(), sha()]
            iid += 1
            project.add_merge_request(iid, branch, "main", state="merged", commits=commits, merge_commit_sha=sha())
            tags = [slug(branch), *commits, *(c[:8] for c in commits)]
            images.append((shop, tags, f"{p}-m{b}"))
            shop.gone.update(tags)
            body = merge_payload(project, iid=iid, source_branch=branch, last_commit={"id": commits[-1]})
            deliveries += copies(f"merge-{p}-{b}", "Merge Request Hook", body, "cleanup")
            if b < MERGED_AND_DELETED:  # GitLab also reports the source branch's deletion
                deliveries += copies(f"merged-push-{p}-{b}", "Push Hook", push(project, branch, commits[-1]),
                                     "cleanup")
        for b in range(DELETED):
            branch, head = f"topic/d{b}", sha()
            tags = [slug(branch), head, head[:8]]
            images.append((shop, tags, f"{p}-d{b}"))
            shop.gone.update(tags)
            deliveries += copies(f"push-{p}-{b}", "Push Hook", push(project, branch, head), "cleanup")
        for b in range(LIVE):
            branch = f"feature/live{b}"
            head = project.add_branch(branch, sha())
            images.append((shop, [slug(branch), head, head[:8]], f"{p}-l{b}"))
        for n in range(PIPELINES):  # built commits of live refs; they own no image here
            body = load_payload("pipeline_main.json")
            body["project"]["id"] = project.id
            body["object_attributes"].update(ref=rng.choice(["main", "feature/live0"]), sha=sha(), id=5000 + n)
            # Its status changes are one job; its success (sent twice) another, which may schedule retention.
            for status, group in (("pending", "run"), ("running", "run"), ("success", "ok"), ("success", "ok")):
                body["object_attributes"]["status"] = status
                deliveries.append(Delivery("Pipeline Hook", json.dumps(body).encode(),
                                           f"pipe-{p}-{n}-{status}-{len(deliveries)}", "pipeline",
                                           group=f"pipe-{p}-{n}-{group}"))

    with ThreadPoolExecutor(8) as pool:  # one repository per project: pushes to different ones overlap
        def push_one(item):
            shop, tags, content = item
            digest = gitlab.registry_client.push_image(shop.repo, tags, content=content)
            return shop, tags, digest
        for shop, tags, digest in pool.map(push_one, images):
            shop.digests.update({t: digest for t in tags})

    mr = load_payload("merge_request_merge.json")
    ordinary = load_payload("push_branch_deleted.json")
    for i in range(IGNORED):
        kind = i % 5
        if kind == 0:
            body = copy.deepcopy(mr)
            body["object_attributes"]["action"] = rng.choice(["open", "update", "approved", "close", "reopen"])
            event = "Merge Request Hook"
        elif kind == 1:
            body = copy.deepcopy(ordinary)
            body["after"] = sha()  # an ordinary push, not a deletion
            event = "Push Hook"
        else:
            event, kind_name = [("Issue Hook", "issue"), ("Note Hook", "note"), ("Job Hook", "build")][kind - 2]
            body = {"object_kind": kind_name, "project": {"id": 9100}}
        deliveries.append(Delivery(event, json.dumps(body).encode(), f"ign-{i}", "ignored"))
    for i in range(BAD_TOKENS):
        d = rng.choice([d for d in deliveries if d.expect == "cleanup"])
        deliveries.append(Delivery(d.event, d.body, f"bad-{i}", "unauthorized", token=f"guess-{i}"))
    for i in range(MALFORMED):
        body = b"[1, 2]" if i % 2 else b'{"object_kind": "merge_request", "object_attributes": {"action": "merge"}'
        deliveries.append(Delivery("Merge Request Hook", body, f"bad-body-{i}", "bad_request"))
    rng.shuffle(deliveries)
    return shops, deliveries


def copies(group: str, event: str, body: dict, expect: str) -> list[Delivery]:
    """An event as GitLab may deliver it: the original, its manual "Resend" (same key), and
    the group hook's copy (another key)."""
    data = json.dumps(body).encode()
    return [Delivery(event, data, f"{group}-a", expect, group), Delivery(event, data, f"{group}-a", expect, group),
            Delivery(event, data, f"{group}-b", expect, group)]


def push(project, branch: str, before: str) -> dict:
    body = load_payload("push_branch_deleted.json")
    body["project_id"] = body["project"]["id"] = project.id
    body["project"]["path_with_namespace"] = project.path
    body.update(ref=f"refs/heads/{branch}", before=before)
    return body


def send_all(url: str, deliveries: list[Delivery]) -> list[tuple[Delivery, int, dict, float]]:
    """POST every delivery from THREADS threads; (delivery, status, body, seconds) for each."""
    local = threading.local()

    def post(d: Delivery):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.monotonic()
        response = session.post(url, data=d.body, headers=gitlab_headers(d.event, d.key, d.token),
                                timeout=GITLAB_TIMEOUT + 5)
        return d, response.status_code, response.json(), time.monotonic() - started

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(post, deliveries))


def test_a_burst_of_2000_deliveries(tmp_path, redis_url, gitlab_stack, gitlab):
    gitlab.registry_client  # noqa: B018 (attach the shared client before seeding from threads)
    shops, deliveries = seed(gitlab)
    assert len(deliveries) == 2000
    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "load", redis_url, emu.url, emu.token, SWEEP_CRON="off")
    try:
        svc.start_web()  # gunicorn with two workers
        svc.start_worker()
        svc.start_worker()
        started = time.monotonic()
        results = send_all(svc.url + "/hooks/gitlab", deliveries)
        sent_in = time.monotonic() - started

        # GitLab's side: each answer right and in time.
        latencies = [seconds for *_, seconds in results]
        assert max(latencies) < GITLAB_TIMEOUT, f"slowest answer {max(latencies):.1f}s"
        expected = {"cleanup": {202, 200}, "pipeline": {202, 200}, "ignored": {200}, "unauthorized": {401},
                    "bad_request": {400}}
        wrong = [(d.expect, d.key, status, body) for d, status, body, _ in results if status not in expected[d.expect]]
        assert not wrong, wrong[:5]
        for d, status, body, _ in results:
            if d.expect == "ignored":
                assert body["status"] == "ignored"
        # Exactly one enqueue per distinct event; its other deliveries were duplicates of the same job.
        groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
        for d, status, body, _ in results:
            if d.group:
                groups[d.group].append((status, body))
        for group, answers in groups.items():
            assert sorted(s for s, _ in answers) == [200] * (len(answers) - 1) + [202], (group, answers)
            assert {b["status"] for s, b in answers} == {"enqueued", "duplicate"}
            assert len({b["job_id"] for _, b in answers}) == 1, (group, answers)
        job_of = {group: answers[0][1]["job_id"] for group, answers in groups.items()}
        cleanup_groups = {d.group for d in deliveries if d.expect == "cleanup"}
        pipeline_groups = {d.group for d in deliveries if d.expect == "pipeline"}
        cleanup_ids = {job_of[g] for g in cleanup_groups}
        assert len(cleanup_ids) == len(cleanup_groups) == PROJECTS * (MERGED + MERGED_AND_DELETED + DELETED)
        assert len({job_of[g] for g in pipeline_groups}) == len(pipeline_groups) == PROJECTS * PIPELINES * 2
        conn = redis.Redis.from_url(redis_url)
        stored = {k.decode()[len("rq:job:"):] for k in conn.scan_iter("rq:job:cleanup-*")
                  if b":" not in k[len("rq:job:"):]}
        assert stored == cleanup_ids  # what Redis holds is exactly what was answered "enqueued"

        # The workers did all of it, each cleanup once, and the registry is as the rules say.
        for job_id in sorted(cleanup_ids | {job_of[g] for g in pipeline_groups}):
            job = svc.wait_for_job(job_id, timeout=240)
            assert job.get_status() == "finished", (job_id, svc.logs()[-3000:])
            if job_id in cleanup_ids:
                assert len(job.results()) == 1 and job.retries_left == 5  # ran once, no retry needed
        done_in = time.monotonic() - started
        assert not FailedJobRegistry(queue=Queue("tagsweeper", connection=conn)).get_job_ids()
        reg = gitlab.registry_client
        for shop in shops:
            present = set(reg.tags(shop.repo))
            assert not present & shop.gone, (shop.repo, sorted(present & shop.gone)[:5])
            for tag, digest in shop.digests.items():
                if tag not in shop.gone:
                    assert reg.resolve(shop.repo, tag) == digest, f"{shop.repo}:{tag} must survive"
        # Nothing outside the plan was ever asked to be deleted.
        asked = Counter()
        for method, path, status in gitlab.requests:
            if method == "DELETE" and "/tags/" in path:
                pid = int(path.split("/")[4])
                tag = unquote(path.rsplit("/tags/", 1)[1])
                assert tag in next(s for s in shops if s.project.id == pid).gone, path
                asked[status] += 1
        assert asked[200] == sum(len(s.gone) for s in shops)  # each planned tag deleted exactly once
    finally:
        svc.stop()
    print(f"\n2000 deliveries answered in {sent_in:.1f}s (median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies):.2f}s); {len(cleanup_ids)} cleanups and {len(pipeline_groups)} pipeline records "
          f"done {done_in:.1f}s after the first delivery; tag DELETEs by status: {dict(asked)}")
