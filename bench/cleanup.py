"""Benchmarks 2 and 3, cleanup cost and scale, on the real docker-registry 2.8 with token auth.

    .venv/bin/python -m bench.cleanup             # benchmark 2: 303 owned tags, 3 repositories
    .venv/bin/python -m bench.scale               # benchmark 3: 10 vs 10,000 other tags (bench/scale.py)

The project (acme/shop, id 4711, in the GitLab emulator) has three registry repositories. The merged
branch `feature/bench` (MR !38, 50 commits) owns 101 tags in each: its branch tag `feature-bench`
and `:$SHA` + `:$SHORT_SHA` of each commit, one image per commit as CI pushes them. Unowned tags
share digests with owned ones the way CI makes them: `latest` is the branch's last image (it was
the default branch's build of the same tree), and a release tag `v0.9.0` is one of the branch's
early images. `main`, its SHA tags and `v1.2.0` have their own image.

GitLab's side (`setup_emulator`) is what a user's GitLab holds, built through the emulator's git and
pipeline model: main's history with a push pipeline per commit, the branch pushed one commit at a time
(a pipeline each), MR !38 opened before the last 10 pushes (merge request pipelines on
refs/merge-requests/38/head too), merged with a merge commit, main moved on to MAIN_SHA, the branch
deleted: 112 pipelines. Which commits the branch built is read from GitLab's pipelines API by the
cleanup itself; Redis is flushed before every trial (a fresh tagsweeper: the first sync reads the
whole record).

Each trial starts a fresh registry on a copy of the same seeded storage (cached under
.run/bench-cache/, see bench/README.md) and runs one of:

- tagsweeper registry mode (REGISTRY_MODE=registry, DELETE_CONCURRENCY=4), in-process `cleanup.run`;
- tagsweeper api mode, DELETE_CONCURRENCY=4 and =1 (one at a time);
- tagsweeper api mode, DELETE_CONCURRENCY=4, with the pipelines record synced before the measured
  cleanup (`api-c4-warm`: steady operation, where an earlier job of the project synced it);
- the seed-style script: `skopeo delete docker://…:TAG` in a loop over the same owned tags.

Requests are counted where they arrive: the emulator's request log (GitLab API and /jwt/auth) and
the registry's access log (only tagsweeper's own User-Agent in registry mode; in api mode the
registry calls are GitLab's, the emulator's, and shown apart); GitLab requests are also counted per
endpoint. Afterwards every repository is
listed: tags that should have stayed and are gone are "collateral" (the digest trap).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.common import (WORK, LoadSampler, RedisServer, Stack, add_tags, by_endpoint, cached_storage, machine,
                          median,
                          parallel_by_repo, save)

PROJECT_ID, PROJECT_PATH = 4711, "acme/shop"
BRANCH, SLUG = "feature/bench", "feature-bench"
REPO_NAMES = ("", "worker", "web")
REPOS = tuple(PROJECT_PATH + (f"/{n}" if n else "") for n in REPO_NAMES)
N_COMMITS = 50
COMMITS = [hashlib.sha1(f"bench-commit-{i}".encode()).hexdigest() for i in range(N_COMMITS)]
MAIN_SHA = hashlib.sha1(b"bench-main").hexdigest()
MR_IID = 38
N_MAIN_HISTORY = 50  # main's earlier commits, each built by a push pipeline
MAIN_HISTORY = [hashlib.sha1(f"bench-main-history-{i}".encode()).hexdigest() for i in range(N_MAIN_HISTORY)]
MR_PIPELINES = 10  # the branch's last pushes also ran a merge request pipeline (refs/merge-requests/38/head)
OWNED = [SLUG] + [t for c in COMMITS for t in (c, c[:8])]
UNOWNED = ["latest", "v0.9.0", "main", MAIN_SHA, MAIN_SHA[:8], "v1.2.0"]
TOKEN_USER = "tagsweeper"


def seed_branch(stack: Stack, other_tags: int = 0) -> None:
    """Push the branch's images (and main's) to every repository; then `other_tags` more tags
    spread over the repositories, each one PUT of main's manifest under a new name."""
    client = stack.emulator.registry_client
    per_repo = [other_tags // len(REPOS) + (1 if i < other_tags % len(REPOS) else 0) for i in range(len(REPOS))]

    def one(repo: str, extra: int):
        def go():
            for i, sha in enumerate(COMMITS):
                tags = [sha, sha[:8]]
                if i == N_COMMITS - 1:
                    tags += [SLUG, "latest"]
                if i == 3:
                    tags.append("v0.9.0")
                client.push_image(repo, tags, content=f"{repo}-commit-{i}")
            client.push_image(repo, ["main", MAIN_SHA, MAIN_SHA[:8], "v1.2.0"], content=f"{repo}-main")
            if extra:
                add_tags(stack, repo, {"main": [f"other-{repo.replace('/', '-')}-{k}" for k in range(extra)]})
        return go

    parallel_by_repo({repo: one(repo, n) for repo, n in zip(REPOS, per_repo)})


def setup_emulator(emu) -> dict:
    """GitLab's side as a user's GitLab has it, built through the emulator's git and pipeline model:
    main's history (N_MAIN_HISTORY commits, one push pipeline each), then `feature/bench` branched
    off it and pushed one commit at a time (a push pipeline per commit), MR !38 opened before the
    last MR_PIPELINES pushes (each of those also ran a merge request pipeline on
    refs/merge-requests/38/head), merged with a merge commit (main's pipeline on it), main moved on
    to MAIN_SHA (its pipeline) and the branch deleted. Pipelines are created in that order, a
    few minutes apart, ending an hour ago. Returns the pipelines by ref."""
    emu.reset()
    project = emu.add_project(PROJECT_ID, PROJECT_PATH, default_branch="main")
    total = N_MAIN_HISTORY + N_COMMITS + MR_PIPELINES + 2
    when = iter(_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1, minutes=7 * (total - k))
                for k in range(total))
    counts: dict[str, int] = {}

    def pipeline(sha: str, ref: str, **kw) -> None:
        project.add_pipeline(sha, ref, created_at=next(when), **kw)
        counts[ref] = counts.get(ref, 0) + 1

    for sha in MAIN_HISTORY:
        project.push("main", sha)
        pipeline(sha, "main")
    project.add_branch(BRANCH, COMMITS[0], from_branch="main")
    pipeline(COMMITS[0], BRANCH)
    for i, sha in enumerate(COMMITS[1:], 1):
        if i == N_COMMITS - MR_PIPELINES:
            project.add_merge_request(MR_IID, BRANCH, "main")  # its commits: the branch's, kept up to date
        project.push(BRANCH, sha)
        pipeline(sha, BRANCH)
        if i >= N_COMMITS - MR_PIPELINES:
            pipeline(sha, f"refs/merge-requests/{MR_IID}/head", source="merge_request_event")
    mr = project.merge(MR_IID, "merge")
    pipeline(mr.merge_commit_sha, "main")
    project.push("main", MAIN_SHA)
    pipeline(MAIN_SHA, "main")
    project.delete_branch(BRANCH)
    assert [c["id"] for c in mr.commits] == COMMITS, "the merge request's commits are the branch's"
    for name in REPO_NAMES:
        project.add_registry_repository(name)
    return counts


