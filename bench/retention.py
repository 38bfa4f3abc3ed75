"""Benchmark 7, retention on a live branch: `tagsweeper retire` on `main` with 2,000 built commits.

    .venv/bin/python -m bench.retention                                  # 2,000 commits; api and registry mode
    .venv/bin/python -m bench.retention --commits 200 --modes registry   # a quick check

The project (acme/keep, id 4900, in the GitLab emulator, on the real docker-registry 2.8 with token
auth) has 2 registry repositories. Its `main` built N commits (default 2,000), one push pipeline
each, SPACING_MIN minutes apart, the newest 2 days ago; every pipeline pushed `:$CI_COMMIT_SHA`,
`:$CI_COMMIT_SHORT_SHA`, `main` and `latest` to both repositories, so each holds 2N + 3 tags (`main`
and `latest` on the newest commit's image, `v1.0.0` from a tag pipeline). Three old commits are
claimed by something other than `main`:

- commit N/4 is what `production` runs (deployed right after its pipeline, never since);
- commit N/2 is tagged `v1.0.0` (git tag; its tag pipeline pushed `:v1.0.0` and its SHA tags again);
- commit 3N/4 is the head of open merge request !7 (a draft from `feature/wip`, created there).

KEEP_COMMITS=10, KEEP_COMMITS_MIN_AGE=1d (every commit qualifies by age). So the pass keeps the 10
newest commits and the 3 claimed ones and deletes the other N - 13 commits' 2 tags in each
repository: 4 (N - 13) tags, 7,948 at 2,000 commits.

Seeding: per repository one image for the newest commit (with `main`, `latest`) and one for all
the older ones, whose other names are PUTs of that manifest (one request per tag, repositories in
parallel); the storage is cached under .run/bench-cache/ (bench/README.md). GitLab's side (`setup`)
is rebuilt for every trial: N pushes to main, a pipeline each, the deployment, the tag and its
pipeline, the merge request. Every trial starts with an empty Redis on a fresh copy of the storage.

Per mode (REGISTRY_MODE=api and registry), back to back:

- **floor** (the baseline): the same 4 (N - 13) tags handed straight to tagsweeper's deletion path
  (`workers.deletion.delete_tags` with the store REGISTRY_MODE opens, as the pass does), with the
  repositories given: no GitLab look-up, no decision. Its requests per tag are what deleting costs
  at all (api mode: GitLab's one DELETE per tag; registry mode: HEAD + PUT per tag, one DELETE per
  500, a token per repository), its time and RSS what deleting takes without deciding.
- **first pass**: `tagsweeper retire --project acme/keep --branch main --json`, Redis empty (a
  freshly installed tagsweeper: it reads the project's whole pipelines record first). The retention
  pass over the floor is what deciding costs.
- **re-run**: the same command again at once (same Redis, same registry): nothing left to do.
- **next pipeline**: one more commit pushed to main and built (its 4 tags pushed), then the same
  command: the steady state, where each successful pipeline on main retires the commit that just
  left the 10 newest (4 tags).

Each runs as its own process under `/usr/bin/time -v` (wall time, "Maximum resident set size").
Requests are counted where they arrive: the emulator's request log (GitLab API and /jwt/auth), per
endpoint, and the registry's access log (tagsweeper's User-Agent; in api mode the registry calls
are GitLab's own, the emulator's, shown apart). The emulator also adds up its own time serving
(GitLab's side). After the first pass every repository is listed: the survivors must be exactly
the expected tags (`collateral`: kept tags gone; `left`: doomed tags still there).
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

PROJECT_ID, PROJECT_PATH = 4900, "acme/keep"
REPO_NAMES = ("", "worker")
REPOS = tuple(PROJECT_PATH + (f"/{n}" if n else "") for n in REPO_NAMES)
KEEP_COMMITS = 10
MIN_AGE = "1d"
SPACING_MIN = 10  # minutes between two of main's pipelines
NEWEST_AGO = _dt.timedelta(days=2)  # the newest seeded pipeline
GIT_TAG, MR_IID, MR_BRANCH, ENVIRONMENT = "v1.0.0", 7, "feature/wip", "production"
TARGETS = {"api": 1.1, "registry": 2.2, "rss_mb": 150, "rerun_requests": 12}


def sha(*parts) -> str:
    return hashlib.sha1("-".join(map(str, parts)).encode()).hexdigest()


def population(n: int) -> dict:
    """main's commits (oldest first), the claimed ones, and the tags that go and stay per repository."""
    commits = [sha("keep-main", i) for i in range(n)]
    claimed = {"deployed": commits[n // 4], "tagged": commits[n // 2], "mr_head": commits[3 * n // 4]}
    kept = set(commits[-KEEP_COMMITS:]) | set(claimed.values())
    doomed = [t for c in commits if c not in kept for t in (c, c[:8])]
    tags = [t for c in commits for t in (c, c[:8])] + ["main", "latest", GIT_TAG]
    return {"commits": commits, "claimed": claimed, "doomed": doomed, "tags": tags,
            "survivors": sorted(set(tags) - set(doomed))}


def seed(n: int) -> tuple[Path, dict]:
    pop = population(n)
    commits = pop["commits"]

    def build(stack: Stack) -> None:
        client = stack.emulator.registry_client

        def one(repo: str):
            def go():
                head = commits[-1]
                client.push_image(repo, [head, head[:8], "main", "latest"], content=f"{repo}-head")
                client.push_image(repo, [commits[0]], content=f"{repo}-older")
                older = [t for c in commits[1:-1] for t in (c, c[:8])] + [commits[0][:8], GIT_TAG]
                add_tags(stack, repo, {commits[0]: older})
            return go

        parallel_by_repo({repo: one(repo) for repo in REPOS})

    return cached_storage(f"retention-{n}", build), pop


def setup(emu, pop: dict) -> dict:
    """GitLab's side: main pushed and built one commit at a time (a push pipeline each, oldest
    first), production deployed from commit N/4 right after its pipeline, commit N/2 tagged and
    built by a tag pipeline, and open merge request !7 from `feature/wip`, a branch created at
    commit 3N/4 (its head: no commit of its own yet, no pipeline)."""
    emu.reset()
    commits, claimed = pop["commits"], pop["claimed"]
    project = emu.add_project(PROJECT_ID, PROJECT_PATH, default_branch="main")
    project.add_environment(ENVIRONMENT, tier="production", auto_stop_setting="with_action")
    first = _dt.datetime.now(_dt.timezone.utc) - NEWEST_AGO - _dt.timedelta(minutes=SPACING_MIN * (len(commits) - 1))
    pipelines = 0
    for k, c in enumerate(commits):
        at = first + _dt.timedelta(minutes=SPACING_MIN * k)
        project.push("main", c)
        project.add_pipeline(c, "main", created_at=at)
        pipelines += 1
        if c == claimed["deployed"]:
            project.deploy(ENVIRONMENT, ref="main", sha=c, at=at + _dt.timedelta(minutes=5))
        if c == claimed["tagged"]:
            project.add_tag(GIT_TAG, c)
            project.add_pipeline(c, GIT_TAG, tag=True, created_at=at + _dt.timedelta(minutes=2))
            pipelines += 1
    project.add_branch(MR_BRANCH, claimed["mr_head"])
    project.add_merge_request(MR_IID, MR_BRANCH, "main", commits=[claimed["mr_head"]], draft=True)
    for name in REPO_NAMES:
        project.add_registry_repository(name)
    return {"pipelines": pipelines, "deployments": len(project.deployments), "merge_requests": 1}


def next_pipeline(stack: Stack, pop: dict) -> list[str]:
    """One more commit on main, built now: its pipeline pushed its SHA tags, `main` and `latest`.
    Returns the tags the pass should delete: those of the commit that left the KEEP_COMMITS newest."""
    project = stack.emulator.projects[PROJECT_ID]
    c = sha("keep-main-next", len(pop["commits"]))
    project.push("main", c)
    project.add_pipeline(c, "main")
    client = stack.emulator.registry_client
    for repo in REPOS:
        client.push_image(repo, [c, c[:8], "main", "latest"], content=f"{repo}-next")
    out = pop["commits"][-KEEP_COMMITS]
    return [out, out[:8]]


def listing(stack: Stack) -> dict[str, set[str]]:
    client = stack.emulator.registry_client
    return {repo: set(client.tags(repo)) for repo in REPOS}


def check(after: dict[str, set[str]], pop: dict) -> dict:
    survivors, doomed = set(pop["survivors"]), set(pop["doomed"])
    collateral = sorted(f"{r}:{t}" for r in REPOS for t in survivors - after[r])
    left = sorted(f"{r}:{t}" for r in REPOS for t in after[r] & doomed)
    return {"collateral": len(collateral), "collateral_examples": collateral[:6], "doomed_left": len(left),
            "doomed_left_examples": left[:6]}


def registry_by_kind(requests: list[tuple]) -> dict[str, int]:
    """tagsweeper's registry requests by method and kind: HEAD/PUT/DELETE of a tag, of a digest, the rest."""
    out: dict[str, int] = {}
    for method, path, _status, _ua in requests:
        if "/manifests/" in path:
            kind = "digest" if "sha256:" in path else "tag"
        elif "/blobs/" in path:
            kind = "blob"
        else:
            kind = "base" if path.rstrip("/") == "/v2" else "other"
        key = f"{method} {kind}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def environment(stack: Stack, redis_url: str, mode: str) -> dict:
    emu = stack.emulator
    env = {**os.environ, "GITLAB_URL": emu.url, "GITLAB_TOKEN": emu.token, "REDIS_URL": redis_url,
           "REGISTRY_MODE": mode, "LOG_FORMAT": "json", "PYTHONPATH": str(ROOT),
           "KEEP_COMMITS": str(KEEP_COMMITS), "KEEP_COMMITS_MIN_AGE": MIN_AGE}
    if mode == "registry":
        env["REGISTRY_URL"] = stack.registry.url
    return env


def timed(stack: Stack, cmd: list[str], env: dict, workdir: Path, name: str) -> dict:
    """Run `cmd` under /usr/bin/time -v, counting the requests it causes; its stdout is JSON."""
    emu = stack.emulator
    out, timing = workdir / f"{name}.json", workdir / f"{name}.time"
    emu.reset_requests()
    emu.reset_served()
    stack.registry.mark()
    started = time.perf_counter()
    with open(out, "wb") as stdout:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(timing), *cmd], env=env, stdout=stdout,
                              stderr=subprocess.PIPE, cwd=ROOT)
    wall = time.perf_counter() - started
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text()).group(1))
    reg_all = stack.registry.requests()
    mine = [r for r in reg_all if r[3].startswith("tagsweeper")]
    try:
        report = json.loads(out.read_text())
    except ValueError:
        report = {}
    gl = list(emu.requests)
    return {"wall_s": wall, "peak_rss_mb": rss_kb / 1024, "exit": proc.returncode,
            "stderr_tail": proc.stderr.decode(errors="replace")[-400:] if proc.returncode else "",
            "report": report, "gitlab_requests": len(gl), "gitlab_by_endpoint": by_endpoint(gl),
            "gitlab_deletes": sum(1 for m, *_ in gl if m == "DELETE"),
            "registry_requests": len(mine), "registry_by_kind": registry_by_kind(mine),
            "registry_requests_by_gitlab": len(reg_all) - len(mine),
            "emulator_busy_s": sum(emu.served_s.values())}


