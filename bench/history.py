"""Benchmark 6, sweep with pipeline history: what reading GitLab's pipelines record costs a sweep.

    .venv/bin/python -m bench.history                 # 1,000 tags; 1,000 and 10,000 pipelines; api and registry
    .venv/bin/python -m bench.history --rss           # 10,000 tags and 20,000 pipelines: peak RSS
    .venv/bin/python -m bench.history --pipelines 1000,10000 --tags 1000 --modes api --rounds 2

Since GitLab's pipelines API decides which commit was built on which ref, a sweep first brings a
copy of the project's pipelines in Redis up to date (`workers/pipelines.py`): the first time it
reads the whole record (100 pipelines a request), later only what changed since. This benchmark
measures that, with the sweep run exactly as bench/sweep.py runs it (`tagsweeper sweep --project
acme/sweep --json` as its own process under `/usr/bin/time -v`, on a fresh copy of the seeded
registry), for the same tags (bench/sweep.py's population, N tags in 5 repositories) and a
project whose GitLab holds P pipelines: those that built the tagged commits plus older history
whose images are gone (bench/sweep.py `history_plan`: per 10 pipelines a merged feature branch
with its merge request and 4 more commits and a scheduled pipeline on main).

Three runs per history size and mode, back to back:

- **baseline**: pipeline memory pre-seeded in Redis with the same P pipelines (as Pipeline Hooks
  would have recorded them), GitLab's pipelines API empty: the sweep as it was before the record;
- **first run**: GitLab lists the P pipelines and Redis is empty (a freshly installed tagsweeper);
- **re-run**: 5 new pipelines later (pushes to main and live branches), the same sweep again, on
  the same Redis and registry (nothing left to delete): it reads only the pipelines that changed.

Figures: tagsweeper's requests to GitLab by endpoint (counted at the emulator), pipelines read,
wall time, peak RSS, and the emulator's own time serving `GET /pipelines` (GitLab's side: here a
Python emulator that filters and sorts the whole list in memory for every page, where GitLab uses
its database). After the re-run the first sync is also timed alone, in this process (`sync_alone`:
the record dropped, `Record.sync` run; its wall time less the emulator's is tagsweeper's side). `--rss` runs the baseline and the first run at 10,000 tags and 20,000 pipelines
(target: peak RSS < 150 MB). Nothing is timed against an absolute figure: the first run and the
re-run are compared with the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys

import redis

from bench import sweep as sw
from bench.common import WORK, LoadSampler, RedisServer, Stack, TimedEmulator, machine, median, save

NEW_PIPELINES = 5
RSS_TARGET_MB = 150
PIPELINES = "GET /projects/:id/pipelines"


def pipelines_requests(res: dict) -> int:
    return res["gitlab_by_endpoint"].get(PIPELINES, 0)


def one_size(emu, conn, server_url: str, golden, pop: dict, tags: int, total_pipelines: int, mode: str,
             rerun: bool, label: str) -> dict[str, dict]:
    """The baseline, the first run and (when `rerun`) the re-run for one history size and mode."""
    tagged = len(sw.history_plan(pop, 0)[0])
    extra = max(0, total_pipelines - tagged)
    out: dict[str, dict] = {}
    for kind in ("baseline", "first"):
        wd = WORK / "history" / f"{label}-{kind}"
        if wd.exists():
            shutil.rmtree(wd)
        stack = Stack(wd, storage_from=golden, emulator=emu)
        try:
            seeded = sw.setup(emu, conn, pop, source="memory" if kind == "baseline" else "record", extra=extra)
            res = sw.run_sweep(stack, server_url, mode, wd)
            res.update(seeded=seeded, record=sw.record_footprint(conn))
            out[kind] = res
            if kind == "first" and rerun:
                sw.add_activity(emu, pop, NEW_PIPELINES)
                again = sw.run_sweep(stack, server_url, mode, wd)
                again.update(seeded=dict(seeded, pipelines=seeded["pipelines"] + NEW_PIPELINES),
                             record=sw.record_footprint(conn))
                out["rerun"] = again
                res["sync_alone"] = sync_alone(emu, conn)
        finally:
            stack.stop()
            shutil.rmtree(wd, ignore_errors=True)
    for kind, res in out.items():
        res["expected_deletions"] = 0 if kind == "rerun" else sw.expected_deletions(pop)
        s = res["summary"] or {}
        print(f"{mode:8s} {tags:6d} tags {res['seeded']['pipelines']:6d} pipelines {kind:8s} "
              f"{res['wall_s']:7.2f} s  RSS {res['peak_rss_mb']:5.1f} MB  deleted {s.get('deleted')} "
              f"(expected {res['expected_deletions']}) failed {s.get('failed')} exit {res['exit']}  "
              f"gitlab {res['gitlab_requests']} (pipelines {pipelines_requests(res)}, read {res['pipelines_read']}; "
              f"emulator on /pipelines {res['emulator_pipelines_s']:.2f} s)  registry {res['registry_requests']}",
              flush=True)
        print(f"         by endpoint {res['gitlab_by_endpoint']}", flush=True)
        if "sync_alone" in res:
            a = res["sync_alone"]
            print(f"         sync alone: {a['read']} pipelines in {a['wall_s']:.2f} s, emulator {a['emulator_s']:.2f} s, "
                  f"tagsweeper {a['tagsweeper_s']:.2f} s", flush=True)
    return out


def sync_alone(emu, conn: redis.Redis) -> dict:
    """The first sync by itself, in this process: the record dropped, then `Record.sync` timed. The
    emulator serves it from this process too (one interpreter: client and server take turns), so the
    sync's wall time less the emulator's time serving it is tagsweeper's side: parsing the pages and
    writing them to Redis."""
    import time

    from workers.gitlab import GitLab
    from workers.pipelines import Record

    record = Record(conn, sw.PROJECT_ID)
    record.drop()
    gitlab = GitLab(emu.url, emu.token)
    emu.reset_served()
    started = time.perf_counter()
    try:
        read = record.sync(gitlab)
    finally:
        gitlab.close()
    wall = time.perf_counter() - started
    served = emu.served_s.get(PIPELINES, 0.0)
    return {"wall_s": wall, "emulator_s": served, "tagsweeper_s": wall - served, "read": read}


def row(runs: list[dict]) -> dict:
    """Medians over rounds of one (size, mode, kind); requests are the same every round (the last)."""
    last = runs[-1]
    return {"wall_s": median([r["wall_s"] for r in runs]), "wall_s_rounds": [r["wall_s"] for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "emulator_pipelines_s": median([r["emulator_pipelines_s"] for r in runs]),
            "emulator_busy_s": median([r["emulator_busy_s"] for r in runs]),
            "gitlab_requests": last["gitlab_requests"], "pipelines_requests": pipelines_requests(last),
            "merge_requests_requests": last["gitlab_by_endpoint"].get("GET /projects/:id/merge_requests", 0),
            "pipelines_read": last["pipelines_read"], "pipelines_in_gitlab": last["seeded"]["pipelines"],
            "merge_requests_in_gitlab": last["seeded"]["merge_requests"],
            "registry_requests": last["registry_requests"], "deleted": (last["summary"] or {}).get("deleted"),
            "expected_deletions": last["expected_deletions"], "failed": (last["summary"] or {}).get("failed"),
            "exit": last["exit"], "record_keys": last["record"]["keys"], "record_bytes": last["record"]["bytes"],
            "gitlab_by_endpoint": last["gitlab_by_endpoint"],
            **({"sync_alone": {k: median([r["sync_alone"][k] for r in runs]) for k in last["sync_alone"]}}
               if "sync_alone" in last else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss", action="store_true",
                        help="the memory check: 10,000 tags and 20,000 pipelines (sets the defaults below)")
    parser.add_argument("--tags", type=int, default=None, help="tags in the project (default 1000; --rss 10000)")
    parser.add_argument("--pipelines", default=None,
                        help="pipelines in GitLab, comma-separated (default 1000,10000; --rss 20000)")
    parser.add_argument("--modes", default="api,registry")
    parser.add_argument("--rounds", type=int, default=None, help="default 2 (--rss: 1)")
    args = parser.parse_args(argv)
    tags = args.tags or (10000 if args.rss else 1000)
    sizes = [int(x) for x in (args.pipelines or ("20000" if args.rss else "1000,10000")).split(",")]
    modes = [m for m in args.modes.split(",") if m]
    rounds = args.rounds or (1 if args.rss else 2)
    rerun = not args.rss
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)

    golden, pop = sw.seed(tags)
    work = WORK / "history"
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work / "redis").start()
    conn = redis.Redis.from_url(server.url)
    emu = TimedEmulator().start()
    runs: dict[str, dict[int, dict[str, list[dict]]]] = {m: {p: {} for p in sizes} for m in modes}
    try:
        with LoadSampler() as sampler:
            for r in range(rounds):
                for mode in modes:
                    for p in sizes:
                        got = one_size(emu, conn, server.url, golden, pop, tags, p, mode, rerun, f"{mode}-{p}-{r}")
                        for kind, res in got.items():
                            runs[mode][p].setdefault(kind, []).append(res)
    finally:
        emu.stop()
        server.stop()
    summary = {m: {p: {k: row(v) for k, v in runs[m][p].items()} for p in sizes} for m in modes}
    print()
    for m in modes:
        for p in sizes:
            s = summary[m][p]
            b, f = s["baseline"], s["first"]
            line = (f"{m:8s} {tags} tags, {p} pipelines: baseline {b['wall_s']:.1f} s / {b['gitlab_requests']} req; "
                    f"first run {f['wall_s']:.1f} s / {f['gitlab_requests']} req ({f['pipelines_requests']} pipelines "
                    f"pages, emulator {f['emulator_pipelines_s']:.1f} s), RSS {b['peak_rss_mb']:.1f} -> "
                    f"{f['peak_rss_mb']:.1f} MB")
            if "rerun" in s:
                x = s["rerun"]
                line += (f"; re-run {x['wall_s']:.1f} s / {x['gitlab_requests']} req ({x['pipelines_requests']} "
                         f"pipelines, read {x['pipelines_read']})")
            print(line)
            if args.rss:
                print(f"         peak RSS {f['peak_rss_mb']:.1f} MB (target < {RSS_TARGET_MB} MB: "
                      f"{'MET' if f['peak_rss_mb'] < RSS_TARGET_MB else 'MISSED'})")
    save("history-rss" if args.rss else "history",
         {"machine": machine(), "load": sampler.summary(), "tags": tags, "pipelines": sizes, "modes": modes,
          "rounds": rounds, "new_pipelines": NEW_PIPELINES, "rss_target_mb": RSS_TARGET_MB,
          "summary": {m: {str(p): v for p, v in d.items()} for m, d in summary.items()},
          "runs": {m: {str(p): v for p, v in d.items()} for m, d in runs.items()},
          "command": "python -m bench.history " + " ".join(argv if argv is not None else sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