def storage(other_tags: int = 0) -> Path:
    return cached_storage(f"cleanup-{N_COMMITS}c-{other_tags}o", lambda st: seed_branch(st, other_tags))


def listing(stack: Stack) -> dict[str, set[str]]:
    client = stack.emulator.registry_client
    return {repo: set(client.tags(repo)) for repo in REPOS}


def check(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict:
    owned = set(OWNED)
    collateral = sorted(f"{r}:{t}" for r in REPOS for t in before[r] - owned - after[r])
    left = sorted(f"{r}:{t}" for r in REPOS for t in after[r] & owned)
    return {"collateral": len(collateral), "collateral_examples": collateral[:8], "owned_left": len(left),
            "owned_left_examples": left[:5]}


def run_tagsweeper(stack: Stack, redis_url: str, mode: str, concurrency: int, warm: bool = False) -> dict:
    """One cleanup of the branch. `warm`: the pipelines record was already synced (by an earlier job of
    the project, as in steady operation) before the measured cleanup; otherwise Redis is empty and the
    cleanup's sync reads the project's whole record."""
    from workers import cleanup, pipelines
    from workers.gitlab import GitLab
    from workers.common.settings import Settings

    emu = stack.emulator
    env = {"GITLAB_URL": emu.url, "GITLAB_TOKEN": emu.token, "REDIS_URL": redis_url, "REGISTRY_MODE": mode,
           "DELETE_CONCURRENCY": str(concurrency), "LOG_FORMAT": "json"}
    if mode == "registry":
        env["REGISTRY_URL"] = stack.registry.url
    settings = Settings.from_env(env)
    before = listing(stack)
    gitlab = GitLab.from_settings(settings)
    conn = redis.Redis.from_url(redis_url)
    if warm:
        pipelines.Record(conn, PROJECT_ID).sync(gitlab)
    emu.reset_requests()
    stack.registry.mark()
    request = cleanup.Request(project_id=PROJECT_ID, branch=BRANCH, trigger="merge", mr_iid=MR_IID,
                              project_path=PROJECT_PATH, target_project_id=PROJECT_ID, target_branch="main",
                              default_branch="main", shas=(COMMITS[-1],))
    started = time.perf_counter()
    report = cleanup.run(request, gitlab=gitlab, conn=conn, settings=settings)
    wall = time.perf_counter() - started
    gitlab.close()
    conn.close()
    gl_requests = emu.requests
    reg_all = stack.registry.requests()
    reg_mine = [r for r in reg_all if r[3].startswith("tagsweeper")]
    after = listing(stack)
    deleted = report["summary"]["deleted"]
    total = len(gl_requests) + len(reg_mine)
    by_kind: dict[str, int] = {}
    for method, path, _status, _ua in reg_mine:
        kind = f"{method} {'tag' if '/manifests/' in path and 'sha256:' not in path else 'digest' if 'sha256:' in path else path.split('/')[-2] if method != 'GET' else 'other'}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return {
        "wall_s": wall, "deleted": deleted, "summary": report["summary"],
        "gitlab_requests": len(gl_requests),
        "gitlab_by_endpoint": by_endpoint(gl_requests),
        "pipelines_in_gitlab": sum(len(p.pipelines) for p in emu.projects.values()),
        "gitlab_deletes": sum(1 for m, p, _ in gl_requests if m == "DELETE"),
        "registry_requests": len(reg_mine),
        "registry_requests_by_gitlab": len(reg_all) - len(reg_mine),
        "registry_by_kind": by_kind,
        "requests_per_deleted_tag": total / deleted if deleted else float("nan"),
        **check(before, after),
    }