def summarise(res: dict) -> dict:
    """The figures of one run; the report itself is reduced to its counts."""
    report = res.pop("report") or {}
    summary = report.get("summary") or {}
    deleted = summary.get("deleted", 0) or 0
    res.update(summary=summary, retention=report.get("retention"), deleted=deleted,
               total_requests=res["gitlab_requests"] + res["registry_requests"],
               requests_per_deleted_tag=(res["gitlab_requests"] + res["registry_requests"]) / deleted
               if deleted else None)
    return res


def run_retire(stack: Stack, redis_url: str, mode: str, workdir: Path, name: str) -> dict:
    cmd = [str(Path(sys.executable).parent / "tagsweeper"), "retire", "--project", PROJECT_PATH, "--branch", "main",
           "--json"]
    return summarise(timed(stack, cmd, environment(stack, redis_url, mode), workdir, name))


def run_floor(stack: Stack, redis_url: str, mode: str, workdir: Path, tags: list[str]) -> dict:
    """The baseline: the same tags through tagsweeper's deletion path alone (bench/deletion_floor.py)."""
    from workers.gitlab import GitLab

    gl = GitLab(stack.emulator.url, stack.emulator.token)
    try:
        repos = list(gl.registry_repositories(PROJECT_ID))
    finally:
        gl.close()
    spec = workdir / "floor-spec.json"
    spec.write_text(json.dumps({"project_id": PROJECT_ID, "repositories": repos, "tags": tags}))
    cmd = [sys.executable, "-m", "bench.deletion_floor", str(spec)]
    return summarise(timed(stack, cmd, environment(stack, redis_url, mode), workdir, "floor"))


