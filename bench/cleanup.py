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
- the seed-style script: `skopeo delete docker://…:TAG` in a loop over the same owned tags;
- with 50 environments (`-env50` kinds: registry mode, api mode, api mode with the pipelines and
  deployments records synced first): the same cleanup with deployment protection deciding too
  (`Environments`: production, staging, the branch's own review app and 47 more review apps, a few
  dozen deployments each spread over the project's timeline, 26 available and 24 stopped). None
  keeps an owned tag (the branch's review app stopped when the branch was deleted; staging ran
  five of the branch's commits, long since replaced), so the deletions are the baseline's and
  what differs is what deciding on deployments costs.

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
import random
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
N_ENVIRONMENTS = 50  # the -env50 kinds: production, staging, review/feature-bench and 47 review apps
REVIEW_DEPLOYMENTS = 25  # deployments of each other review app
TOPIC_COMMITS = 8  # commits of each other review app's branch
STAGING_FROM_BRANCH = range(2, 7)  # the branch's commits staging ran (early: long since replaced)
BENCH_REVIEW = "review/feature-bench"


class Environments:
    """Environments and deployments as a busy project has them (`N_ENVIRONMENTS`), laid into the
    timeline `setup_emulator` builds: after each pipeline, what deployed then (a few seconds later).

    - `production` ("with_action"): every pipeline of main deploys it; one in ten fails;
    - `staging` ("with_action"): every pipeline of main, a topic branch's commit every fourth
      pipeline, and five early commits of feature/bench from its branch pipelines (long since
      replaced: staging's newest three are main's two last and a topic branch's at the end);
    - `review/feature-bench` (created by its first deploy job, "always"): the branch's last 10
      pushes; GitLab stops it when the branch is deleted;
    - `review/topic-N`, the rest: branch topic/N (TOPIC_COMMITS commits, pushed up front) deploys
      REVIEW_DEPLOYMENTS times, its newer commits later, one in ten failed, all the review apps'
      deployments interleaved over the timeline. Of every three: one is created by its deploy job
      and its branch deleted at the end (GitLab stops it); one is "with_action" and its branch
      deleted at the end (left running); one keeps its branch, and every other of those is stopped
      at the end.
    """

    def __init__(self, project, slots: int, count: int = N_ENVIRONMENTS):
        self.project = project
        self.rng = random.Random(f"bench-environments-{count}")
        for name in ("production", "staging"):
            project.add_environment(name, tier=name, auto_stop_setting="with_action")
        self.topics = []
        for i in range(count - 3):
            branch, env = f"topic/{i}", f"review/topic-{i}"
            project.add_branch(branch, from_branch="main")
            shas = [hashlib.sha1(f"bench-topic-{i}-{k}".encode()).hexdigest() for k in range(TOPIC_COMMITS)]
            for sha in shas:
                project.push(branch, sha)
            if i % 3 == 1:
                project.add_environment(env, auto_stop_setting="with_action")
            self.topics.append((branch, env, shas, i % 3))
        # The review apps' deployments, round-robin, so each one's spread over the whole timeline.
        self.queue = [(topic, k) for k in range(REVIEW_DEPLOYMENTS) for topic in self.topics]
        self.per_slot = -(-len(self.queue) // slots)
        self.pipelines = 0
        self.branch_pipelines = 0

    def deploy(self, env: str, ref: str, sha: str, at: _dt.datetime, failed: bool = False) -> None:
        self.project.deploy(env, ref=ref, sha=sha, status="failed" if failed else "success", at=at)

    def after_pipeline(self, sha: str, ref: str, at: _dt.datetime) -> None:
        """What deployed after the pipeline created at `at`."""
        tick = iter(at + _dt.timedelta(seconds=s) for s in range(1, 400))
        self.pipelines += 1
        if ref == "main":
            self.deploy("production", "main", sha, next(tick), failed=self.rng.random() < 0.1)
            self.deploy("staging", "main", sha, next(tick))
        elif self.pipelines % 4 == 0:
            branch, _env, shas, _kind = self.topics[self.pipelines % len(self.topics)]
            self.deploy("staging", branch, shas[-1], next(tick))
        if ref == BRANCH:
            self.branch_pipelines += 1
            if self.branch_pipelines - 1 in STAGING_FROM_BRANCH:
                self.deploy("staging", BRANCH, sha, next(tick))
            if self.branch_pipelines > N_COMMITS - 10:
                self.deploy(BENCH_REVIEW, BRANCH, sha, next(tick))
        for (branch, env, shas, _kind), k in self.queue[:self.per_slot]:
            sha = shas[min(k * TOPIC_COMMITS // REVIEW_DEPLOYMENTS, TOPIC_COMMITS - 1)]
            self.deploy(env, branch, sha, next(tick), failed=self.rng.random() < 0.1)
        del self.queue[:self.per_slot]

    def finish(self) -> dict:
        """Delete branches and stop environments as said above; return the environments' states."""
        assert not self.queue, "every review deployment was made"
        for branch, env, _shas, kind in self.topics:
            if kind in (0, 1):
                self.project.delete_branch(branch)  # GitLab stops the "always" ones (kind 0)
            elif int(branch.split("/")[1]) % 2:
                self.project.stop_environment(env)
        states: dict[str, int] = {}
        for env in self.project.environments.values():
            states[env.state] = states.get(env.state, 0) + 1
        return states


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


def setup_emulator(emu, environments: int = 0) -> dict:
    """GitLab's side as a user's GitLab has it, built through the emulator's git and pipeline model:
    main's history (N_MAIN_HISTORY commits, one push pipeline each), then `feature/bench` branched
    off it and pushed one commit at a time (a push pipeline per commit), MR !38 opened before the
    last MR_PIPELINES pushes (each of those also ran a merge request pipeline on
    refs/merge-requests/38/head), merged with a merge commit (main's pipeline on it), main moved on
    to MAIN_SHA (its pipeline) and the branch deleted. Pipelines are created in that order, a
    few minutes apart, ending an hour ago. With `environments`, the deployments of that many
    environments are laid into the same timeline (`Environments`). Returns the pipelines by ref
    (and the environments by state)."""
    emu.reset()
    project = emu.add_project(PROJECT_ID, PROJECT_PATH, default_branch="main")
    total = N_MAIN_HISTORY + N_COMMITS + MR_PIPELINES + 2
    when = iter(_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1, minutes=7 * (total - k))
                for k in range(total))
    counts: dict = {}
    envs = Environments(project, total, environments) if environments else None

    def pipeline(sha: str, ref: str, **kw) -> None:
        at = next(when)
        project.add_pipeline(sha, ref, created_at=at, **kw)
        counts[ref] = counts.get(ref, 0) + 1
        if envs is not None:
            envs.after_pipeline(sha, ref, at)

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
    if envs is not None:
        counts["environments"] = envs.finish()
        assert project.get_environment(BENCH_REVIEW).state == "stopped", "GitLab stopped the branch's review app"
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
    """One cleanup of the branch. `warm`: the pipelines and deployments records were already synced (by
    an earlier job of the project, as in steady operation) before the measured cleanup; otherwise
    Redis is empty and the cleanup's syncs read the project's whole records."""
    from workers import cleanup, deployments, pipelines
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
        deployments.Record(conn, PROJECT_ID).sync(gitlab)
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
        "environments_in_gitlab": sum(len(p.environments) for p in emu.projects.values()),
        "deployments_in_gitlab": sum(len(p.deployments) for p in emu.projects.values()),
        "kept_by_deployments": sum(1 for d in report.get("decisions", ())
                                   if d.get("decision") == "kept" and d.get("code") in DEPLOYMENT_CODES),
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
        counts = setup_emulator(emu, N_ENVIRONMENTS if "-env" in kind else 0)
        if kind == "skopeo":
            result = run_skopeo(stack, OWNED)
        else:
            base = kind.replace("-env50", "")
            mode, conc = {"registry": ("registry", 4), "api-c4": ("api", 4), "api-c1": ("api", 1),
                          "api-c4-warm": ("api", 4)}[base]
            result = run_tagsweeper(stack, redis_url, mode, conc, warm=base.endswith("-warm"))
            result["environments_by_state"] = counts.get("environments", {})
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


TARGETS = {"api": 1.2, "registry": 2.2}  # requests per deleted tag (api: 1.1 until the pipelines record)
KINDS = ("registry", "api-c4", "api-c4-warm", "api-c1", "skopeo",
         "registry-env50", "api-c4-env50", "api-c4-warm-env50")  # -env50: with N_ENVIRONMENTS environments
DEPLOYMENT_CODES = ("deployed", "deployed_ref", "rollback_target")  # rules.DEPLOYMENT_CODES


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
                    print(f"round {r + 1} {kind:17s} {res['wall_s']:7.2f} s  "
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
    for k in ("api-c4", "api-c4-warm", "api-c1", "registry", "api-c4-env50", "api-c4-warm-env50", "registry-env50"):
        if k in summary:
            last = summary[k]["last"]
            target = TARGETS["api" if k.startswith("api") else "registry"]
            print(f"{k:17s} requests per deleted tag {last['requests_per_deleted_tag']:.3f} (target <= {target}) "
                  f"registry by kind {last['registry_by_kind']}")
            print(f"{'':17s} GitLab requests by endpoint: {last['gitlab_by_endpoint']}")
    if "skopeo" in summary:
        last = summary["skopeo"]["last"]
        print(f"skopeo destroyed {last['collateral']} tags it should not have: {last['collateral_examples']}")
    save("cleanup", {"machine": machine(), "load": sampler.summary(), "summary": summary, "runs": results,
                     "owned_tags": len(OWNED) * len(REPOS), "targets": TARGETS, "skopeo_ran": "skopeo" in summary,
                     "command": "python -m bench.cleanup " + " ".join(argv if argv is not None else sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