def run_skopeo(stack: Stack, tags: list[str]) -> dict:
    emu = stack.emulator
    before = listing(stack)
    emu.reset_requests()
    stack.registry.mark()
    failures = 0
    started = time.perf_counter()
    for repo in REPOS:
        for tag in tags:
            r = subprocess.run(["skopeo", "delete", "--tls-verify=false", "--creds", f"{TOKEN_USER}:{emu.token}",
                                f"docker://{stack.registry.host}/{repo}:{tag}"], capture_output=True, text=True)
            if r.returncode:
                failures += 1  # the tag was already gone: an earlier delete of its digest took it
    wall = time.perf_counter() - started
    reg = stack.registry.requests()
    after = listing(stack)
    n = len(tags) * len(REPOS)
    return {"wall_s": wall, "invocations": n, "failed_invocations": failures,
            "gitlab_requests": len(emu.requests), "registry_requests": len(reg),
            "requests_per_tag": (len(reg) + len(emu.requests)) / n, **check(before, after)}


def trial(kind: str, golden: Path, emu, redis_url: str, n: int) -> dict:
    from tests.support.gitlab_emulator import GitLabEmulator  # noqa: F401

    workdir = WORK / "cleanup" / f"{kind}-{n}"
    if workdir.exists():
        shutil.rmtree(workdir)
    stack = Stack(workdir, storage_from=golden, emulator=emu)
    try:
        setup_emulator(emu)
        if kind == "skopeo":
            result = run_skopeo(stack, OWNED)
        else:
            mode, conc = {"registry": ("registry", 4), "api-c4": ("api", 4), "api-c1": ("api", 1),
                          "api-c4-warm": ("api", 4)}[kind]
            result = run_tagsweeper(stack, redis_url, mode, conc, warm=kind.endswith("-warm"))
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


