"""Benchmark 8, the activity page: time to first byte with the audit trail at its bound (100,000 entries).

    .venv/bin/python -m bench.activity                   # 100,000 entries, 20 rounds
    .venv/bin/python -m bench.activity --entries 20000 --rounds 10

A redis-server is filled through the real writer (`workers.common.audit.Sink`, what a cleanup's
report calls for each decision: the entry, tags_total and the hourly counts in one round trip),
one decision at a time: 100,000 entries over the last 30 days, 40 projects, runs of 1 to 40
decisions (merges, branch deletions, sweeps, retention passes, re-checks; deleted 70 %, kept 22 %
of them for an environment a fifth, absent 5 %, failed 3 %, and skipped runs), plus 20 scheduled
re-checks in RQ. Then the real web app under gunicorn (2 workers, as tests/support/service.py
starts it) with the dashboard on.

Each round requests every endpoint once, in turn, on a new connection (as a browser's first
visit), and times the first byte: from sending the request to having its status line and headers
(http.client's getresponse); the page is rendered before its headers go out, so that is the
server's whole work. Searches: a tag among the newest entries, a name nothing has (the newest
20,000 entries read, the default), and the same over the whole trail (`&all=1`). The baselines, in the same rounds: `GET /healthz` (the app doing nothing) and
`GET /audit?limit=100` (the newest 100 entries as JSON). The first 3 rounds are warm-up. Also
measured in this process, for the record: reading the whole trail with `audit.read` (what a page
computing its numbers from the trail itself would do on every view), and the memory the hourly
counts take next to the stream's.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import logging
import random
import shutil
import sys
import time

import redis

from bench.common import WORK, LoadSampler, RedisServer, machine, median, percentile, save

USER, PASSWORD = "bench", "bench-dashboard-password"
PROJECTS = 40
DAY = 86400


def fill(conn: redis.Redis, entries: int, seed: int = 7) -> dict:
    """`entries` audit entries through the real writer, oldest first, spread over the last 30 days."""
    from rq import Queue

    from workers.common import audit, queue

    rng = random.Random(seed)
    now = time.time()
    start = now - 30 * DAY
    written = runs = 0
    sample_tag = None
    while written < entries:
        pid = 4700 + rng.randrange(PROJECTS)
        path = f"acme/service-{pid - 4700:02d}"
        trigger = rng.choices(["merge", "branch_deleted", "sweep", "superseded", "recheck"], [50, 20, 10, 15, 5])[0]
        branch = None if trigger == "sweep" else f"feature/topic-{rng.randrange(100000)}"
        job = {"merge": "cleanup-{}-merge-{:x}", "branch_deleted": "cleanup-{}-push-{:x}", "sweep": "sweep-{}-{:x}",
               "superseded": "retire-{}-{:x}", "recheck": "recheck-{}-{:x}"}[trigger].format(pid, rng.getrandbits(40))
        sink = audit.Sink(conn, job_id=job)
        t = start + (now - start) * written / entries
        size = min(rng.randint(1, 40), entries - written)
        context = {"project_id": pid, "project": path, "branch": branch,
                   "trigger": "merge" if trigger == "recheck" else trigger,
                   "delivery": None if trigger in ("sweep", "superseded") else f"delivery-{rng.getrandbits(48):x}",
                   "dry_run": False}
        if rng.random() < 0.03:
            sink.skipped(_Skipped(context, f"branch {branch} exists again"))
            written += 1
            continue
        for i in range(size):
            decision, code = rng.choices([("deleted", "owned"), ("kept", "deployed"), ("kept", "protected"),
                                          ("kept", "live_branch_tag"), ("absent", "absent"), ("failed", "transient")],
                                         [70, 5, 9, 8, 5, 3])[0]
            tag = f"{(branch or 'old').replace('/', '-')}-{rng.getrandbits(32):08x}"
            sample_tag = tag  # the newest tag written: a search that stops early
            reason = {"owned": "the branch's own tag; the branch is gone",
                      "deployed": "in use by environment review/topic (deployment #12)",
                      "protected": "matches PROTECTED_TAGS", "live_branch_tag": "the tag of live branch main",
                      "absent": "already gone", "transient": "GitLab answered 503 (HTTP 503)"}[code]
            sink({"time": t + i, **context, "repository": f"{path}/{rng.choice(['app', 'worker', 'web'])}",
                  "tag": tag, "digest": f"sha256:{rng.getrandbits(256):064x}", "decision": decision,
                  "reason": reason, "code": code})
            written += 1
        runs += 1
    q = Queue("tagsweeper", connection=conn)
    for i in range(20):
        queue.schedule_recheck(q, {"project_id": 4700 + i, "branch": f"feature/held-{i}", "trigger": "merge"},
                               project_id=4700 + i, interval=3600, retries=0, intervals=())
    return {"entries": written, "runs": runs, "sample_tag": sample_tag}


class _Skipped:
    def __init__(self, context: dict, reason: str):
        self._context, self.skipped = context, reason

    def context(self) -> dict:
        return dict(self._context)


def ttfb(port: int, path: str) -> tuple[float, int, int]:
    """(seconds to the first byte, status, body bytes) of one GET on a new connection."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": auth})
        resp = conn.getresponse()
        first = time.perf_counter() - started
        body = resp.read()
        return first, resp.status, len(body)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    import re

    from tests.support.service import Service
    from workers.common import audit, keys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)
    work = WORK / "activity"
    shutil.rmtree(work, ignore_errors=True)
    server = RedisServer(work / "redis").start()
    conn = redis.Redis.from_url(server.url)
    try:
        with LoadSampler() as sampler:
            t0 = time.perf_counter()
            filled = fill(conn, args.entries)
            fill_s = time.perf_counter() - t0
            print(f"filled {filled['entries']:,} entries ({filled['runs']:,} runs) in {fill_s:.1f} s; "
                  f"stream length {conn.xlen(audit.STREAM):,}", flush=True)
            svc = Service(work / "service", server.url, "http://127.0.0.1:9", "unused-token",
                          DASHBOARD_USER=USER, DASHBOARD_PASSWORD=PASSWORD).start_web()
            try:
                page = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
                page.request("GET", "/", headers={"Authorization": "Basic " + base64.b64encode(
                    f"{USER}:{PASSWORD}".encode()).decode()})
                text = page.getresponse().read().decode()
                page.close()
                run_path = re.search(r'href="(/activity/run/[^"]+)"', text).group(1)
                endpoints = {
                    "healthz": "/healthz",
                    "audit100": "/audit?limit=100",
                    "page": "/",
                    "run": run_path,
                    "search_hit": f"/activity?q={filled['sample_tag']}",
                    "search_miss": "/activity?q=no-such-branch-anywhere",
                    "search_all_miss": "/activity?q=no-such-branch-anywhere&all=1",
                }
                times: dict[str, list[float]] = {name: [] for name in endpoints}
                sizes: dict[str, int] = {}
                for r in range(args.rounds + 3):
                    for name, path in endpoints.items():
                        first, status, size = ttfb(svc.port, path)
                        assert status == 200, (name, status)
                        sizes[name] = size
                        if r >= 3:
                            times[name].append(first * 1000)
            finally:
                svc.stop()
            naive = []
            for _ in range(3):
                t0 = time.perf_counter()
                got = audit.read(conn, limit=args.entries)
                naive.append(time.perf_counter() - t0)
            memory = {"stream_bytes": conn.memory_usage(audit.STREAM),
                      "counts_bytes": sum(conn.memory_usage(k) or 0 for k in conn.scan_iter(f"{keys.ROOT}:activity:*")),
                      "count_keys": sum(1 for _ in conn.scan_iter(f"{keys.ROOT}:activity:*")),
                      "count_fields": sum(conn.hlen(k) for k in conn.scan_iter(keys.activity_day("*")))}
    finally:
        server.stop()
    base = median(times["audit100"])
    summary = {name: {"median_ms": median(v), "p90_ms": percentile(v, 90), "max_ms": max(v), "bytes": sizes[name],
                      "over_audit100": median(v) / base} for name, v in times.items()}
    for name, s in summary.items():
        print(f"{name:12s} TTFB median {s['median_ms']:7.1f} ms  p90 {s['p90_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms"
              f"  {s['over_audit100']:5.2f}x /audit?limit=100  {s['bytes']:,} bytes", flush=True)
    print(f"reading the whole trail (audit.read, {len(got):,} entries): {median(naive):.2f} s; "
          f"counts {memory['counts_bytes'] / 1e6:.2f} MB in {memory['count_keys']} keys "
          f"({memory['count_fields']:,} fields) next to the stream's {memory['stream_bytes'] / 1e6:.1f} MB")
    save("activity", {"machine": machine(), "load": sampler.summary(), "args": vars(args), "filled": filled,
                      "fill_s": fill_s, "rounds": args.rounds, "summary": summary, "paths": endpoints,
                      "read_all_s": naive, "memory": memory})
    return 0


if __name__ == "__main__":
    sys.exit(main())
