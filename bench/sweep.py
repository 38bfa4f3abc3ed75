"""Benchmark 4, sweep: `tagsweeper sweep` on a project with 1,000 … 10,000 tags in 5 repositories.

    .venv/bin/python -m bench.sweep                       # sizes 1000,2500,5000,10000; api and registry mode
    .venv/bin/python -m bench.sweep --sizes 1000,10000 --modes api

The sweep runs as its own process, exactly as an operator runs it (`.venv/bin/tagsweeper sweep
--project acme/sweep --json`), under `/usr/bin/time -v`: wall time and peak RSS ("Maximum resident
set size") of that process. The project (id 4800, in the GitLab emulator, on the real
docker-registry 2.8 with token auth) has 5 registry repositories holding the same tag names, N/5
each, in fixed proportions:

- `:$SHA` + `:$SHORT_SHA` of main's history (about 84%): GitLab's pipelines say built on main, kept;
- 1 in 100 per repository: a live branch (its tag and its head's two SHA tags), kept;
- 1 in 100: a merged, deleted branch (its tag and 4 commits' SHA tags): DELETED (about 9%);
- 2%: release tags (PROTECTED_TAGS), 2%: `experiment-N` (unclear, kept and reported);
- `main`, `latest`, main's head SHA tags.

GitLab's side is what a user's GitLab has (`setup`, `history_plan`): the branches, release tags,
merged merge requests (merge commits), and the pipelines that built every tagged commit (push
pipelines, a merge request pipeline per dead branch, tag pipelines for releases, main's pipelines
on the merge commits), about N/10 pipelines for N tags. Redis starts empty, as for a freshly
installed tagsweeper: the sweep reads GitLab's whole pipeline record first (`--source memory` seeds
the old way instead: pipeline memory in Redis and no pipelines in GitLab). bench/history.py varies
the pipeline history at a fixed number of tags and times a second sweep.

Short and full SHA tags are decided from the pipelines record (a commit no pipeline built would be
looked up in GitLab: none here). Every tag is one PUT of one small manifest; each size's seeded
storage is cached under .run/bench-cache/ (first run: about a minute for 10,000 tags). Each sweep
runs on a fresh copy, so each deletes the same tags. Requests are counted per endpoint at the
emulator, which also adds up its own time serving them (`emulator_busy_s`: GitLab's side, in this
benchmark a Python emulator). Results, with an SVG plot of time and peak RSS against N, go to
bench/results/ and docs/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.common import (ROOT, WORK, LoadSampler, RedisServer, Stack, TimedEmulator, add_tags, by_endpoint,
                          cached_storage, machine, median, parallel_by_repo, save)

PROJECT_ID, PROJECT_PATH = 4800, "acme/sweep"
REPO_NAMES = ("", "api", "web", "worker", "db")
REPOS = tuple(PROJECT_PATH + (f"/{n}" if n else "") for n in REPO_NAMES)


def sha(*parts) -> str:
    return hashlib.sha1("-".join(map(str, parts)).encode()).hexdigest()


def population(total: int) -> dict:
    """The tag names of one repository (the same in all five) and the facts GitLab and memory hold."""
    n = total // len(REPOS)
    live = [f"feature/live-{i}" for i in range(max(1, n // 100))]
    dead = [f"feature/done-{i}" for i in range(max(1, n // 100))]
    releases = [f"v1.{i // 10}.{i % 10}" for i in range(max(1, n // 50))]
    experiments = [f"experiment-{i}" for i in range(max(1, n // 50))]
    main_head = sha("main-head", total)
    live_heads = {b: sha("live", b) for b in live}
    dead_commits = {b: [sha("dead", b, k) for k in range(4)] for b in dead}
    tags = ["main", "latest", main_head, main_head[:8]]
    for b in live:
        tags += [b.replace("/", "-"), live_heads[b], live_heads[b][:8]]
    for b in dead:
        tags.append(b.replace("/", "-"))
        for c in dead_commits[b]:
            tags += [c, c[:8]]
    tags += releases + experiments
    history = []
    i = 0
    while len(tags) + 2 <= n:
        c = sha("main-history", i)
        history.append(c)
        tags += [c, c[:8]]
        i += 1
    while len(tags) < n:
        tags.append(f"experiment-x{len(tags)}")
    return {"tags": tags, "live": live_heads, "dead": dead_commits, "main_head": main_head,
            "history": history, "releases": releases, "experiments": experiments}


def expected_deletions(pop: dict) -> int:
    return len(REPOS) * sum(1 + 2 * len(c) for c in pop["dead"].values())


def seed(total: int):
    pop = population(total)

    def build(stack: Stack) -> None:
        client = stack.emulator.registry_client

        def one(repo: str):
            def go():
                client.push_image(repo, ["main"], content=f"{repo}-image")
                add_tags(stack, repo, {"main": [t for t in pop["tags"] if t != "main"]})
            return go

        parallel_by_repo({repo: one(repo) for repo in REPOS})

    return cached_storage(f"sweep-{total}", build), pop


OLD_UNIT = 10  # pipelines per unit of older history (see history_plan)
SPACING_MIN = 15  # minutes between two seeded pipelines


def history_plan(pop: dict, extra: int = 0) -> tuple[list[tuple], list[tuple]]:
    """The project's pipelines as GitLab lists them, oldest first, and the merged merge requests.

    Pipelines: (sha, ref, source, tag). First `extra` pipelines of older history whose images are
    gone (expired or cleaned long ago), in units of OLD_UNIT: a feature branch `feature/old-K` with 3
    commits (3 push pipelines and a merge request pipeline on refs/merge-requests/IID/head), its merge
    commit's pipeline on main, 4 more commits pushed to main and a scheduled pipeline on main; the
    remainder are push pipelines on main. Then the pipelines of the tagged commits: main's history,
    each dead branch's 4 commits (push pipelines, a merge request pipeline on the last one, its merge
    commit on main), the live branches' heads, a tag pipeline per release, main's head last.

    Merge requests: (iid, source branch, commits, merge commit sha), merged with a merge commit."""
    plan: list[tuple] = []
    mrs: list[tuple] = []
    units, rest = divmod(max(0, extra), OLD_UNIT)
    for k in range(units):
        branch, iid = f"feature/old-{k}", 10000 + k
        commits = [sha("old", k, j) for j in range(3)]
        merge = sha("old-merge", k)
        plan += [(c, branch, "push", False) for c in commits]
        plan.append((commits[-1], f"refs/merge-requests/{iid}/head", "merge_request_event", False))
        plan.append((merge, "main", "push", False))
        mains = [sha("old-main", k, j) for j in range(4)]
        plan += [(c, "main", "push", False) for c in mains]
        plan.append((mains[-1], "main", "schedule", False))
        mrs.append((iid, branch, commits, merge))
    plan += [(sha("old-main-rest", j), "main", "push", False) for j in range(rest)]
    plan += [(c, "main", "push", False) for c in pop["history"]]
    for i, (b, commits) in enumerate(pop["dead"].items()):
        iid, merge = 100 + i, sha("merge", b)
        plan += [(c, b, "push", False) for c in commits]
        plan.append((commits[-1], f"refs/merge-requests/{iid}/head", "merge_request_event", False))
        plan.append((merge, "main", "push", False))
        mrs.append((iid, b, list(commits), merge))
    plan += [(h, b, "push", False) for b, h in pop["live"].items()]
    plan += [(sha("release", v), v, "push", True) for v in pop["releases"]]
    plan.append((pop["main_head"], "main", "push", False))
    return plan, mrs


def setup(emu, conn: redis.Redis, pop: dict, *, source: str = "record", extra: int = 0) -> dict:
    """Seed GitLab's side (the emulator) and Redis for one sweep.

    source="record" (what a user has): GitLab lists the pipelines (`history_plan`, created SPACING_MIN
    apart, the last an hour ago) and Redis is empty, as for a freshly installed tagsweeper.
    source="memory" (the baseline, how this benchmark seeded before GitLab's pipelines decided):
    GitLab lists no pipelines, and pipeline memory in Redis holds the same pipelines as Pipeline Hooks
    would have recorded them (a merge request pipeline under its source branch, as the hook's `ref`)."""
    from workers import history

    emu.reset()
    conn.flushall()
    project = emu.add_project(PROJECT_ID, PROJECT_PATH, default_branch="main")
    project.branches["main"] = pop["main_head"]
    for b, head in pop["live"].items():
        project.branches[b] = head
    for v in pop["releases"]:
        project.tags[v] = sha("release", v)
    for c in pop["history"]:
        project.add_commit(c, on=["main"])
    plan, mrs = history_plan(pop, extra)
    for iid, b, commits, merge in mrs:
        project.add_merge_request(iid, b, "main", state="merged", commits=list(commits), merge_commit_sha=merge)
    for name in REPO_NAMES:
        project.add_registry_repository(name)
    sources = {f"refs/merge-requests/{iid}/head": b for iid, b, _, _ in mrs}
    if source == "record":
        first = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1, minutes=SPACING_MIN * len(plan))
        for k, (c, ref, src, tag) in enumerate(plan):
            project.add_pipeline(c, ref, source=src, tag=tag,
                                 created_at=first + _dt.timedelta(minutes=SPACING_MIN * k))
    elif source == "memory":
        pipe_calls = [(c, sources.get(ref, ref), tag) for c, ref, _, tag in plan]
        for c, ref, tag in pipe_calls:
            history.record(conn, project_id=PROJECT_ID, ref=ref, sha=c, tag=tag, ttl_days=3650, cap=1_000_000)
    else:
        raise ValueError(source)
    return {"pipelines": len(plan), "merge_requests": len(mrs), "source": source}


def add_activity(emu, pop: dict, n: int = 5) -> None:
    """What changed between two sweeps: `n` new pipelines (pushes to main and the live branches), now."""
    project = emu.projects[PROJECT_ID]
    branches = ["main", *pop["live"]]
    for k in range(n):
        b = branches[k % len(branches)]
        c = project.push(b)
        project.add_pipeline(c, b)


def record_footprint(conn: redis.Redis) -> dict:
    """Keys and bytes (MEMORY USAGE) of the pipelines record in Redis."""
    keys = total = 0
    for key in conn.scan_iter(match="tagsweeper:pipelines:*", count=1000):
        keys += 1
        total += conn.memory_usage(key, samples=0) or 0
    return {"keys": keys, "bytes": total}


def run_sweep(stack: Stack, redis_url: str, mode: str, workdir: Path) -> dict:
    emu = stack.emulator
    env = {**os.environ, "GITLAB_URL": emu.url, "GITLAB_TOKEN": emu.token, "REDIS_URL": redis_url,
           "REGISTRY_MODE": mode, "LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)}
    if mode == "registry":
        env["REGISTRY_URL"] = stack.registry.url
    out = workdir / "sweep.json"
    timing = workdir / "time.txt"
    emu.reset_requests()
    if hasattr(emu, "reset_served"):
        emu.reset_served()
    stack.registry.mark()
    started = time.perf_counter()
    with open(out, "wb") as stdout:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(timing), str(Path(sys.executable).parent / "tagsweeper"),
                               "sweep", "--project", PROJECT_PATH, "--json"], env=env, stdout=stdout,
                              stderr=subprocess.PIPE, cwd=ROOT)
    wall = time.perf_counter() - started
    text = timing.read_text()
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    elapsed = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", text).group(1)
    report = json.loads(out.read_text())
    reg = stack.registry.requests(agent="tagsweeper")
    served = dict(getattr(emu, "served_s", {}))
    return {"wall_s": wall, "time_elapsed": elapsed, "peak_rss_mb": rss_kb / 1024, "exit": proc.returncode,
            "stderr_tail": proc.stderr.decode(errors="replace")[-400:], "scanned": report.get("scanned"),
            "summary": report.get("summary"), "unclear": report.get("unclear"),
            "kept_by_rule": report.get("kept_by_rule"), "pipelines_read": report.get("pipelines_read"),
            "known_dead_branches": report.get("known_dead_branches"),
            "gitlab_requests": len(emu.requests), "gitlab_by_endpoint": by_endpoint(emu.requests),
            "emulator_busy_s": sum(served.values()),
            "emulator_pipelines_s": served.get("GET /projects/:id/pipelines", 0.0),
            "registry_requests": len(reg)}