def trial(emu, conn: redis.Redis, redis_url: str, golden: Path, pop: dict, mode: str, kind: str, label: str) -> dict:
    """One fresh registry, Redis and GitLab: the floor, or the first pass followed by the re-run and
    the next pipeline's pass."""
    wd = WORK / "retention" / label
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    stack = Stack(wd, storage_from=golden, emulator=emu)
    out: dict[str, dict] = {}
    try:
        seeded = setup(emu, pop)
        conn.flushall()
        if kind == "floor":
            out["floor"] = run_floor(stack, redis_url, mode, wd, pop["doomed"])
            out["floor"].update(check(listing(stack), pop), seeded=seeded)
        else:
            out["first"] = run_retire(stack, redis_url, mode, wd, "first")
            out["first"].update(check(listing(stack), pop), seeded=seeded)
            out["rerun"] = run_retire(stack, redis_url, mode, wd, "rerun")
            expected = next_pipeline(stack, pop)
            out["next"] = run_retire(stack, redis_url, mode, wd, "next")
            after = listing(stack)
            out["next"]["expected_deleted"] = len(expected) * len(REPOS)
            out["next"]["expected_gone"] = all(t not in after[r] for r in REPOS for t in expected)
    finally:
        stack.stop()
        shutil.rmtree(wd / "data", ignore_errors=True)
    for name, res in out.items():
        per = res["requests_per_deleted_tag"]
        print(f"{mode:8s} {name:6s} {res['wall_s']:7.2f} s  RSS {res['peak_rss_mb']:5.1f} MB  deleted {res['deleted']} "
              f"failed {res['summary'].get('failed')}  gitlab {res['gitlab_requests']} registry "
              f"{res['registry_requests']} (by GitLab {res['registry_requests_by_gitlab']})  "
              f"req/tag {per if per is None else round(per, 4)}  emulator busy {res['emulator_busy_s']:.1f} s  "
              f"exit {res['exit']}" + (f"  collateral {res['collateral']} left {res['doomed_left']}"
                                       if "collateral" in res else ""), flush=True)
        print(f"         gitlab by endpoint {res['gitlab_by_endpoint']}", flush=True)
        print(f"         registry by kind {res['registry_by_kind']}", flush=True)
        if res["exit"]:
            print(f"         stderr: {res['stderr_tail']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000, help="commits main built (default 2000)")
    parser.add_argument("--modes", default="api,registry")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-floor", action="store_true", help="skip the baseline (deletion alone)")
    args = parser.parse_args(argv)
    if args.commits < 4 * KEEP_COMMITS:
        parser.error(f"--commits: at least {4 * KEEP_COMMITS}")
    modes = [m for m in args.modes.split(",") if m]
    kinds = ["retire"] if args.no_floor else ["floor", "retire"]
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)

    golden, pop = seed(args.commits)
    work = WORK / "retention"
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work / "redis").start()
    conn = redis.Redis.from_url(server.url)
    emu = TimedEmulator().start()
    runs: dict[str, dict[str, list[dict]]] = {m: {} for m in modes}
    try:
        with LoadSampler() as sampler:
            for r in range(args.rounds):
                for mode in modes:
                    order = kinds if r % 2 == 0 else kinds[::-1]
                    for kind in order:
                        got = trial(emu, conn, server.url, golden, pop, mode, kind, f"{mode}-{kind}-{r}")
                        for name, res in got.items():
                            runs[mode].setdefault(name, []).append(res)
    finally:
        emu.stop()
        server.stop()
    summary: dict[str, dict] = {}
    for mode in modes:
        summary[mode] = {}
        for name, results in runs[mode].items():
            last = dict(results[-1])
            last["wall_s_median"] = median([x["wall_s"] for x in results])
            last["wall_s_rounds"] = [x["wall_s"] for x in results]
            last["peak_rss_mb_max"] = max(x["peak_rss_mb"] for x in results)
            last["emulator_busy_s_median"] = median([x["emulator_busy_s"] for x in results])
            summary[mode][name] = last
    print()
    for mode in modes:
        s = summary[mode]
        f = s.get("first")
        if not f:
            continue
        target = TARGETS[mode]
        line = (f"{mode:8s} first pass: {f['deleted']} deleted, {f['requests_per_deleted_tag']:.4f} req/tag (target "
                f"<= {target}: {'MET' if f['requests_per_deleted_tag'] <= target else 'MISSED'}), "
                f"{f['wall_s_median']:.1f} s, peak RSS {f['peak_rss_mb_max']:.1f} MB (target < {TARGETS['rss_mb']}: "
                f"{'MET' if f['peak_rss_mb_max'] < TARGETS['rss_mb'] else 'MISSED'})")
        if "floor" in s:
            fl = s["floor"]
            line += (f"; floor {fl['requests_per_deleted_tag']:.4f} req/tag, {fl['wall_s_median']:.1f} s, "
                     f"{fl['peak_rss_mb_max']:.1f} MB")
        print(line)
        print(f"         re-run: {s['rerun']['total_requests']} requests ({s['rerun']['gitlab_requests']} GitLab), "
              f"{s['rerun']['wall_s_median']:.1f} s; next pipeline: {s['next']['deleted']} deleted "
              f"(expected {s['next']['expected_deleted']}) with {s['next']['total_requests']} requests")
    save("retention", {"machine": machine(), "load": sampler.summary(), "commits": args.commits,
                       "repositories": list(REPOS), "keep_commits": KEEP_COMMITS, "min_age": MIN_AGE,
                       "spacing_min": SPACING_MIN, "claimed": pop["claimed"], "doomed_per_repository": len(pop["doomed"]),
                       "tags_per_repository": len(pop["tags"]), "rounds": args.rounds, "targets": TARGETS,
                       "summary": summary, "runs": runs,
                       "command": "python -m bench.retention " + " ".join(argv if argv is not None else sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
