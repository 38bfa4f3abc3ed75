"""Benchmark 1, intake: wrk against gunicorn serving POST /hooks/gitlab with real merge deliveries.

    .venv/bin/python -m bench.intake                 # 4 rounds of (bare, candidate) pairs, 5 s per wrk run,
                                                     # then the 2,000-delivery burst of tests/test_load.py
    .venv/bin/python -m bench.intake --rounds 5 --duration 15 --connections 4 --no-burst

Every request is a valid merge delivery (the example payload, real token) and a DISTINCT cleanup:
bench/intake.lua gives each request its own MR iid, branch and Idempotency-Key. Variants, all
served by gunicorn with the Procfile's settings (`--workers 2 --access-logfile -`, sync workers),
each in its own gunicorn, against one redis-server started here:

- bare: Flask endpoint that only parses the same JSON (bench/intake_apps.py): the 1.0 of the ratios;
- pipelined: bare + one pipelined Redis write (SET NX + RPUSH): one round trip;
- naive: bare + a plain RQ `Queue.enqueue` per delivery;
- tagsweeper: `hooks:create_app()` with the default CLEANUP_DELAY=60 (a scheduled job);
- tagsweeper-delay0: the same with CLEANUP_DELAY=0 (an immediately queued job).

No worker runs during the wrk runs: what is measured is the web side, whose work ends when
a delivery's job is an RQ job, queued or scheduled (hooks/intake.py, workers/common/queue.py).

Each candidate runs as a pair with bare, back to back (who goes first alternates, the order of
candidates rotates each round), and its throughput is divided by that bare run's: the machine is
shared, so only ratios measured side by side mean anything. The figures are the medians over rounds. Redis is emptied before each wrk run, and
tagsweeper's own counters and its RQ jobs are checked afterwards: every answered request must
have been accepted, and its job must be queued or scheduled in RQ.

Also printed: Redis round trips per delivery of each variant (counted in-process by wrapping
redis-py's send_packed_command, after a warm-up delivery).

Then, unless --no-burst: tests/test_load.py, the burst of 2,000 mixed deliveries from 16 threads
against gunicorn (two web workers) while two `tagsweeper worker`s run the jobs, for how long
the slowest answer took against GitLab's 10-second webhook timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

from bench.common import (ROOT, WORK, LoadSampler, RedisServer, free_port, machine, median, save, stop,
                          wait_for_port)
from tests.support.payloads import PAYLOADS

SECRET = "bench-webhook-secret"
VARIANTS = {
    "bare": ("bench.intake_apps:create_app('bare')", {}),
    "pipelined": ("bench.intake_apps:create_app('pipelined')", {}),
    "naive": ("bench.intake_apps:create_app('naive')", {}),
    "tagsweeper": ("hooks:create_app()", {"CLEANUP_DELAY": "60"}),
    "tagsweeper-delay0": ("hooks:create_app()", {"CLEANUP_DELAY": "0"}),
}
TAGSWEEPER = ("tagsweeper", "tagsweeper-delay0")


def merge_body() -> dict:
    return json.loads((PAYLOADS / "merge_request_merge.json").read_text())


def body_template(path: Path) -> Path:
    body = merge_body()
    body["object_attributes"]["iid"] = "@@IID@@"
    body["object_attributes"]["source_branch"] = "@@BRANCH@@"
    text = json.dumps(body, indent=2).replace('"@@IID@@"', "@@IID@@")
    path.write_text(text)
    return path


def start_gunicorn(app: str, env: dict, workers: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bin_dir / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--access-logfile", "-", app],
        cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc, timeout=30)
    return proc, port


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(port: int, seconds: float, connections: int, threads: int, env: dict) -> dict:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "--timeout", "10s",
         "-s", str(ROOT / "bench" / "intake.lua"), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    result = {"raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else 0
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", out, re.M)
        result[f"p{p}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = m.group(1) if m else ""
    return result


def enqueued_count(conn: redis.Redis) -> int:
    fields = conn.hgetall("tagsweeper:metrics:deliveries_total")
    return sum(int(v) for k, v in fields.items() if b'outcome="enqueued"' in k)


def round_trips(redis_url: str) -> dict:
    """Redis round trips (send_packed_command calls) per delivery, in-process, after a warm-up."""
    import redis.connection as rc
    from bench.intake_apps import create_app as reference_app
    from hooks import create_app

    sent: list[bytes] = []
    original = rc.AbstractConnection.send_packed_command

    def spy(self, command, check_health=True):
        parts = command if isinstance(command, (list, tuple)) else [command]
        sent.append(b"".join(bytes(p) for p in parts))
        return original(self, command, check_health)

    headers = json.loads((PAYLOADS / "headers.json").read_text())
    headers["X-Gitlab-Token"] = SECRET
    counts = {}
    rc.AbstractConnection.send_packed_command = spy
    try:
        for name, (app, env) in VARIANTS.items():
            if name in TAGSWEEPER:
                flask_app = create_app({"WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url,
                                        "CLEANUP_DELAY": int(env["CLEANUP_DELAY"]), "LOG_FORMAT": "json"})
                import logging
                logging.getLogger("tagsweeper.hooks").disabled = True
            else:
                os.environ["REDIS_URL"] = redis_url
                flask_app = reference_app(name)
            client = flask_app.test_client()
            per = []
            for i in range(4):
                body = merge_body()
                body["object_attributes"]["iid"] = 900000 + i + 10 * len(counts)
                sent.clear()
                r = client.post("/hooks/gitlab", data=json.dumps(body), headers=headers)
                assert r.status_code == 202, (name, r.status_code, r.data)
                if i:  # the first one pays for HELLO, INFO, SCRIPT LOAD
                    per.append([re.findall(rb"\$\d+\r\n([A-Z]+)\r\n", c)[:1][0].decode() if
                                re.findall(rb"\$\d+\r\n([A-Z]+)\r\n", c) else "?" for c in sent])
            counts[name] = {"round_trips": len(per[-1]), "first_command_of_each": per[-1]}
    finally:
        rc.AbstractConnection.send_packed_command = original
    return counts


def waiting_jobs(conn: redis.Redis, queue: str = "tagsweeper") -> int:
    """RQ jobs queued or scheduled on the queue (no worker runs during the wrk runs)."""
    return conn.llen(f"rq:queue:{queue}") + conn.zcard(f"rq:scheduled:{queue}")


BURST_LINE = re.compile(r"2000 deliveries answered in ([\d.]+)s \(median (\d+) ms, max ([\d.]+)s\)")


def burst() -> dict:
    """Run tests/test_load.py and read its answer times (it asserts every answer is right and in time)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_load.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    m = BURST_LINE.search(done.stdout)
    if done.returncode or not m:
        raise RuntimeError(f"tests/test_load.py failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    return {"deliveries": 2000, "answered_in_s": float(m.group(1)), "median_ms": float(m.group(2)),
            "max_s": float(m.group(3)), "gitlab_timeout_s": 10.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (the Procfile's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-burst", action="store_true", help="skip the 2,000-delivery burst of tests/test_load.py")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "bare" not in names:
        names.insert(0, "bare")

    work = WORK / "intake"
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work / "redis").start()
    conn = redis.Redis.from_url(server.url)
    template = body_template(work / "merge_template.json")
    procs = {}
    try:
        rts = round_trips(server.url)
        conn.flushall()
        for name in names:
            app, extra = VARIANTS[name]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": server.url, "WEBHOOK_SECRET": SECRET,
                   "LOG_FORMAT": "json", **extra}
            procs[name] = start_gunicorn(app, env, args.workers, work / f"gunicorn-{name}.log")
            port = procs[name][1]
            body = merge_body()
            body["object_attributes"]["iid"] = 77 + len(procs)
            h = json.loads((PAYLOADS / "headers.json").read_text())
            h["X-Gitlab-Token"] = SECRET
            r = requests.post(f"http://127.0.0.1:{port}/hooks/gitlab", data=json.dumps(body), headers=h, timeout=10)
            assert r.status_code == 202, (name, r.status_code, r.text)
        wrk_env = {**os.environ, "BENCH_BODY": str(template), "BENCH_TOKEN": SECRET}
        for i, name in enumerate(names):  # warm-up: connections, script cache, first-request costs
            run_wrk(procs[name][1], 2, args.connections, args.threads, {**wrk_env, "BENCH_SALT": str(90 + i)})
        runs: dict[str, list[dict]] = {n: [] for n in names}
        pairs: dict[str, list[float]] = {n: [] for n in names if n != "bare"}
        candidates = [n for n in names if n != "bare"]
        salt = 0
        with LoadSampler() as sampler:
            for r in range(args.rounds):
                order = candidates[r % len(candidates):] + candidates[:r % len(candidates)]
                for k, cand in enumerate(order):
                    # bare and the candidate back to back (which goes first alternates): the ratio of a pair
                    # is measured under (nearly) the same background load.
                    pair = ["bare", cand] if (r + k) % 2 == 0 else [cand, "bare"]
                    got = {}
                    for name in pair:
                        conn.flushall()
                        salt += 1
                        res = run_wrk(procs[name][1], args.duration, args.connections, args.threads,
                                      {**wrk_env, "BENCH_SALT": str(salt)})
                        res["round"] = r
                        if name in TAGSWEEPER:
                            time.sleep(0.3)
                            res["enqueued"] = enqueued_count(conn)
                            res["jobs_in_redis"] = waiting_jobs(conn)
                            # Every answered request enqueued (the counter can trail the jobs by in-flight ones).
                            assert res["enqueued"] >= res["requests"], res
                            assert 0 <= res["jobs_in_redis"] - res["enqueued"] <= args.connections, res
                        runs[name].append(res)
                        got[name] = res
                    ratio = got[cand]["rps"] / got["bare"]["rps"] if got["bare"]["rps"] else float("nan")
                    pairs[cand].append(ratio)
                    print(f"round {r + 1} {cand:18s} {got[cand]['rps']:8.1f} req/s vs bare {got['bare']['rps']:8.1f}"
                          f"  ratio {ratio:5.2f}  p99 {got[cand]['p99_ms']:6.1f} ms (bare {got['bare']['p99_ms']:5.1f})"
                          f"  non-2xx {got[cand]['non_2xx']}"
                          + (f"  enqueued {got[cand]['enqueued']}/{got[cand]['requests']}" if 'enqueued' in got[cand] else ""),
                          flush=True)
        summary = {}
        for name in names:
            ratios = pairs.get(name, [1.0] * len(runs[name]))
            summary[name] = {
                "rps_median": median([x["rps"] for x in runs[name]]),
                "ratio_to_bare_median": median(ratios),
                "ratios": [round(x, 3) for x in ratios],
                "p50_ms_median": median([x["p50_ms"] for x in runs[name]]),
                "p99_ms_median": median([x["p99_ms"] for x in runs[name]]),
                "p99_ms_max": max(x["p99_ms"] for x in runs[name]),
                "non_2xx": sum(x["non_2xx"] for x in runs[name]),
                "round_trips": rts.get(name, {}).get("round_trips"),
                "redis_commands": rts.get(name, {}).get("first_command_of_each"),
            }
        print()
        print(f"{'variant':18s} {'req/s':>8s} {'ratio':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'RTs':>4s}  ratios per round")
        for name, s in summary.items():
            print(f"{name:18s} {s['rps_median']:8.1f} {s['ratio_to_bare_median']:6.2f} {s['p50_ms_median']:7.1f} "
                  f"{s['p99_ms_median']:7.1f} {s['round_trips'] if s['round_trips'] is not None else '-':>4}  "
                  f"{s['ratios']}")
        for name in ("tagsweeper", "tagsweeper-delay0"):
            if name in summary:
                s = summary[name]
                print(f"target {name}: p99 < 20 ms: {'MET' if s['p99_ms_median'] < 20 else 'MISSED'}")
        result = {"args": vars(args), "machine": machine(), "load": sampler.summary(),
                  "summary": summary, "runs": {k: [{kk: vv for kk, vv in x.items() if kk != "raw"} for x in v]
                                               for k, v in runs.items()},
                  "wrk_raw_example": runs["bare"][0]["raw"] if runs["bare"] else ""}
    finally:
        for proc, _ in procs.values():
            stop(proc)
        server.stop()
    if not args.no_burst:
        with LoadSampler() as sampler:
            result["burst"] = burst()
        result["burst"]["load"] = sampler.summary()
        b = result["burst"]
        print(f"burst: 2000 deliveries answered in {b['answered_in_s']:.1f} s, median {b['median_ms']:.0f} ms, "
              f"slowest {b['max_s']:.2f} s (GitLab gives up after 10 s)")
    save("intake", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