TARGETS = {"api": 1.2, "registry": 2.2}  # requests per deleted tag (api: 1.1 until the pipelines record)
KINDS = ("registry", "api-c4", "api-c4-warm", "api-c1", "skopeo")


def main(argv: list[str] | None = None) -> int:
    from tests.support.gitlab_emulator import GitLabEmulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)

    golden = storage(0)
    work = WORK / "cleanup"
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work / "redis").start()
    emu = GitLabEmulator().start()
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        with LoadSampler() as sampler:
            for r in range(args.rounds):
                order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
                for kind in order:
                    redis.Redis.from_url(server.url).flushall()
                    res = trial(kind, golden, emu, server.url, r)
                    results[kind].append(res)
                    print(f"round {r + 1} {kind:11s} {res['wall_s']:7.2f} s  "
                          + (f"deleted {res['deleted']}  req/tag {res['requests_per_deleted_tag']:.3f} "
                             f"(gitlab {res['gitlab_requests']}, registry {res['registry_requests']})"
                             if kind != "skopeo" else
                             f"invocations {res['invocations']} failed {res['failed_invocations']}  "
                             f"registry requests {res['registry_requests']}")
                          + f"  collateral {res['collateral']}  owned left {res['owned_left']}", flush=True)
    finally:
        emu.stop()
        server.stop()
    summary = {k: {"wall_s_median": median([x["wall_s"] for x in v]), "last": v[-1]} for k, v in results.items()}
    print()
    if "skopeo" in summary and "registry" in summary:
        ratios = [s["wall_s"] / t["wall_s"] for s, t in zip(results["skopeo"], results["registry"])]
        summary["skopeo_over_registry"] = {"per_round": ratios, "median": median(ratios)}
        print(f"registry mode vs skopeo loop: {median(ratios):.1f}x faster (target >= 3x) per round {[round(x, 1) for x in ratios]}")
    if "api-c1" in summary and "api-c4" in summary:
        ratios = [s["wall_s"] / t["wall_s"] for s, t in zip(results["api-c1"], results["api-c4"])]
        summary["api_c1_over_c4"] = {"per_round": ratios, "median": median(ratios)}
        print(f"api mode, 4 at a time vs one at a time: {median(ratios):.1f}x faster")
    for k in ("api-c4", "api-c4-warm", "api-c1", "registry"):
        if k in summary:
            last = summary[k]["last"]
            target = TARGETS["api" if k.startswith("api") else "registry"]
            print(f"{k:11s} requests per deleted tag {last['requests_per_deleted_tag']:.3f} (target <= {target}) "
                  f"registry by kind {last['registry_by_kind']}")
            print(f"{'':11s} GitLab requests by endpoint: {last['gitlab_by_endpoint']}")
    if "skopeo" in summary:
        last = summary["skopeo"]["last"]
        print(f"skopeo destroyed {last['collateral']} tags it should not have: {last['collateral_examples']}")
    save("cleanup", {"machine": machine(), "load": sampler.summary(), "summary": summary, "runs": results,
                     "owned_tags": len(OWNED) * len(REPOS), "targets": TARGETS, "skopeo_ran": "skopeo" in summary,
                     "command": "python -m bench.cleanup " + " ".join(argv if argv is not None else sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