def svg_plot(points: dict[str, list[tuple[int, float, float]]], path: Path) -> None:
    """Two small line charts side by side (wall time, peak RSS against tags), one line per mode."""
    W, H, M = 360, 240, 46
    colors = {"api": "#1f77b4", "registry": "#d62728"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W + 20}" height="{H + 30}" '
             'font-family="sans-serif" font-size="11">']
    for panel, (title, idx, unit) in enumerate((("wall time", 1, "s"), ("peak RSS of the sweep process", 2, "MB"))):
        ox = panel * (W + 20)
        xs = [p[0] for pts in points.values() for p in pts]
        ys = [p[idx] for pts in points.values() for p in pts]
        if not xs:
            continue
        xmax = max(xs)
        ymax = max(ys + ([150.0] if idx == 2 else [])) * 1.1
        def X(x): return ox + M + (W - M - 10) * x / xmax
        def Y(y): return H - M + 10 - (H - M - 10) * y / ymax
        parts.append(f'<text x="{ox + W / 2}" y="14" text-anchor="middle" font-weight="bold">{title} ({unit})</text>')
        parts.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(xmax)}" y2="{Y(0)}" stroke="black"/>')
        parts.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(0)}" y2="{Y(ymax)}" stroke="black"/>')
        for k in range(5):
            yv = ymax * k / 4
            parts.append(f'<text x="{X(0) - 4}" y="{Y(yv) + 4}" text-anchor="end">{yv:.0f}</text>')
            parts.append(f'<line x1="{X(0)}" y1="{Y(yv)}" x2="{X(xmax)}" y2="{Y(yv)}" stroke="#ddd"/>')
        for xv in sorted(set(xs)):
            parts.append(f'<text x="{X(xv)}" y="{Y(0) + 14}" text-anchor="middle">{xv}</text>')
        parts.append(f'<text x="{ox + W / 2}" y="{H + 20}" text-anchor="middle">tags in the project</text>')
        if idx == 2:
            parts.append(f'<line x1="{X(0)}" y1="{Y(150)}" x2="{X(xmax)}" y2="{Y(150)}" stroke="#999" '
                         'stroke-dasharray="4,3"/>')
            parts.append(f'<text x="{X(xmax)}" y="{Y(150) - 4}" text-anchor="end" fill="#666">target 150 MB</text>')
        for li, (mode, pts) in enumerate(sorted(points.items())):
            pts = sorted(pts)
            c = colors.get(mode, "black")
            parts.append('<polyline fill="none" stroke-width="2" stroke="{}" points="{}"/>'.format(
                c, " ".join(f"{X(p[0]):.1f},{Y(p[idx]):.1f}" for p in pts)))
            for p in pts:
                parts.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[idx]):.1f}" r="3" fill="{c}"/>')
            parts.append(f'<text x="{X(0) + 8}" y="{Y(ymax) + 14 + 13 * li}" fill="{c}">{mode} mode</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2500,5000,10000")
    parser.add_argument("--modes", default="api,registry")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--source", default="record", choices=("record", "memory"),
                        help="record: GitLab lists the pipelines, Redis starts empty (default); memory: the old "
                             "seeding, pipeline memory in Redis and no pipelines in GitLab")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)

    seeded = {n: seed(n) for n in sizes}
    work = WORK / "sweep"
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work / "redis").start()
    conn = redis.Redis.from_url(server.url)
    emu = TimedEmulator().start()
    runs: dict[str, dict[int, list[dict]]] = {m: {n: [] for n in sizes} for m in modes}
    try:
        with LoadSampler() as sampler:
            for r in range(args.rounds):
                for mode in modes:
                    for n in sizes:
                        golden, pop = seeded[n]
                        wd = work / f"{mode}-{n}-{r}"
                        if wd.exists():
                            shutil.rmtree(wd)
                        stack = Stack(wd, storage_from=golden, emulator=emu)
                        try:
                            seeded_as = setup(emu, conn, pop, source=args.source)
                            res = run_sweep(stack, server.url, mode, wd)
                            res.update(seeded=seeded_as, record=record_footprint(conn))
                        finally:
                            stack.stop()
                            shutil.rmtree(wd / "data", ignore_errors=True)
                        res["expected_deletions"] = expected_deletions(pop)
                        runs[mode][n].append(res)
                        s = res["summary"] or {}
                        print(f"{mode:8s} {n:6d} tags: {res['wall_s']:7.2f} s  peak RSS {res['peak_rss_mb']:6.1f} MB  "
                              f"scanned {res['scanned']} deleted {s.get('deleted')} (expected {res['expected_deletions']}) "
                              f"unclear {res['unclear']} failed {s.get('failed')}  requests: gitlab "
                              f"{res['gitlab_requests']} registry {res['registry_requests']}  exit {res['exit']}  "
                              f"pipelines {seeded_as['pipelines']} read {res['pipelines_read']}",
                              flush=True)
                        print(f"         by endpoint {res['gitlab_by_endpoint']}", flush=True)
    finally:
        emu.stop()
        server.stop()
    summary = {m: [{"tags": n, "wall_s": median([x["wall_s"] for x in runs[m][n]]),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[m][n]),
                    "deleted": runs[m][n][-1]["summary"]["deleted"], "scanned": runs[m][n][-1]["scanned"]}
                   for n in sizes] for m in modes}
    print()
    for m, rows in summary.items():
        a, b = rows[0], rows[-1]
        print(f"{m:8s} {a['tags']} -> {b['tags']} tags: time {a['wall_s']:.1f} -> {b['wall_s']:.1f} s "
              f"(x{b['wall_s'] / a['wall_s']:.1f}), peak RSS {a['peak_rss_mb']:.1f} -> {b['peak_rss_mb']:.1f} MB "
              f"(target < 150 MB: {'MET' if b['peak_rss_mb'] < 150 else 'MISSED'})")
    save("sweep", {"machine": machine(), "load": sampler.summary(), "summary": summary, "runs": runs,
                   "source": args.source,
                   "command": "python -m bench.sweep " + " ".join(argv if argv is not None else sys.argv[1:])})
    svg_plot({m: [(r["tags"], r["wall_s"], r["peak_rss_mb"]) for r in rows] for m, rows in summary.items()},
             ROOT / "docs" / "benchmarks-sweep.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
