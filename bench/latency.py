"""Benchmark 5, latency: from a merge delivery to the last of its tags gone, CLEANUP_DELAY=0.

    .venv/bin/python -m bench.latency                  # 100 merges per mode, one every 1 s; api and registry
    .venv/bin/python -m bench.latency --merges 100 --interval 0.5 --modes api

The whole service, as the Procfile runs it: gunicorn serving `hooks:create_app()` (2 workers) and
one `tagsweeper worker` (RQ), started by tests/support/service.py against a redis-server, the
GitLab emulator and the real docker-registry 2.8 with token auth. The project (acme/lat, id 4900)
has two registry repositories and 100 merged branches `feature/lat-N`, each owning 5 tags per
repository (its branch tag and `:$SHA`/`:$SHORT_SHA` of its two commits) and sharing its image
with an unowned `keep-N` tag. Merge deliveries (the example payload with the branch's values)
are posted open loop, one every --interval seconds.

Latency of a merge = the time of the last "deleted" decision of its job in the audit trail (the
worker's clock, right after the registry answered that tag's deletion) minus the time the
delivery was posted (same machine, same clock). Afterwards the registry is read: every owned
tag must be gone and every `keep-N` still there.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import time

import redis

from bench.common import (WORK, LoadSampler, RedisServer, Stack, cached_storage, machine, parallel_by_repo,
                          percentile, save)

PROJECT_ID, PROJECT_PATH = 4900, "acme/lat"
REPOS = (PROJECT_PATH, PROJECT_PATH + "/worker")
MAIN = hashlib.sha1(b"lat-main").hexdigest()


def commits(i: int) -> list[str]:
    return [hashlib.sha1(f"lat-{i}-{k}".encode()).hexdigest() for k in range(2)]


def owned(i: int) -> list[str]:
    c = commits(i)
    return [f"feature-lat-{i}", c[0], c[0][:8], c[1], c[1][:8]]


def seed(n: int):
    def build(stack: Stack) -> None:
        client = stack.emulator.registry_client

        def one(repo: str):
            def go():
                client.push_image(repo, ["main", MAIN, "latest"], content=f"{repo}-main")
                for i in range(n):
                    c = commits(i)
                    client.push_image(repo, [c[0], c[0][:8]], content=f"{repo}-{i}-0")
                    client.push_image(repo, [c[1], c[1][:8], f"feature-lat-{i}", f"keep-{i}"], content=f"{repo}-{i}-1")
            return go

        parallel_by_repo({repo: one(repo) for repo in REPOS})

    return cached_storage(f"latency-{n}", build)


def setup(emu, n: int) -> None:
    emu.reset()
    project = emu.add_project(PROJECT_ID, PROJECT_PATH, default_branch="main")
    project.branches["main"] = MAIN
    for i in range(n):
        project.add_merge_request(i + 1, f"feature/lat-{i}", "main", state="merged", commits=commits(i),
                                  merge_commit_sha=hashlib.sha1(f"lat-merge-{i}".encode()).hexdigest())
    project.add_registry_repository("")
    project.add_registry_repository("worker")


def delivery(i: int) -> dict:
    from tests.support.service import load_payload

    body = load_payload("merge_request_merge.json")
    body["project"]["id"] = PROJECT_ID
    body["project"]["path_with_namespace"] = PROJECT_PATH
    a = body["object_attributes"]
    a.update(iid=i + 1, source_branch=f"feature/lat-{i}", source_project_id=PROJECT_ID, target_project_id=PROJECT_ID,
             merge_commit_sha=None)
    a["last_commit"]["id"] = commits(i)[1]
    a["source"]["path_with_namespace"] = a["target"]["path_with_namespace"] = PROJECT_PATH
    return body


def run_mode(mode: str, golden, emu, n: int, interval: float) -> dict:
    from tests.support.service import Service
    from workers.common import audit

    wd = WORK / "latency" / mode
    if wd.exists():
        shutil.rmtree(wd)
    server = RedisServer(wd / "redis").start()
    stack = Stack(wd / "registry", storage_from=golden, emulator=emu)
    setup(emu, n)
    env = {"REGISTRY_MODE": mode, "CLEANUP_DELAY": "0"}
    if mode == "registry":
        env["REGISTRY_URL"] = stack.registry.url
    svc = Service(wd / "service", server.url, emu.url, emu.token, **env).start()
    conn = redis.Redis.from_url(server.url)
    posted: dict[str, float] = {}
    try:
        # Wait until the worker is up (it registers itself in Redis).
        deadline = time.monotonic() + 30
        while not conn.smembers("rq:workers") and time.monotonic() < deadline:
            time.sleep(0.1)
        next_at = time.monotonic() + 0.5
        for i in range(n):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            t0 = time.time()
            r = svc.post(delivery(i), "Merge Request Hook", key=f"lat-{mode}-{i}")
            assert r.status_code == 202, r.text
            posted[r.json()["job_id"]] = t0
        for job_id in posted:
            svc.wait_for_job(job_id, timeout=300)
        failed = svc.failed_jobs()
        entries = audit.read(conn, limit=100000)
    finally:
        svc.stop()
    last: dict[str, float] = {}
    deleted = 0
    for e in entries:
        if e.get("decision") == "deleted" and e.get("job_id") in posted:
            deleted += 1
            last[e["job_id"]] = max(last.get(e["job_id"], 0.0), float(e["time"]))
    latencies = [(last[j] - t0) * 1000 for j, t0 in posted.items() if j in last]
    client = emu.registry_client
    tags_now = {repo: set(client.tags(repo)) for repo in REPOS}
    left = [f"{repo}:{t}" for repo in REPOS for i in range(n) for t in owned(i) if t in tags_now[repo]]
    owned_left = len(left)
    keep_lost = sum(1 for repo in REPOS for i in range(n) if f"keep-{i}" not in tags_now[repo])
    stack.stop()
    server.stop()
    return {"merges": n, "interval_s": interval, "jobs_with_deletions": len(latencies), "deleted": deleted,
            "failed_jobs": len(failed), "owned_left": owned_left, "keep_lost": keep_lost, "left_examples": left[:5],
            "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies) if latencies else float("nan"),
            "latencies_ms": sorted(round(x, 1) for x in latencies)}


def main(argv: list[str] | None = None) -> int:
    from tests.support.gitlab_emulator import GitLabEmulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between deliveries")
    parser.add_argument("--modes", default="api,registry")
    args = parser.parse_args(argv)
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)
    golden = seed(args.merges)
    emu = GitLabEmulator().start()
    results = {}
    try:
        with LoadSampler() as sampler:
            for mode in [m for m in args.modes.split(",") if m]:
                res = run_mode(mode, golden, emu, args.merges, args.interval)
                results[mode] = res
                print(f"{mode:8s} {res['jobs_with_deletions']}/{res['merges']} merges: p50 {res['p50_ms']:.0f} ms  "
                      f"p90 {res['p90_ms']:.0f} ms  p99 {res['p99_ms']:.0f} ms  max {res['max_ms']:.0f} ms  "
                      f"deleted {res['deleted']}  owned left {res['owned_left']}  keep-N lost {res['keep_lost']}  "
                      f"failed jobs {res['failed_jobs']}", flush=True)
    finally:
        emu.stop()
    save("latency", {"machine": machine(), "load": sampler.summary(), "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
