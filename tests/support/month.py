"""A month in the life of a busy GitLab project: the generator, the driver and the oracle.

What it models (everything is decided by one seed, so a failing month can be replayed):

- A project with default branch `main` and two registry repositories. Every pipeline is a CI
  job pushing one new image to both repositories, tagged `$CI_COMMIT_REF_SLUG`,
  `$CI_COMMIT_SHA` and `$CI_COMMIT_SHORT_SHA`; `main`'s pipelines also push `latest`, a tag
  pipeline also pushes the git tag's own name.
- Developers create branches from `main` (some stacked on another feature branch, whose merge
  request then targets the parent), push a few times (each push usually gets a pipeline),
  open merge requests (merge-request pipelines on `refs/merge-requests/<iid>/head`, sometimes
  merged-results pipelines on `/merge` with a temporary merge commit), and merge them with all
  four methods (merge commit, fast-forward, squash, squash + fast-forward), mostly removing the
  source branch. When a parent is merged and removed, GitLab retargets its children's merge
  requests. Some merge requests are closed and their branch deleted; some merged branches stay.
  Branch names collide by slug (`feature/x` and `feature-x` alive at once) and are re-used
  after a deletion. Releases tag `main`. Once a month somebody deletes 4+ branches in one
  push, which GitLab reports with no Push Hook at all.
- Environments and deployments: a pipeline's deploy job (after its build pushed the image, when
  it passed) deploys its commit from its ref. `production` (auto_stop_setting "with_action")
  gets most of `main`'s pipelines and some release tags', and is now and then rolled back
  (an older deployment's commit deployed again). A branch with an open merge request deploys
  its review app `review/$CI_COMMIT_REF_SLUG` from its branch pipelines (or merge-request
  pipelines), each review app one of three kinds: created by its deploy job ("always": GitLab
  stops it when the branch it last deployed from is deleted), stopped by its stop job when the
  merge request is merged or closed, or left running after the merge ("with_action") until
  somebody stops it, sometimes through `stopping`, and perhaps deletes it. `staging` gets a
  feature branch's pipeline now and then (branches that are deleted later). Some deployments
  fail or are canceled, some run across several events; old deployments are sometimes deleted.
  One Deployment Hook per status change (running, then success, failed or canceled).
- GitLab's deliveries of all that (Merge Request, Push, Tag Push, Pipeline and Deployment
  Hooks, one Pipeline or Deployment Hook per status change), each with its own
  Idempotency-Key; about one in ten is never sent, one in ten is sent twice (a "Resend": same
  key), and a few arrive late.
- tagsweeper's worker lags: it runs (`tagsweeper worker --burst`) only every 1 to 40 events,
  so cleanups decide late, after GitLab's state moved on. Its re-checks (IN_USE_RECHECK, a few
  seconds here) run in a later burst. At the end: one last burst, then one `tagsweeper sweep`.

With retention on (`MonthRun(keep_commits=N)`: the service runs with KEEP_COMMITS=N and
KEEP_COMMITS_MIN_AGE=0), a successful Pipeline Hook schedules a pass of its branch, run in a
later burst, and the month ends with the scheduled sweep job (a sweep, then a pass of every live
branch) instead of `tagsweeper sweep`; the oracle then lets a live branch's superseded commits go.

`generate(seed, scale)` is pure: it returns the month as a `Script` (steps, worker bursts) and
makes no call to anything. `MonthRun` plays a script against the GitLab emulator, the real
registry and the real service. `live_tags` is the oracle: which pushed tags must exist, from
the emulator's state and the run's own record of what CI pushed; it shares no code with
the product.

The checks run after every burst (deletions happen only in bursts, and GitLab's state does
not move during one): every live tag must be at the digest CI pushed last, unless it was dead
at a burst since that push and is gone (deleted legitimately then; a name can come alive
again, say a re-created branch, without CI pushing it again). A live tag deleted in a burst
where it was live is a violation, however often CI pushes it again later.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import redis
import requests
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from tests.support.payloads import deployment_hook_body, load_payload

ZERO = "0" * 40
METHODS = ("merge", "ff", "squash", "squash_ff")
REPOSITORIES = ("", "worker")  # the project's root repository and one more

# The default KEEP_DEPLOYMENTS, copied like PROTECTED_TAGS below.
KEEP_DEPLOYMENTS = 3
# The default PROTECTED_TAGS, copied (not imported): the oracle shares no code with the product.
PROTECTED = re.compile(r"latest|stable|v\d+(\.\d+)*([-+][0-9A-Za-z.-]+)?|\d+(\.\d+)+([-+][0-9A-Za-z.-]+)?")
SHA_SHAPED = re.compile(r"[0-9a-f]{8}|[0-9a-f]{40}")
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def slug(ref: str) -> str:
    """GitLab's CI_COMMIT_REF_SLUG: lower-case, anything outside a-z0-9 to '-', 63 chars, trim '-'."""
    return re.sub(r"[^a-z0-9]", "-", ref.lower())[:63].strip("-")


def review_environment(branch: str) -> str:
    """A branch's review app: `environment: review/$CI_COMMIT_REF_SLUG` (branches whose slugs
    collide share it)."""
    return f"review/{slug(branch)}"


# How a review app is made and stopped:
# - "auto": created by its first deploy job (auto_stop_setting "always"), deployed from branch
#   pipelines only; GitLab stops it when the branch it last deployed from is deleted;
# - "stop": "with_action", deployed from branch or merge-request pipelines; its stop job runs when
#   the merge request is merged or closed (sometimes through `stopping`);
# - "keep": "with_action", left running after the merge until somebody stops it.
REVIEW_POLICIES = ("auto", "stop", "keep")
RELEASE_ENVIRONMENTS = ("production", "staging")  # created at the start, "with_action"


# =====================================================================================
# The script: what happens in the month, as plain values
# =====================================================================================

@dataclass(frozen=True)
class Delivery:
    """One webhook delivery GitLab makes, and its fate on the way to tagsweeper."""

    hook: str   # "mr", "push", "tag_push", "pipeline", "deployment"
    what: str   # mr: open/merge/close/update; push: create/commits/delete; pipeline, deployment: its status
    fate: str   # "once", "dropped" (never sent), "twice" (a Resend, same key), "late"
    delay: int = 0  # late: sent this many events later; twice: the resend this many events later


@dataclass(frozen=True)
class DeploySpec:
    """The deploy job of a pipeline that passed: the pipeline's commit deployed from the pipeline's
    ref (a merge-request pipeline's is refs/merge-requests/<iid>/head or /merge) to `environment`.

    policy: how the environment is made and stopped (review apps; see REVIEW_POLICIES), "release"
    for production and staging (created at the start, "with_action"). status: where the
    deployment ends (success, failed, canceled). hooks: its Deployment Hooks, "running" first,
    then the final one, unless `later`: then it stays running until a `deploy_finish` step."""

    environment: str
    policy: str
    status: str
    hooks: tuple[Delivery, ...]
    later: bool = False


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline and the image its build job pushes.

    kind: "branch" (ref = the branch), "tag" (ref = the git tag), "mr" (ref = the source branch;
    GitLab lists refs/merge-requests/<iid>/head), "merged_results" (…/merge, on `temp_sha`).
    The commit is the ref's head when the pipeline is created, unless the step says otherwise."""

    kind: str
    ref: str
    status: str                       # the final status ("success" or "failed" after the push)
    hooks: tuple[Delivery, ...]       # one Pipeline Hook per status change, in order
    iid: int | None = None
    temp_sha: str | None = None
    deploy: DeploySpec | None = None


@dataclass(frozen=True)
class Step:
    """One event of the month. Which fields matter depends on `kind`:

    create (branch, parent) · push (branch, shas) · open (iid, branch, target) ·
    merge (iid, branch, target, method, remove_source, retargets; pipelines: the target's, at
    once) · target_pipeline (iid: the merge whose target head it builds, created late) ·
    close (iid) · delete (branch) · bulk_delete (names, no hook) ·
    release (tag) · hotfix (a push to main: branch, shas) · rebase (branch onto target: the
    branch re-made as target's head plus `shas`, a force push) ·
    deploy_finish (environment: its running deployment ends with `status`) · rollback
    (environment: the commit of its `back`-th newest successful deployment deployed again, from
    that deployment's ref) · stop_env (environment, to `state`) · delete_env (environment) ·
    delete_deployment (environment: its `back`-th newest successful deployment).
    merge and close: `environment` set is the review app its stop job stops (to `state`)."""

    kind: str
    branch: str | None = None
    parent: str | None = None
    target: str | None = None
    iid: int | None = None
    method: str | None = None
    remove_source: bool = False
    retargets: tuple[int, ...] = ()
    shas: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    tag: str | None = None
    pipelines: tuple[PipelineSpec, ...] = ()
    deliveries: tuple[Delivery, ...] = ()
    environment: str | None = None
    state: str | None = None
    status: str | None = None
    back: int | None = None

    def describe(self) -> str:
        bits = [self.kind]
        for name in ("branch", "parent", "target", "iid", "method", "tag", "environment", "state", "status", "back"):
            value = getattr(self, name)
            if value is not None:
                bits.append(f"{name}={value}")
        if self.kind == "merge":
            bits.append(f"remove_source={self.remove_source}")
        if self.retargets:
            bits.append(f"retargets={list(self.retargets)}")
        if self.shas:
            bits.append("shas=" + ",".join(s[:8] for s in self.shas))
        if self.names:
            bits.append(f"names={list(self.names)}")
        return " ".join(bits)


@dataclass(frozen=True)
class Scale:
    events: int        # world events in the month (worker bursts come on top)
    branches: int      # feature branches created (about: at an even pace)
    live: int          # feature branches alive at once, at most
    releases: int
    bulk_deletes: int


SCALES = {
    # CI: ~45 branches, ~25 merges, 10-15 worker bursts; 60-90 s a month on two cores.
    "ci": Scale(events=260, branches=40, live=10, releases=2, bulk_deletes=1),
    # By hand: ~120 branches, ~80 merges, ~35 worker bursts.
    "full": Scale(events=740, branches=110, live=22, releases=5, bulk_deletes=2),
}


@dataclass(frozen=True)
class Script:
    seed: int
    scale: str
    steps: tuple[Step, ...]
    bursts: frozenset[int]  # a worker burst runs right after these step indices

    def coverage(self) -> Counter:
        """What the month exercises, recomputed from the steps themselves (not the generator's
        bookkeeping): merge methods, stacked merge requests, slug collisions between live
        branches, re-used names, releases, bulk deletes, delivery fates."""
        seen: Counter = Counter()
        live: dict[str, str] = {}  # branch -> parent
        ever: set[str] = set()
        mrs: dict[int, tuple[str, str]] = {}
        policy: dict[str, str] = {}  # review app -> its kind, as its deploy jobs say
        for step in self.steps:
            if step.kind == "create":
                if step.branch in ever:
                    seen["reused_name"] += 1
                if any(slug(b) == slug(step.branch) for b in live):
                    seen["slug_collision"] += 1
                live[step.branch] = step.parent
                ever.add(step.branch)
                if step.parent != "main":
                    seen["stacked_branch"] += 1
            elif step.kind == "open":
                mrs[step.iid] = (step.branch, step.target)
                if step.target != "main":
                    seen["stacked_mr"] += 1
            elif step.kind == "merge":
                seen[f"method:{step.method}"] += 1
                seen["merge"] += 1
                if step.retargets:
                    seen["retarget_on_merge"] += 1
                if step.remove_source:
                    live.pop(step.branch, None)
                    if policy.get(review_environment(step.branch)) == "keep":
                        seen["review:left_running"] += 1  # merged and removed, its review app still up
                    elif policy.get(review_environment(step.branch)) == "auto":
                        seen["review:auto_stopped"] += 1  # GitLab stops it with the branch
                if step.environment:
                    seen["review:stopped_on_merge"] += 1
                    seen[f"stop:{step.state}"] += 1
            elif step.kind == "delete":
                live.pop(step.branch, None)
            elif step.kind == "bulk_delete":
                seen["bulk_delete"] += 1
                for name in step.names:
                    live.pop(name, None)
            elif step.kind in ("release", "close", "hotfix", "rebase", "rollback", "delete_env",
                               "delete_deployment"):
                seen[step.kind] += 1
            elif step.kind == "stop_env":
                seen["stop_env"] += 1
                seen[f"stop:{step.state}"] += 1
            elif step.kind == "deploy_finish":
                seen[f"deploy:{step.status}"] += 1
            if step.kind == "delete_env":
                policy.pop(step.environment, None)
            for spec in step.pipelines:
                seen[f"pipeline:{spec.kind}"] += 1
                d = spec.deploy
                if d is not None:
                    kind = d.environment.split("/")[0]
                    seen[f"deploy:{kind}"] += 1
                    seen["deploy:later" if d.later else f"deploy:{d.status}"] += 1
                    if kind == "review":
                        policy.setdefault(d.environment, d.policy)
                        seen[f"review:{d.policy}"] += 1
                        if spec.kind != "branch":
                            seen["deploy:mr_ref"] += 1
            for d in self.deliveries_of(step):
                seen[f"fate:{d.fate}"] += 1
        seen["branches"] = len([s for s in self.steps if s.kind == "create"])
        shorts = Counter(sha[:8] for sha in {sha for s in self.steps for sha in s.shas})
        seen["short_sha_clash"] = sum(1 for n in shorts.values() if n > 1)
        return seen

    @staticmethod
    def deliveries_of(step: Step) -> list[Delivery]:
        return [*step.deliveries, *(d for spec in step.pipelines for d in spec.hooks),
                *(d for spec in step.pipelines if spec.deploy for d in spec.deploy.hooks)]


# -------------------------------------------------------------------------------------
# The generator
# -------------------------------------------------------------------------------------

WORDS = ("checkout", "cart", "login", "search", "payments", "invoice", "api-v2", "cache", "docker",
         "metrics", "i18n", "onboarding", "profile", "billing", "export", "import", "dashboard",
         "notifications", "webhooks", "sso", "rate-limit", "pricing", "audit-log", "reports",
         "ui-refresh", "deps", "ci-speedup", "refunds", "coupons", "shipping", "Tax_Rules", "Search-V3")
PREFIXES = ("feature/", "feature/", "fix/", "chore/", "feat-", "bugfix/", "Feature/", "hotfix/",
            "JIRA-{n}-", "{user}/")
USERS = ("dana", "lee", "kim", "sam", "Alex.M")
# Long names: their slug is cut to 63 characters (and stripped of a trailing '-').
LONG = ("renovate/major-frontend-dependencies-react-and-react-dom-to-v19-{n}",
        "dependabot/npm_and_yarn/frontend/webpack-dev-middleware-5.3.4-{n}")


@dataclass
class _Branch:
    parent: str
    commits: int = 0        # own commits pushed since its last merge (none: nothing to merge)
    mr: int | None = None   # its open merge request
    merged: bool = False
    # The version of each branch whose head this branch contains: a fast-forward merge needs the
    # target's current head in the source (else GitLab asks for a rebase first).
    base: dict[str, int] = field(default_factory=dict)


@dataclass
class _MR:
    source: str
    target: str
    state: str = "opened"


@dataclass
class _Env:
    """What the generator knows of an environment (GitLab's own state is read back by the driver)."""
    policy: str                 # REVIEW_POLICIES, or "release"
    state: str = "available"
    last_ref: str | None = None  # the branch its last successful deployment came from (None: another ref)
    successes: int = 0
    busy: bool = False           # a deployment is running; a `deploy_finish` step ends it


class _Generator:
    """Builds the month step by step from a tiny model of the project (names and states only:
    commit SHAs of merges are GitLab's, the driver reads them back)."""

    def __init__(self, seed: int, scale: Scale):
        self.rng = random.Random(f"tagsweeper-month-{seed}")
        self.scale = scale
        self.steps: list[Step] = []
        self.live: dict[str, _Branch] = {}
        self.mrs: dict[int, _MR] = {}
        self.gone: list[str] = []            # deleted names, for re-use
        self.ever: set[str] = set()
        self.created = 0
        self.next_iid = 1
        self.shas: list[str] = []
        self.release_no = 0
        self.deferred: list[tuple[int, int]] = []  # (due step, merge iid): late target pipelines
        # (due step, kind, environment, status, branch): a deployment that ends late ("finish":
        # its final status, and the branch it deploys from or ""), a stop that ends late ("stopped").
        self.env_deferred: list[tuple[int, str, str, str, str]] = []
        self.envs: dict[str, _Env] = {name: _Env("release") for name in RELEASE_ENVIRONMENTS}
        self.version: Counter = Counter()  # branch name -> how often its head moved (or it was re-created)
        # Coverage made certain rather than likely (every CI seed must show each of these):
        self.methods: list[str] = self.rng.sample(METHODS, len(METHODS))  # dealt first, then random
        self.policies: list[str] = self.rng.sample(REVIEW_POLICIES, len(REVIEW_POLICIES))  # likewise
        n = scale.events
        self.release_at = sorted(self.rng.sample(range(n // 8, n - 10), scale.releases))
        self.bulk_at = sorted(self.rng.sample(range(n // 3, n - 25), scale.bulk_deletes))
        self.stacked_by = n // 4      # a stacked branch exists by then
        self.collide_by = n // 3      # a slug collision by then
        self.reuse_by = n // 2        # a re-used name by then
        self.rollback_by = n // 2     # a rollback of production by then
        # In about a third of the months two commits share a short SHA (`:abcd1234` is then both's).
        self.short_clash_at = self.rng.randrange(n // 4, n // 2) if self.chance(0.35) else -1

    # -- randomness helpers ----------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def sha(self) -> str:
        """A new commit SHA; in some months one shares its short SHA with an older commit."""
        if self.shas and 0 <= self.short_clash_at <= len(self.steps):
            self.short_clash_at = -1
            value = self.rng.choice(self.shas)[:8] + "%032x" % self.rng.getrandbits(128)
        else:
            value = "%040x" % self.rng.getrandbits(160)
        self.shas.append(value)
        return value

    def fate(self) -> Delivery:
        r = self.rng.random()
        if r < 0.10:
            return Delivery("", "", "dropped")
        if r < 0.20:
            return Delivery("", "", "twice", self.rng.randint(0, 8))
        if r < 0.26:
            return Delivery("", "", "late", self.rng.randint(1, 6))
        return Delivery("", "", "once")

    def delivery(self, hook: str, what: str) -> Delivery:
        return replace(self.fate(), hook=hook, what=what)

    def pipeline(self, kind: str, ref: str, iid: int | None = None) -> PipelineSpec:
        status = "failed" if self.chance(0.1) else "success"  # the image was pushed before tests failed
        r = self.rng.random()
        changes = (status,) if r < 0.25 else ("running", status) if r < 0.85 else ("pending", "running", status)
        temp = "%040x" % self.rng.getrandbits(160) if kind == "merged_results" else None
        deploy = self.deploy_job(kind, ref) if status == "success" else None
        return PipelineSpec(kind, ref, status, tuple(self.delivery("pipeline", s) for s in changes), iid, temp,
                            deploy)

    # -- environments ------------------------------------------------------------------------
    def deploy_job(self, kind: str, ref: str) -> DeploySpec | None:
        """Whether the pipeline that passed deploys, and where: production for most of main's
        pipelines and some release tags', a review app for a branch with an open merge request,
        staging for a feature branch now and then."""
        policy = "release"
        if kind == "tag":
            name = "production" if self.chance(0.3) else None
        elif ref == "main":
            name = "production" if kind == "branch" and self.chance(0.6) else None
        elif ref in self.live and self.chance(0.06):
            name = "staging"
        elif ref in self.live and self.live[ref].mr is not None and self.chance(0.55):
            name = review_environment(ref)
            env = self.envs.get(name)
            policy = env.policy if env is not None else \
                self.policies[-1] if self.policies else self.rng.choice(REVIEW_POLICIES)
            if policy == "auto" and kind != "branch":
                return None  # an "always" review app is deployed from its branch's pipelines only
            if env is None and self.policies:
                self.policies.pop()
        else:
            name = None
        if name is None or (name in self.envs and self.envs[name].busy):
            return None  # a running deployment holds the environment (resource_group): no other starts
        env = self.envs.setdefault(name, _Env(policy))
        r = self.rng.random()
        status = "success" if r < 0.82 else "failed" if r < 0.94 else "canceled"
        later = self.chance(0.15)
        hooks = (self.delivery("deployment", "running"),)
        if later:
            env.busy = True
            self.env_deferred.append((len(self.steps) + self.rng.randint(1, 6), "finish", name, status,
                                      ref if kind == "branch" else ""))
        else:
            hooks += (self.delivery("deployment", status),)
            self.deployed(name, status, ref if kind == "branch" else None)
        return DeploySpec(name, env.policy, status, hooks, later)

    def deployed(self, name: str, status: str, ref: str | None) -> None:
        env = self.envs[name]
        env.busy = False
        if status == "success":
            env.successes += 1
            env.last_ref = ref
            env.state = "available"  # a successful deployment starts a stopped environment again

    def branch_deleted(self, branch: str) -> None:
        """GitLab stops the "always" environments whose last successful deployment came from it."""
        for env in self.envs.values():
            if env.policy == "auto" and env.state == "available" and env.last_ref == branch:
                env.state = "stopped"

    def stop_on_merge(self, branch: str) -> tuple[str | None, str | None]:
        """The review app whose stop job runs when `branch`'s merge request is merged or closed."""
        name = review_environment(branch)
        env = self.envs.get(name)
        if env is None or env.policy != "stop" or env.state != "available" or env.busy:
            return None, None
        return name, self.stop(name)

    def stop(self, name: str) -> str:
        state = "stopping" if self.chance(0.3) else "stopped"
        self.envs[name].state = state
        if state == "stopping":
            self.env_deferred.append((len(self.steps) + self.rng.randint(1, 8), "stopped", name, "", ""))
        return state

    def env_due(self) -> bool:
        """The environment event due now, if any: a late deployment's end or a late stop."""
        i = len(self.steps)
        for item in sorted(self.env_deferred):
            if item[0] > i:
                break
            self.env_deferred.remove(item)
            _due, what, name, status, branch = item
            if what == "finish":
                self.deployed(name, status, branch or None)
                self.steps.append(Step("deploy_finish", environment=name, status=status,
                                       deliveries=(self.delivery("deployment", status),)))
                return True
            if what == "stopped" and self.envs.get(name) and self.envs[name].state == "stopping":
                self.envs[name].state = "stopped"
                self.steps.append(Step("stop_env", environment=name, state="stopped"))
                return True
        return False

    def rollback(self) -> None:
        """Production runs an older release again (GitLab's Rollback: the old deployment's job re-run)."""
        env = self.envs["production"]
        back = self.rng.randint(2, min(4, env.successes))
        status = "success" if self.chance(0.9) else "failed"
        if status == "success":
            env.successes += 1
        self.steps.append(Step("rollback", environment="production", back=back, status=status,
                               deliveries=(self.delivery("deployment", "running"), self.delivery("deployment", status))))

    def can_roll_back(self) -> bool:
        env = self.envs["production"]
        return env.successes >= 2 and not env.busy

    def stoppable(self) -> list[str]:
        """Review apps left running that somebody may stop."""
        return [n for n, e in sorted(self.envs.items())
                if e.policy == "keep" and e.state == "available" and not e.busy]

    def stop_review(self) -> None:
        name = self.rng.choice(self.stoppable())
        self.steps.append(Step("stop_env", environment=name, state=self.stop(name)))

    def deletable_envs(self) -> list[str]:
        return [n for n, e in sorted(self.envs.items())
                if e.policy != "release" and e.state == "stopped" and not e.busy]

    def delete_env(self) -> None:
        name = self.rng.choice(self.deletable_envs())
        del self.envs[name]
        self.steps.append(Step("delete_env", environment=name))

    def old_deployments(self) -> list[str]:
        return [n for n in RELEASE_ENVIRONMENTS if self.envs[n].successes >= 5 and not self.envs[n].busy]

    def delete_deployment(self) -> None:
        """Somebody deletes an old deployment (never the one the environment runs: GitLab refuses)."""
        name = self.rng.choice(self.old_deployments())
        self.envs[name].successes -= 1
        self.steps.append(Step("delete_deployment", environment=name, back=self.rng.randint(2, 5)))

    # -- names -------------------------------------------------------------------------
    def fresh_name(self) -> str:
        while True:
            if self.chance(0.04):
                name = self.rng.choice(LONG).format(n=self.rng.randint(1, 999))
            else:
                prefix = self.rng.choice(PREFIXES).format(n=self.rng.randint(100, 9999), user=self.rng.choice(USERS))
                name = f"{prefix}{self.rng.choice(WORDS)}"
                if self.chance(0.5):
                    name += f"-{self.rng.randint(2, 99)}"
            if self.usable(name):
                return name

    def usable(self, name: str) -> bool:
        return (name not in self.live and name != "main" and name not in self.ever
                and not SHA_SHAPED.fullmatch(name) and not SHA_SHAPED.fullmatch(slug(name)))

    def colliding_name(self) -> str | None:
        """Another spelling of a live branch's slug: feature/x next to feature-x or Feature/X."""
        for base in self.rng.sample(sorted(self.live), len(self.live)):
            for other in (base.replace("/", "-"), base.replace("-", "/", 1), base.upper(), base.replace("/", "_")):
                if other != base and slug(other) == slug(base) and other not in self.live \
                        and not SHA_SHAPED.fullmatch(other):
                    return other
        return None

    # -- the month ---------------------------------------------------------------------
    def run(self) -> list[Step]:
        while len(self.steps) < self.scale.events:
            i = len(self.steps)
            due = [d for d in self.deferred if d[0] <= i]
            if due:
                self.deferred.remove(due[0])
                self.target_pipeline(due[0][1])
            elif self.env_due():
                pass
            elif i >= self.rollback_by and self.can_roll_back() and not self._count("rollback"):
                self.rollback()
            elif self.release_at and i >= self.release_at[0]:
                self.release_at.pop(0)
                self.release()
            elif self.bulk_at and i >= self.bulk_at[0] and self.bulk_delete():
                self.bulk_at.pop(0)
            else:
                self.pick()
        return self.steps

    def pick(self) -> None:
        feature = sorted(self.live)
        open_mrs = sorted(i for i, m in self.mrs.items() if m.state == "opened")
        # Branches are created at an even pace over the month, so its end is as busy as its start.
        paced = self.scale.branches * (len(self.steps) + self.scale.events // 10) / self.scale.events
        can_create = len(self.live) < self.scale.live and (self.created < paced or len(self.live) < 2)
        mergeable = [i for i in open_mrs if self.live[self.mrs[i].source].commits > 0]
        without_mr = [b for b in feature if self.live[b].mr is None and self.live[b].commits > 0]
        options = [
            (3.0 if can_create else 0.0, self.create),
            (4.5 if feature else 0.0, self.push),
            (1.8 if without_mr else 0.0, self.open_mr),
            (1.8 if mergeable else 0.0, self.merge),
            (0.5 if open_mrs else 0.0, self.close),
            (0.7 if self.deletable() else 0.0, self.delete),
            (0.12 if self.can_roll_back() else 0.0, self.rollback),
            (0.25 if self.stoppable() else 0.0, self.stop_review),
            (0.08 if self.deletable_envs() else 0.0, self.delete_env),
            (0.05 if self.old_deployments() else 0.0, self.delete_deployment),
            (0.1, self.hotfix),
        ]
        total = sum(w for w, _ in options)
        r = self.rng.random() * total
        for weight, action in options:
            if r < weight:
                action()
                return
            r -= weight
        options[-1][1]()

    def deletable(self) -> list[str]:
        """Branches someone may delete by hand: no open merge request from or into them."""
        targets = {m.target for m in self.mrs.values() if m.state == "opened"}
        return [b for b, s in sorted(self.live.items()) if s.mr is None and b not in targets]

    # -- actions -------------------------------------------------------------------------
    def create(self) -> None:
        i = len(self.steps)
        name = None
        if i >= self.collide_by // 2 and (self.chance(0.12) or i >= self.collide_by and not self.collided()):
            name = self.colliding_name()
        if name is None and self.gone and (self.chance(0.12) or i >= self.reuse_by and not self.reused()):
            candidates = [g for g in self.gone if g not in self.live]
            name = self.rng.choice(candidates) if candidates else None
        name = name or self.fresh_name()
        stacked_ok = [b for b, s in self.live.items() if s.commits > 0 and not s.merged]
        stacked = stacked_ok and (self.chance(0.15) or (i >= self.stacked_by and not self.stacked()))
        parent = self.rng.choice(sorted(stacked_ok)) if stacked else "main"
        base = dict(self.live[parent].base) if parent in self.live else {}
        base[parent] = self.version[parent]
        self.version[name] += 1
        self.live[name] = _Branch(parent=parent, base=base)
        self.ever.add(name)
        if name in self.gone:
            self.gone.remove(name)
        self.created += 1
        # Creating a branch is a push (GitLab: a Push Hook, before = 40 zeros); CI often builds it at once,
        # on the commit it was created from.
        pipelines = (self.pipeline("branch", name),) if self.chance(0.5) else ()
        self.steps.append(Step("create", branch=name, parent=parent, pipelines=pipelines,
                               deliveries=(self.delivery("push", "create"),)))

    def collided(self) -> bool:
        return self._count("slug_collision") > 0

    def reused(self) -> bool:
        return self._count("reused_name") > 0

    def stacked(self) -> bool:
        return self._count("stacked_branch") > 0

    def _count(self, what: str) -> int:
        return Script(0, "", tuple(self.steps), frozenset()).coverage()[what]

    def push(self, branch: str | None = None) -> None:
        branch = branch or self.rng.choice(sorted(self.live))
        state = self.live[branch]
        shas = tuple(self.sha() for _ in range(self.rng.choice((1, 1, 1, 2, 3))))
        state.commits += len(shas)
        self.version[branch] += 1
        self.steps.append(Step("push", branch=branch, shas=shas, pipelines=self.push_pipelines(branch),
                               deliveries=(self.delivery("push", "commits"),)))

    def push_pipelines(self, branch: str) -> tuple[PipelineSpec, ...]:
        state = self.live[branch]
        pipelines: list[PipelineSpec] = []
        r = self.rng.random()
        if state.mr is None:
            if r < 0.85:
                pipelines.append(self.pipeline("branch", branch))
        else:
            # With an open merge request, CI runs a merge-request pipeline, a branch pipeline, both, or none.
            if r < 0.5 or 0.7 <= r < 0.85:
                pipelines.append(self.pipeline("mr", branch, state.mr))
                if self.chance(0.2):
                    pipelines.append(self.pipeline("merged_results", branch, state.mr))
            if 0.5 <= r < 0.85:
                pipelines.append(self.pipeline("branch", branch))
        return tuple(pipelines)

    def rebase(self, branch: str, onto: str) -> None:
        """GitLab's Rebase button: the branch's commits re-made on the target's head (new SHAs), a
        force push (one Push Hook), and CI runs again."""
        state = self.live[branch]
        shas = tuple(self.sha() for _ in range(max(1, min(state.commits, 3))))
        state.base = dict(self.live[onto].base) if onto in self.live else {}
        state.base[onto] = self.version[onto]
        self.version[branch] += 1
        self.steps.append(Step("rebase", branch=branch, target=onto, shas=shas,
                               pipelines=self.push_pipelines(branch),
                               deliveries=(self.delivery("push", "commits"),)))

    def open_mr(self) -> None:
        ready = [b for b in sorted(self.live) if self.live[b].mr is None and self.live[b].commits]
        # Stacked branches get their merge request early, while the parent is still there to target.
        stacked = [b for b in ready if self.live[b].parent in self.live and not self.live[self.live[b].parent].merged]
        branch = self.rng.choice(stacked if stacked and self.chance(0.7) else ready)
        state = self.live[branch]
        target = state.parent if state.parent in self.live and not self.live[state.parent].merged else "main"
        iid = self.next_iid
        self.next_iid += 1
        state.mr = iid
        self.mrs[iid] = _MR(branch, target)
        pipelines = []
        if self.chance(0.7):
            pipelines.append(self.pipeline("mr", branch, iid))
            if self.chance(0.25):
                pipelines.append(self.pipeline("merged_results", branch, iid))
        self.steps.append(Step("open", branch=branch, target=target, iid=iid, pipelines=tuple(pipelines),
                               deliveries=(self.delivery("mr", "open"),)))

    def merge(self) -> None:
        ready = [i for i, m in sorted(self.mrs.items()) if m.state == "opened" and self.live[m.source].commits > 0]
        targets = {m.target for m in self.mrs.values() if m.state == "opened"}
        sources = {m.source for m in self.mrs.values() if m.state == "opened"}
        waiting = {b.parent for b in self.live.values() if b.mr is None and b.parent != "main"}

        def weight(i: int) -> float:
            m = self.mrs[i]
            if m.source in targets:
                return 4.0   # a stack is merged from the bottom: the parent first (GitLab then retargets)
            if m.target in sources:
                return 0.25  # a child waits for its parent
            if m.source in waiting:
                return 0.2   # and a parent, rarely, for a child that has no merge request yet
            return 1.0
        iid = self.rng.choices(ready, weights=[weight(i) for i in ready])[0]
        mr = self.mrs[iid]
        method = self.methods.pop() if self.methods else self.rng.choice(METHODS)
        src = self.live[mr.source]
        if method in ("ff", "squash_ff") and src.base.get(mr.target) != self.version[mr.target]:
            self.rebase(mr.source, mr.target)  # the target moved on: fast-forward needs a rebase first
        remove = self.chance(0.8)
        mr.state = "merged"
        src.mr, src.merged, src.commits = None, True, 0
        self.version[mr.target] += 1
        deliveries = [self.delivery("mr", "merge")]
        retargets: tuple[int, ...] = ()
        if remove:
            del self.live[mr.source]
            self.gone.append(mr.source)
            self.branch_deleted(mr.source)
            deliveries.append(self.delivery("push", "delete"))
            # GitLab retargets the merge requests that targeted the removed branch to its target.
            retargets = tuple(i for i, m in sorted(self.mrs.items()) if m.state == "opened" and m.target == mr.source)
            for child in retargets:
                self.mrs[child].target = mr.target
                deliveries.append(self.delivery("mr", "update"))
        # The target branch's pipeline on its new head: at once, a few events later, or never ([ci skip]).
        pipelines: tuple[PipelineSpec, ...] = ()
        r = self.rng.random()
        if r < 0.7:
            pipelines = (self.pipeline("branch", mr.target),)
        elif r < 0.95:
            self.deferred.append((len(self.steps) + self.rng.randint(1, 5), iid))
        stopped, state = self.stop_on_merge(mr.source)
        self.steps.append(Step("merge", branch=mr.source, target=mr.target, iid=iid, method=method,
                               remove_source=remove, retargets=retargets, pipelines=pipelines,
                               deliveries=tuple(deliveries), environment=stopped, state=state))

    def target_pipeline(self, iid: int) -> None:
        self.steps.append(Step("target_pipeline", iid=iid, target=self.mrs[iid].target,
                               pipelines=(self.pipeline("branch", self.mrs[iid].target),)))

    def close(self) -> None:
        iid = self.rng.choice([i for i, m in sorted(self.mrs.items()) if m.state == "opened"])
        self.mrs[iid].state = "closed"
        self.live[self.mrs[iid].source].mr = None
        stopped, state = self.stop_on_merge(self.mrs[iid].source)
        self.steps.append(Step("close", iid=iid, branch=self.mrs[iid].source,
                               deliveries=(self.delivery("mr", "close"),), environment=stopped, state=state))

    def delete(self) -> None:
        branch = self.rng.choice(self.deletable())
        del self.live[branch]
        self.gone.append(branch)
        self.branch_deleted(branch)
        self.steps.append(Step("delete", branch=branch, deliveries=(self.delivery("push", "delete"),)))

    def bulk_delete(self) -> bool:
        """4+ branches in one push: GitLab sends no Push Hook at all (push_event_hooks_limit)."""
        candidates = self.deletable()
        if len(candidates) < 4:
            # Nobody cleaned up lately: somebody's experiments pile up first.
            self.create()
            return False
        names = tuple(sorted(self.rng.sample(candidates, min(len(candidates), self.rng.randint(4, 6)))))
        for name in names:
            del self.live[name]
            self.gone.append(name)
            self.branch_deleted(name)
        self.steps.append(Step("bulk_delete", names=names))
        return True

    def release(self) -> None:
        self.release_no += 1
        if self.chance(0.3):
            tag = f"release/2025.{self.release_no:02d}"  # not a valid image tag: CI pushes only its slug
        else:
            tag = f"v1.{self.release_no + 3}.{self.rng.randint(0, 2)}"
        self.steps.append(Step("release", tag=tag, pipelines=(self.pipeline("tag", tag),),
                               deliveries=(self.delivery("tag_push", "create"),)))

    def hotfix(self) -> None:
        """Someone pushes to main directly."""
        self.version["main"] += 1
        self.steps.append(Step("hotfix", branch="main", shas=(self.sha(),),
                               pipelines=(self.pipeline("branch", "main"),),
                               deliveries=(self.delivery("push", "commits"),)))


def silent(script: Script) -> Script:
    """The same history with no delivery ever arriving and no worker running: the project as
    tagsweeper finds it on the day it is installed (every project is one)."""
    def quiet(step: Step) -> Step:
        def drop(hooks: tuple[Delivery, ...]) -> tuple[Delivery, ...]:
            return tuple(replace(h, fate="dropped", delay=0) for h in hooks)

        return replace(step, deliveries=drop(step.deliveries),
                       pipelines=tuple(replace(p, hooks=drop(p.hooks),
                                               deploy=p.deploy and replace(p.deploy, hooks=drop(p.deploy.hooks)))
                                       for p in step.pipelines))
    return replace(script, steps=tuple(quiet(s) for s in script.steps), bursts=frozenset())


def generate(seed: int, scale: str = "ci") -> Script:
    """The month for `seed`: the same seed gives the same script, always."""
    gen = _Generator(seed, SCALES[scale])
    steps = gen.run()
    # The worker runs every k events, k from 1 to 40 (and once more at the end, then the sweep).
    rng = random.Random(f"tagsweeper-month-bursts-{seed}")
    bursts, i = set(), -1
    while True:
        i += rng.randint(1, 40)
        if i >= len(steps) - 1:
            break
        bursts.add(i)
    return Script(seed, scale, tuple(steps), frozenset(bursts))


# =====================================================================================
# Deliveries: GitLab's payloads, built from the example deliveries in tests/payloads
# =====================================================================================

STATE_IDS = {"opened": 1, "closed": 2, "merged": 3, "locked": 4}


class Payloads:
    """The bodies GitLab sends for one project, filled from the example deliveries."""

    def __init__(self, project, base_url: str = "https://gitlab.example.com"):
        self.project = project
        self.base = base_url

    def _project(self, obj: dict) -> dict:
        p = self.project
        ns = p.path.rsplit("/", 1)[0]
        obj.update(id=p.id, name=p.name, namespace=ns, path_with_namespace=p.path, default_branch="main",
                   web_url=f"{self.base}/{p.path}")
        urls = {"homepage": f"{self.base}/{p.path}", "git_ssh_url": f"git@gitlab.example.com:{p.path}.git",
                "git_http_url": f"{self.base}/{p.path}.git"}
        urls.update(url=urls["git_ssh_url"], ssh_url=urls["git_ssh_url"], http_url=urls["git_http_url"])
        obj.update({k: v for k, v in urls.items() if k in obj})
        return obj

    def _commit(self, sha: str, title: str = "A commit") -> dict:
        return {"id": sha, "message": title + "\n", "title": title, "timestamp": "2026-10-03T13:40:00+00:00",
                "url": f"{self.base}/{self.project.path}/-/commit/{sha}",
                "author": {"name": "Dana Developer", "email": "[redacted]"}}

    def merge_request(self, mr, action: str, *, previous_target: str | None = None) -> dict:
        """Merge Request Hook for `action` (open, update, close, merge) of the MR as it is now."""
        body = load_payload("merge_request_merge.json" if action == "merge" else "merge_request_close.json")
        self._project(body["project"])
        attrs = body["object_attributes"]
        for side in ("source", "target"):
            self._project(attrs[side])
        state = {"open": "opened", "update": "opened", "close": "closed", "merge": "merged"}[action]
        attrs.update(
            id=mr.id, iid=mr.iid, title=mr.title, action=action, state=state, state_id=STATE_IDS[state],
            source_branch=mr.source_branch, target_branch=mr.target_branch,
            source_project_id=mr.source_project_id, target_project_id=mr.project_id,
            # GitLab's: the merge commit; null for a fast-forward (with or without squash) and until merged.
            merge_commit_sha=mr.merge_commit_sha if action == "merge" else None,
            merge_params={"force_remove_source_branch": "1" if mr.force_remove_source_branch else "0"},
            merge_user_id=17 if action == "merge" else None,
            detailed_merge_status="mergeable" if state == "opened" else "not_open",
            url=f"{self.base}/{self.project.path}/-/merge_requests/{mr.iid}",
            last_commit=self._commit(mr.sha) if mr.sha else None,
        )
        body["changes"] = {
            "open": {"state_id": {"previous": None, "current": 1}},
            "update": {"target_branch": {"previous": previous_target, "current": mr.target_branch}},
            "close": {"state_id": {"previous": 1, "current": 2}},
            "merge": {"state_id": {"previous": 4, "current": 3}},
        }[action]
        return body

    def push(self, ref: str, before: str, after: str, commits: Iterable[str] = (), kind: str = "push") -> dict:
        """Push Hook (or Tag Push Hook with kind="tag_push"): a branch created, pushed to or deleted."""
        body = load_payload("push_branch_deleted.json")
        self._project(body["project"])
        commits = list(commits)
        body.update(object_kind=kind, event_name=kind, ref=ref, before=before, after=after,
                    checkout_sha=None if after == ZERO else after, project_id=self.project.id,
                    commits=[self._commit(c) for c in commits], total_commits_count=len(commits))
        body["repository"].update(name=self.project.name, homepage=f"{self.base}/{self.project.path}")
        return body

    def pipeline(self, pl, *, ref_name: str, mr=None) -> dict:
        """Pipeline Hook for the pipeline's current status. For merge-request pipelines
        `object_attributes.ref` is the source branch and `merge_request` is set."""
        body = load_payload("pipeline_merge_request.json" if mr is not None else "pipeline_main.json")
        self._project(body["project"])
        attrs = body["object_attributes"]
        def hook_time(iso: str | None) -> str | None:  # the hook's own format: "2026-10-03 13:41:02 UTC"
            return iso[:19].replace("T", " ") + " UTC" if iso else None

        attrs.update(id=pl.id, iid=pl.iid, ref=ref_name, tag=pl.tag, sha=pl.sha, before_sha=pl.before_sha,
                     source=pl.source, status=pl.status,
                     detailed_status={"success": "passed"}.get(pl.status, pl.status),
                     created_at=hook_time(pl.created_at), finished_at=hook_time(pl.finished_at),
                     duration=pl.duration, url=f"{self.base}/{self.project.path}/-/pipelines/{pl.id}",
                     protected_ref=ref_name == "main" or pl.tag)
        body["commit"] = self._commit(pl.sha)
        body["builds"][0]["status"] = pl.status
        if mr is not None:
            body["merge_request"].update(
                id=mr.id, iid=mr.iid, title=mr.title, source_branch=mr.source_branch,
                source_project_id=mr.source_project_id, target_branch=mr.target_branch,
                target_project_id=mr.project_id, state=mr.state,
                url=f"{self.base}/{self.project.path}/-/merge_requests/{mr.iid}")
        return body

    def deployment(self, dep, status: str) -> dict:
        """Deployment Hook for the deployment's move to `status` (tests/support/payloads.py builds it
        as GitLab does, `ref` included)."""
        with self.project._emu.lock:
            return deployment_hook_body(self.project, dep, status=status)


# =====================================================================================
# The oracle: which pushed tags must exist, from GitLab's state and what CI pushed
# =====================================================================================

def live_tags(project, keep_commits: int | None = None) -> dict[str, str]:
    """Every tag name that is live now, with why: the oracle, independent of the product.

    - a branch slug of a live branch or of the source branch of an open merge request, a live
      git tag's name or slug;
    - the SHA or short SHA of a commit that: some pipeline ran on with a live ref (a live branch,
      a live git tag, or refs/merge-requests/<iid>/… of a merge request that is open or whose
      source branch is live); is the head of a live branch or a live git tag's commit; or is the
      head of a fast-forward-merged merge request (no merge commit, no squash) whose target lives;
    - deployed: for every environment that is available or stopping, the SHA and short SHA of
      the commits of its newest KEEP_DEPLOYMENTS successful deployments (newest: highest id;
      whatever ref they came from, live or not), and the slug of the ref of its newest one (of
      a merge request's refs/merge-requests/<iid>/…, its source branch's: that pipeline's
      $CI_COMMIT_REF_SLUG). Failed, canceled and running deployments count for nothing, and a
      stopped environment keeps nothing.
    PROTECTED_TAGS names are live too; `is_live` checks those.

    With retention on (`keep_commits`: KEEP_COMMITS, every branch, KEEP_COMMITS_MIN_AGE=0), a live
    branch's pipelines keep a commit only while it is among the `keep_commits` newest distinct
    commits the branch's pipelines built (newest: highest pipeline id there) or the commit of its
    newest successful pipeline: an older commit ("superseded" on that branch) is live only when
    something else claims it, as the issue lists: another live ref built it (a live git tag's
    pipeline, an open merge request's, another live branch's), it is a live branch's head, a git
    tag's commit, an open merge request's head (`mr.sha`), deployed as above, or a protected name.
    A merge request's pipeline counts for its source branch once the merge request is not open,
    as it did for the dead-branch rules. A fast-forward merge's head is the target's commit: it is
    claimed as before unless some live branch superseded it (then the claims above decide)."""
    lock = project._emu.lock if project._emu is not None else None
    with lock:
        branches = dict(project.branches)
        git_tags = dict(project.tags)
        mrs = {mr.iid: (mr.state, mr.source_branch, mr.target_branch, mr.merge_commit_sha, mr.squash, mr.sha)
               for mr in project.merge_requests.values()}
        pipelines = [(pl.id, pl.ref, pl.sha, pl.tag) for pl in project.pipelines.values()]
        statuses = {pl.id: pl.status for pl in project.pipelines.values()}
        environments = [(env.name, env.state, sorted(((d.id, d.sha, d.ref) for d in env.deployments
                                                      if d.status == "success"), reverse=True))
                        for env in project.environments.values()]
    names: dict[str, str] = {}
    for b in sorted(branches):
        names.setdefault(slug(b), f"slug of live branch {b!r}")
    for iid, (state, source, *_rest) in sorted(mrs.items()):
        if state == "opened":
            names.setdefault(slug(source), f"slug of {source!r}, source branch of open !{iid}")
    for t in sorted(git_tags):
        names.setdefault(t, f"name of live git tag {t!r}")
        names.setdefault(slug(t), f"slug of live git tag {t!r}")

    def ref_live(ref: str, tag: bool) -> bool:
        m = re.fullmatch(r"refs/merge-requests/(\d+)/(head|merge|train)", ref)
        if m:
            state, source = mrs.get(int(m.group(1)), ("?", None))[:2]
            return state == "opened" or source in branches
        return ref in git_tags if tag else ref in branches

    def live_label(ref: str, tag: bool) -> str | None:
        """What a pipeline's ref stands for while it is live: `branch:NAME` (a merge request's
        pipelines are its source branch's once it is not open), `tag:NAME`, `mr:IID`; None: dead."""
        m = re.fullmatch(r"refs/merge-requests/(\d+)/(head|merge|train)", ref)
        if m:
            state, source = mrs.get(int(m.group(1)), ("?", None))[:2]
            if state == "opened":
                return f"mr:{m.group(1)}"
            return f"branch:{source}" if source in branches else None
        if tag:
            return f"tag:{ref}" if ref in git_tags else None
        return f"branch:{ref}" if ref in branches else None

    # Retention: per live branch, the commits its own pipelines built that are neither among its
    # `keep_commits` newest nor its newest successful pipeline's.
    superseded: dict[str, set[str]] = {}
    if keep_commits is not None:
        for b in branches:
            order: dict[str, int] = {}
            success = None
            for pid, ref, sha, tag in pipelines:
                if ref == b and not tag:
                    order[sha] = max(order.get(sha, 0), pid)
                    if statuses[pid] == "success" and (success is None or pid > success[0]):
                        success = (pid, sha)
            kept = set(sorted(order, key=lambda sha: (-order[sha], sha))[:keep_commits])
            if success is not None:
                kept.add(success[1])
            superseded[b] = set(order) - kept

    commits: dict[str, str] = {}
    for b, head in sorted(branches.items()):
        commits.setdefault(head, f"head of live branch {b!r}")
    for t, sha in sorted(git_tags.items()):
        commits.setdefault(sha, f"commit of live git tag {t!r}")
    if keep_commits is None:
        for pid, ref, sha, tag in pipelines:
            if ref_live(ref, tag):
                commits.setdefault(sha, f"pipeline #{pid} ran on it on live ref {ref!r}")
    else:
        labels: dict[str, dict[str, tuple[int, str]]] = {}  # sha -> live label -> (a pipeline, its ref)
        for pid, ref, sha, tag in pipelines:
            label = live_label(ref, tag)
            if label is not None:
                labels.setdefault(sha, {}).setdefault(label, (pid, ref))
        for sha, found in labels.items():
            # One live branch alone built it, and superseded it there: nothing claims it on that account.
            if len(found) == 1 and (only := next(iter(found))).startswith("branch:") \
                    and sha in superseded.get(only[len("branch:"):], ()):
                continue
            (pid, ref), = list(found.values())[:1]
            commits.setdefault(sha, f"pipeline #{pid} ran on it on live ref {ref!r}"
                                    + (f" (and {len(found) - 1} more live refs)" if len(found) > 1 else ""))
        for iid, (state, *_rest, head) in sorted(mrs.items()):
            if state == "opened" and head:
                commits.setdefault(head, f"head of open !{iid}")
    gone_by_retention = set().union(*superseded.values()) if superseded else set()
    for iid, (state, _source, target, merge_sha, squash, head) in sorted(mrs.items()):
        if state == "merged" and merge_sha is None and not squash and head and target in branches \
                and head not in gone_by_retention:
            commits.setdefault(head, f"head of !{iid}, fast-forward merged into live {target!r}")
    for env, state, done in sorted(environments):
        if state not in ("available", "stopping") or not done:
            continue
        for n, (deployment, sha, _ref) in enumerate(done[:KEEP_DEPLOYMENTS], 1):
            commits.setdefault(sha, f"deployed to {state} environment {env!r} (deployment #{deployment}, "
                                    f"newest but {n - 1})")
        deployment, _sha, ref = done[0]
        m = re.fullmatch(r"refs/merge-requests/(\d+)/(head|merge|train)", ref)
        branch = mrs[int(m.group(1))][1] if m else ref
        names.setdefault(slug(branch), f"slug of {branch!r}, whose deployment #{deployment} {state} environment "
                                       f"{env!r} runs")
    for sha, why in commits.items():
        names.setdefault(sha, why)
        names.setdefault(sha[:8], f"short SHA of {sha[:12]}…: {why}")
    return names


def is_live(tag: str, live: dict[str, str]) -> str | None:
    """Why `tag` is live, or None."""
    if PROTECTED.fullmatch(tag):
        return "matches PROTECTED_TAGS"
    return live.get(tag)


# =====================================================================================
# The driver: play a script against the emulator, the registry and the service
# =====================================================================================

@dataclass
class Pushed:
    digest: str
    step: int
    pipeline: int


@dataclass
class Violation:
    where: str     # "after burst 3 (step 57)", "after the sweep"
    step: int
    repo: str
    tag: str
    why_live: str
    found: str     # "absent" or the digest found
    expected: str
    pushed_at: int
    pipeline: int
    audit: list[str] = field(default_factory=list)  # the audit trail's entries for the tag, oldest first
    cause: str = "no audit entry deleted it"

    def line(self, seed: int) -> str:
        return (f"seed {seed}, {self.where}: {self.repo}:{self.tag} is live ({self.why_live}) but "
                f"{'gone' if self.found == 'absent' else 'at ' + self.found} (CI pushed {self.expected[:19]}… "
                f"at step {self.pushed_at}, pipeline #{self.pipeline})")


def tagsweeper_cli() -> list[str]:
    exe = Path(sys.executable).parent / "tagsweeper"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "workers.cli"]


class MonthRun:
    """Plays `script` as GitLab and CI would, with tagsweeper's web side (`service`) taking the
    deliveries and its worker run in bursts; checks the registry after every burst.

    Everything it does is written to `workdir/month.log` (steps, heads, pipelines, image pushes,
    deliveries and their fates, bursts); failures quote the lines about the failing tag."""

    def __init__(self, script: Script, emu, service, workdir: Path, project_id: int | None = None,
                 history_start: dt.datetime | None = None, keep_commits: int | None = None):
        self.script = script
        # Set: the service runs with retention on (KEEP_COMMITS, KEEP_COMMITS_MIN_AGE=0), the oracle
        # lets superseded commits go, and the month ends with the scheduled sweep job (which runs
        # a retention pass of every live branch) instead of `tagsweeper sweep`.
        self.keep_commits = keep_commits
        # Set: the script is history that happened before tagsweeper was installed, spread from
        # `history_start` to now (each step one slot, pipelines dated in it, as GitLab keeps them).
        self.history_start = history_start
        self.seed = script.seed
        self.emu = emu
        self.service = service
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        pid = project_id or 8000 + script.seed
        self.project = emu.add_project(pid, f"acme/month-{script.seed}", default_branch="main")
        for name in REPOSITORIES:
            self.project.add_registry_repository(name)
        self.repos = [r.path for r in self.project.registry_repositories]
        self.reg = emu.registry_client
        self.payloads = Payloads(self.project)
        self.keys = random.Random(f"tagsweeper-month-keys-{script.seed}")
        self.http = requests.Session()
        self.pushed: dict[tuple[str, str], Pushed] = {}
        self.excused: set[tuple[str, str]] = set()  # legitimately gone since CI last pushed them
        self.reported: dict[tuple[str, str], tuple[int, int]] = {}  # violations, by the push they lost
        self.outbox: list[tuple[int, int, str, str, bytes, str]] = []
        self.sent = Counter()
        self.merges: dict[int, dict] = {}
        self.branches = {"main"}  # what the script says exists; held against the emulator each step
        self.running: dict[str, int] = {}  # environment -> its deployment still running
        self.deleted_deployments: dict[str, list[tuple[int, str]]] = {}  # environment -> [(id, sha)] deleted
        self.violations: list[Violation] = []
        self.bursts = 0
        self.burst_seconds: list[float] = []
        self.step = -1
        self.log_path = self.workdir / "month.log"
        self.log_file = open(self.log_path, "w")
        self.worker_log = self.workdir / "worker.log"
        self.sweep_report: dict | None = None
        # Digests are checked with a few threads: a check reads every live tag.
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="month-check")

    # -- logging -------------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.log_file.write(text + "\n")

    def close(self) -> None:
        self.log_file.close()
        self.pool.shutdown(wait=False)
        self.http.close()

    # -- the month -------------------------------------------------------------------------
    def run(self) -> None:
        self.log(f"month seed={self.seed} scale={self.script.scale} project={self.project.id} "
                 f"{self.project.path} repositories={self.repos} keep_commits={self.keep_commits}")
        self.log(f"main starts at {self.project.branches['main']}")
        for name in RELEASE_ENVIRONMENTS:  # configured in .gitlab-ci.yml with a stop action
            self.project.add_environment(name, tier=name, auto_stop_setting="with_action")
        for i, step in enumerate(self.script.steps):
            self.step = i
            self.log(f"[{i:04d}] {step.describe()}")
            getattr(self, f"do_{step.kind}")(step)
            self.flush(i)
            with self.emu.lock:
                actual = set(self.project.branches)
            assert actual == self.branches, (
                f"simulation bug at step {i}: emulator branches {sorted(actual ^ self.branches)} differ")
            if i in self.script.bursts:
                self.burst(f"burst {self.bursts + 1} (after step {i})")
        self.step = len(self.script.steps)
        self.flush(None)  # GitLab sends what is late eventually
        self.burst(f"the last burst (after step {self.step - 1})")
        if self.keep_commits is None:
            self.sweep()
        else:
            self.sweep_job()

    # -- GitLab's side: the steps -----------------------------------------------------------
    def head(self, branch: str) -> str:
        with self.emu.lock:
            return self.project.branches[branch]

    def do_create(self, step: Step) -> None:
        head = self.project.add_branch(step.branch, from_branch=step.parent)
        self.branches.add(step.branch)
        self.log(f"       {step.branch} created at {head} from {step.parent}")
        self.deliver(step.deliveries[0], "Push Hook",
                     self.payloads.push(f"refs/heads/{step.branch}", ZERO, head), f"push create {step.branch}")
        self.pipelines(step, head)

    def do_push(self, step: Step) -> None:
        before = self.head(step.branch)
        for sha in step.shas:
            self.project.push(step.branch, sha=sha)
        after = self.head(step.branch)
        self.log(f"       {step.branch}: {before[:12]} -> {after}")
        self.deliver(step.deliveries[0], "Push Hook",
                     self.payloads.push(f"refs/heads/{step.branch}", before, after, step.shas),
                     f"push {step.branch}")
        self.pipelines(step, after)

    do_hotfix = do_push

    def do_rebase(self, step: Step) -> None:
        before = self.head(step.branch)
        self.project.add_branch(step.branch, sha=step.shas[0], from_branch=step.target)
        for sha in step.shas[1:]:
            self.project.push(step.branch, sha=sha)
        after = self.head(step.branch)
        self.log(f"       {step.branch} rebased onto {step.target} ({self.head(step.target)[:12]}): "
                 f"{before[:12]} -> {after} (force push)")
        self.deliver(step.deliveries[0], "Push Hook",
                     self.payloads.push(f"refs/heads/{step.branch}", before, after, step.shas),
                     f"push (rebase) {step.branch}")
        self.pipelines(step, after)

    def do_open(self, step: Step) -> None:
        mr = self.project.add_merge_request(step.iid, step.branch, step.target)
        self.log(f"       !{step.iid} {step.branch} -> {step.target}, head {mr.sha}, "
                 f"commits {[c['id'][:8] for c in mr.commits]}")
        self.deliver(step.deliveries[0], "Merge Request Hook", self.payloads.merge_request(mr, "open"),
                     f"mr open !{step.iid}")
        self.pipelines(step, mr.sha)

    def do_merge(self, step: Step) -> None:
        mr = self.project.merge_requests[step.iid]
        head, source_head = mr.sha, self.head(step.branch)
        commits = [c["id"][:8] for c in mr.commits]
        states = self.env_states()
        self.project.merge(step.iid, step.method, remove_source_branch=step.remove_source)
        target_head = self.head(step.target)
        self.merges[step.iid] = {"method": step.method, "head": head, "target": step.target,
                                 "target_head": target_head}
        self.log(f"       !{step.iid} merged ({step.method}): head {head}, commits {commits}, "
                 f"merge_commit_sha {mr.merge_commit_sha}, squash_commit_sha {mr.squash_commit_sha}; "
                 f"{step.target} now at {target_head}")
        deliveries = iter(step.deliveries)
        self.deliver(next(deliveries), "Merge Request Hook", self.payloads.merge_request(mr, "merge"),
                     f"mr merge !{step.iid}")
        if step.remove_source:
            self.branches.discard(step.branch)
            self.log(f"       {step.branch} removed (was at {source_head})")
            self.deliver(next(deliveries), "Push Hook",
                         self.payloads.push(f"refs/heads/{step.branch}", source_head, ZERO),
                         f"push delete {step.branch}")
            with self.emu.lock:
                children = sorted(m.iid for m in self.project.merge_requests.values()
                                  if m.state == "opened" and m.target_branch == step.branch)
            assert tuple(children) == step.retargets, f"simulation bug: retargets {children} != {step.retargets}"
            for child in step.retargets:  # GitLab retargets the merge requests into the removed branch
                cmr = self.project.retarget(child, step.target)
                self.log(f"       !{child} retargeted {step.branch} -> {step.target}")
                self.deliver(next(deliveries), "Merge Request Hook",
                             self.payloads.merge_request(cmr, "update", previous_target=step.branch),
                             f"mr update !{child}")
        self.log_stopped_by_gitlab(states)
        self.stop_review(step)
        self.pipelines(step, target_head)

    def do_target_pipeline(self, step: Step) -> None:
        self.pipelines(step, self.merges[step.iid]["target_head"])

    def do_close(self, step: Step) -> None:
        mr = self.project.close(step.iid)
        self.deliver(step.deliveries[0], "Merge Request Hook", self.payloads.merge_request(mr, "close"),
                     f"mr close !{step.iid}")
        self.stop_review(step)

    def do_delete(self, step: Step) -> None:
        before, states = self.head(step.branch), self.env_states()
        self.project.delete_branch(step.branch)
        self.branches.discard(step.branch)
        self.log(f"       {step.branch} deleted (was at {before})")
        self.log_stopped_by_gitlab(states)
        self.deliver(step.deliveries[0], "Push Hook",
                     self.payloads.push(f"refs/heads/{step.branch}", before, ZERO), f"push delete {step.branch}")

    def do_bulk_delete(self, step: Step) -> None:
        states = self.env_states()
        for name in step.names:
            self.log(f"       {name} deleted (was at {self.head(name)}); no Push Hook")
            self.project.delete_branch(name)
            self.branches.discard(name)
        self.log_stopped_by_gitlab(states)

    def do_release(self, step: Step) -> None:
        sha = self.head("main")
        self.project.add_tag(step.tag, sha)
        self.log(f"       git tag {step.tag} at {sha}")
        self.deliver(step.deliveries[0], "Tag Push Hook",
                     self.payloads.push(f"refs/tags/{step.tag}", ZERO, sha, kind="tag_push"), f"tag push {step.tag}")
        self.pipelines(step, sha)

    # -- environments ------------------------------------------------------------------------
    def environment(self, name: str):
        """The emulator's environment named `name`, or None."""
        with self.emu.lock:
            return next((e for e in self.project.environments.values() if e.name == name), None)

    def env_states(self) -> dict[str, str]:
        with self.emu.lock:
            return {e.name: e.state for e in self.project.environments.values()}

    def log_stopped_by_gitlab(self, before: dict[str, str]) -> None:
        """GitLab stops the "always" environments whose last deployment came from a deleted branch:
        say which it did (`before`: env_states() before the deletion)."""
        for name, state in sorted(self.env_states().items()):
            if before.get(name) == "available" and state == "stopped":
                self.log(f"       environment {name} stopped by GitLab (its branch was deleted)")

    def successful(self, name: str) -> list:
        """The environment's successful deployments, newest first."""
        env = self.environment(name)
        with self.emu.lock:
            return sorted((d for d in env.deployments if d.status == "success"), key=lambda d: d.id,
                          reverse=True) if env is not None else []

    def deploy(self, name: str, ref: str, sha: str, hooks: tuple[Delivery, ...], status: str,
               setting: str = "always", what: str = "deploy") -> None:
        """A deploy job: the deployment starts running (its Deployment Hook), then ends with `status`
        (its hook) unless only the first hook is given: then a `deploy_finish` step ends it."""
        if self.environment(name) is None and setting == "with_action":
            self.project.add_environment(name, auto_stop_setting=setting)
        dep = self.project.deploy(name, ref=ref, sha=sha, status="running", at=self.when())
        self.log(f"       {what}: deployment #{dep.id} to {name}, {ref} at {sha}, running")
        self.deliver(hooks[0], "Deployment Hook", self.payloads.deployment(dep, "running"),
                     f"deployment #{dep.id} running")
        if len(hooks) == 1:
            self.running[name] = dep.id
            return
        self.finish_deployment(dep.id, status, hooks[1])

    def finish_deployment(self, deployment: int, status: str, hook: Delivery) -> None:
        dep = self.project.update_deployment(deployment, status, at=self.when())
        self.log(f"       deployment #{deployment} to {dep.environment.name}: {status}"
                 f"{' (environment available again)' if status == 'success' else ''}")
        self.deliver(hook, "Deployment Hook", self.payloads.deployment(dep, status), f"deployment #{deployment} {status}")

    def do_deploy_finish(self, step: Step) -> None:
        self.finish_deployment(self.running.pop(step.environment), step.status, step.deliveries[0])

    def do_rollback(self, step: Step) -> None:
        """GitLab's Rollback: the job of an older successful deployment re-run, a new deployment of its commit."""
        done = self.successful(step.environment)
        if len(done) < step.back:
            self.log(f"       no rollback: {step.environment} has {len(done)} successful deployments")
            return
        old = done[step.back - 1]
        self.deploy(step.environment, old.ref, old.sha, step.deliveries, step.status,
                    what=f"rollback to deployment #{old.id}")

    def stop_review(self, step: Step) -> None:
        """The stop job of the merge request's review app (merge and close steps)."""
        if step.environment:
            self.do_stop_env(step)

    def do_stop_env(self, step: Step) -> None:
        env = self.environment(step.environment)
        if env is None or env.state == "stopped" or env.state == step.state:
            self.log(f"       environment {step.environment} is {env.state if env else 'gone'}: not stopped")
            return
        self.project.stop_environment(step.environment, state=step.state, at=self.when())
        self.log(f"       environment {step.environment} {step.state}")

    def do_delete_env(self, step: Step) -> None:
        env = self.environment(step.environment)
        if env is None or env.state != "stopped" or step.environment in self.running:
            self.log(f"       environment {step.environment} is {env.state if env else 'gone'}: not deleted")
            return
        self.project.delete_environment(step.environment)
        self.log(f"       environment {step.environment} deleted, and its deployments")

    def do_delete_deployment(self, step: Step) -> None:
        done = self.successful(step.environment)
        env = self.environment(step.environment)
        with self.emu.lock:
            last = env.last_deployment if env is not None else None
        if len(done) < step.back or done[step.back - 1] is last:
            self.log(f"       no deployment deleted: {step.environment} has {len(done)} successful deployments")
            return
        dep = done[step.back - 1]
        self.project.delete_deployment(dep.id)
        self.deleted_deployments.setdefault(step.environment, []).append((dep.id, dep.sha))
        self.log(f"       deployment #{dep.id} of {step.environment} ({dep.ref} at {dep.sha}) deleted")

    # -- CI ----------------------------------------------------------------------------------
    def pipelines(self, step: Step, sha: str) -> None:
        for spec in step.pipelines:
            self.run_pipeline(spec, sha)

    def run_pipeline(self, spec: PipelineSpec, sha: str) -> None:
        """Create the pipeline, push its image to both repositories, then walk its statuses, each
        change a Pipeline Hook."""
        mr = None
        if spec.kind in ("mr", "merged_results"):
            mr = self.project.merge_requests[spec.iid]
            ref = f"refs/merge-requests/{spec.iid}/{'head' if spec.kind == 'mr' else 'merge'}"
            sha = sha if spec.kind == "mr" else spec.temp_sha
            pl = self.project.add_pipeline(sha, ref, status=spec.hooks[0].what, source="merge_request_event",
                                           created_at=self.when())
        else:
            pl = self.project.add_pipeline(sha, spec.ref, status=spec.hooks[0].what, source="push",
                                           tag=spec.kind == "tag", created_at=self.when())
        # CI's tags: $CI_COMMIT_REF_SLUG (an MR pipeline's is its source branch's), the SHA, the short SHA;
        # main also pushes latest, a tag pipeline the git tag's own name where that is a valid image tag.
        tags = [slug(spec.ref), sha, sha[:8]]
        if spec.kind == "branch" and spec.ref == "main":
            tags.append("latest")
        if spec.kind == "tag" and DOCKER_TAG.fullmatch(spec.ref):
            tags.append(spec.ref)
        tags = list(dict.fromkeys(tags))
        for repo in self.repos:
            digest = self.reg.push_image(repo, tags, content=f"{repo}@pipeline-{pl.id}")
            for t in tags:
                self.pushed[(repo, t)] = Pushed(digest, self.step, pl.id)
                self.excused.discard((repo, t))
        self.log(f"       pipeline #{pl.id} {spec.kind} ref={pl.ref} sha={sha} pushed {tags}")
        for n, d in enumerate(spec.hooks):
            if n:
                self.project.update_pipeline(pl.id, d.what, at=self.when())
            self.deliver(d, "Pipeline Hook", self.payloads.pipeline(pl, ref_name=spec.ref, mr=mr),
                         f"pipeline #{pl.id} {d.what}")
        if spec.deploy is not None:  # its deploy job, from the pipeline's ref (a merge request's own ref too)
            d = spec.deploy
            self.deploy(d.environment, pl.ref, pl.sha, d.hooks, d.status,
                        setting="always" if d.policy == "auto" else "with_action")

    def when(self) -> dt.datetime | None:
        """The time of the current step: now, or its slot in the history (see history_start)."""
        if self.history_start is None:
            return None
        now = dt.datetime.now(dt.timezone.utc)
        slot = (now - self.history_start) / (len(self.script.steps) + 1)
        return self.history_start + slot * max(self.step, 0)

    # -- deliveries --------------------------------------------------------------------------
    def deliver(self, d: Delivery, event: str, body: dict, what: str) -> None:
        """Send (or drop, delay, double) one delivery; its body is what GitLab knew at the event."""
        key = str(uuid.UUID(int=self.keys.getrandbits(128), version=4))
        data = json.dumps(body).encode()
        self.sent[d.fate] += 1
        note = f"{what} key={key[:8]}"
        if d.fate == "dropped":
            self.log(f"       delivery {note}: never sent")
            return
        if d.fate == "late":
            self.log(f"       delivery {note}: late, after step {self.step + d.delay}")
            self.outbox.append((self.step + d.delay, len(self.outbox), event, key, data, note))
            return
        self.send(event, key, data, note)
        if d.fate == "twice":  # a Resend: the same delivery, the same Idempotency-Key
            self.log(f"       delivery {note}: re-sent after step {self.step + d.delay}")
            self.outbox.append((self.step + d.delay, len(self.outbox), event, key, data, note + " (resend)"))

    def flush(self, upto: int | None) -> None:
        due = sorted(o for o in self.outbox if upto is None or o[0] <= upto)
        for item in due:
            self.outbox.remove(item)
            self.send(*item[2:])

    def send(self, event: str, key: str, data: bytes, note: str) -> None:
        from tests.support.service import gitlab_headers

        resp = self.http.post(self.service.url + "/hooks/gitlab", data=data,
                              headers=gitlab_headers(event, key), timeout=10)
        is_json = resp.headers.get("Content-Type", "").startswith("application/json")
        answer = resp.json().get("status") if is_json else ""
        self.log(f"       -> {note}: {resp.status_code} {answer}")
        assert resp.status_code in (200, 202), f"{event} {note} answered {resp.status_code}: {resp.text[:300]}"

    # -- tagsweeper's worker, and the checks --------------------------------------------------
    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([*tagsweeper_cli(), *args], cwd=self.service.workdir, env=self.service.env,
                              capture_output=True, text=True, timeout=timeout)

    def burst(self, where: str) -> None:
        """`tagsweeper worker --burst`: run every job that is due, quit; then check."""
        self.bursts += 1
        started = time.monotonic()
        name = f"month-{self.seed}-{self.bursts}-{uuid.uuid4().hex[:6]}"
        with open(self.worker_log, "a") as out:
            out.write(f"===== {where}\n")
            out.flush()
            offset = out.tell()
            proc = subprocess.Popen([*tagsweeper_cli(), "worker", "--burst", "--name", name],
                                    cwd=self.service.workdir, env=self.service.env, stdout=out,
                                    stderr=subprocess.STDOUT)
            status = self._wait_for_burst(proc, name, offset)
        self.burst_seconds.append(time.monotonic() - started)
        self.log(f"[{self.step:04d}] WORKER BURST: {where}, {status}, {self.burst_seconds[-1]:.1f}s")
        assert status.startswith(("exit 0", "quit")), f"worker burst {status}; see {self.worker_log}"
        self.check(where)

    def _wait_for_burst(self, proc: subprocess.Popen, name: str, offset: int, timeout: float = 900) -> str:
        """Wait for the burst worker to finish. RQ 3.0 with redis-py 8 can then sit up to 60 s in
        its teardown (unsubscribe() joins a pubsub thread sleeping in get_message(timeout=60)),
        after it registered its death: once it said so, our own process is ended by its pid."""
        done = f"Worker {name}: unsubscribing from channel".encode()
        deadline = time.monotonic() + timeout
        said_at = None
        while True:
            try:
                return f"exit {proc.wait(timeout=0.1)}"
            except subprocess.TimeoutExpired:
                pass
            if said_at is None:
                with open(self.worker_log, "rb") as f:
                    f.seek(offset)
                    if done in f.read():
                        said_at = time.monotonic()
            elif time.monotonic() - said_at > 1.0:
                proc.kill()
                proc.wait()
                return "quit (its RQ teardown then waited on a pubsub thread: ended)"
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return f"still running after {timeout:.0f}s: killed"

    def sweep(self) -> None:
        started = time.monotonic()
        proc = self.cli("sweep", "--project", str(self.project.id), "--json")
        (self.workdir / "sweep.json").write_text(proc.stdout)
        (self.workdir / "sweep.log").write_text(proc.stderr)
        try:
            self.sweep_report = json.loads(proc.stdout)
        except ValueError:
            self.sweep_report = None
        summary = (self.sweep_report or {}).get("summary")
        self.log(f"[{self.step:04d}] SWEEP: exit {proc.returncode}, {time.monotonic() - started:.1f}s, {summary}")
        assert proc.returncode == 0, f"sweep exited {proc.returncode}: {proc.stderr[-2000:]}"
        self.check("after the sweep")

    def sweep_job(self) -> None:
        """The scheduled sweep, as the worker's schedule enqueues it (`workers.jobs.sweep_project`), run
        by one more burst: the sweep, then a retention pass of every live branch."""
        conn = redis.Redis.from_url(self.service.redis_url)
        try:
            q = Queue(self.service.env.get("RQ_QUEUE", "tagsweeper"), connection=conn)
            job = q.enqueue_call("workers.jobs.sweep_project", kwargs={"project": self.project.id},
                                 job_id=f"month-sweep-{self.project.id}-{uuid.uuid4().hex[:6]}", timeout=900,
                                 description=f"scheduled sweep of project {self.project.id}")
            self.burst("the sweep job")
            status = getattr(job.get_status(refresh=True), "value", None)
            self.sweep_report = job.return_value() if status == "finished" else None
        finally:
            conn.close()
        (self.workdir / "sweep.json").write_text(json.dumps(self.sweep_report, indent=2))
        retention = [(r.get("branch"), r.get("summary")) for r in (self.sweep_report or {}).get("retention", [])]
        self.log(f"[{self.step:04d}] SWEEP JOB: {status}, {(self.sweep_report or {}).get('summary')}; "
                 f"retention {retention}")
        assert status == "finished", f"the sweep job {status}; see {self.worker_log}"

    def registry_state(self, resolve: Iterable[tuple[str, str]] = ()) -> dict[tuple[str, str], str | None]:
        """(repository, tag) -> digest for every tag in the registry now; the digest is looked up
        only for the tags in `resolve` (None for the others)."""
        present = {(repo, t): None for repo in self.repos for t in self.reg.tags(repo)}
        wanted = [rt for rt in resolve if rt in present]
        for rt, digest in zip(wanted, self.pool.map(lambda rt: self.reg.resolve(*rt), wanted)):
            present[rt] = digest
        return present

    def expected(self, live: dict[str, str]) -> dict[tuple[str, str], tuple[Pushed, str]]:
        """What must be in the registry now: every tag CI pushed that is live, at the digest CI pushed
        last, unless it was legitimately deleted since (it was dead at a burst after its push)."""
        out = {}
        for key, pushed in self.pushed.items():
            why = is_live(key[1], live)
            if why and key not in self.excused:
                out[key] = (pushed, why)
        return out

    def check(self, where: str) -> None:
        """No live tag is gone or moved (assertion 1); then remember which tags were dead now."""
        live = live_tags(self.project, self.keep_commits)
        expected = self.expected(live)
        state = self.registry_state(resolve=expected)
        new: list[Violation] = []
        for key, (pushed, why) in sorted(expected.items()):
            found = state.get(key, "absent") or "absent"
            if found != pushed.digest and self.reported.get(key) != (pushed.step, pushed.pipeline):
                self.reported[key] = (pushed.step, pushed.pipeline)  # once, until CI pushes it again
                new.append(Violation(where, self.step, key[0], key[1], why, found, pushed.digest,
                                     pushed.step, pushed.pipeline))
        if new:
            self.explain_from_audit(new)
        for v in new:
            self.violations.append(v)
            self.log(f"       VIOLATION {v.line(self.seed)}; {v.cause}")
        for key, pushed in self.pushed.items():
            if key in expected and state.get(key) == pushed.digest or key not in expected and key in state:
                self.excused.discard(key)  # still there (a dead tag's digest is not looked up: CI's or none)
            elif not is_live(key[1], live) and key not in self.reported:
                self.excused.add(key)  # dead now and gone: it may stay gone when it is live again
        self.log(f"       checked {where}: {len(live)} live names, {len(state)} tags in the registry, "
                 f"{len(self.violations)} violations so far")

    def held_by_deleted_deployments(self) -> dict[str, str]:
        """Tag names a deployment GitLab deleted may still keep: tagsweeper's copy of GitLab's
        deployments keeps a deleted one (the safe side, workers/deployments.py), so while it would
        be among its live environment's newest KEEP_DEPLOYMENTS, its commit's tags may stay. Such a
        tag is not required, and not counted as an extra either."""
        held: dict[str, str] = {}
        for name, deleted in sorted(self.deleted_deployments.items()):
            env = self.environment(name)
            if env is None or env.state not in ("available", "stopping"):
                continue
            gone = set(deleted)
            ranked = sorted({(d.id, d.sha) for d in self.successful(name)} | gone, reverse=True)
            for dep_id, sha in ranked[:KEEP_DEPLOYMENTS]:
                if (dep_id, sha) in gone:
                    why = f"deployment #{dep_id} of {name}, deleted by GitLab, among its newest in tagsweeper's copy"
                    held.setdefault(sha, why)
                    held.setdefault(sha[:8], why)
        return held

    def final_difference(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(extras, missing) of the registry against exactly the live set (assertion 2)."""
        live = live_tags(self.project, self.keep_commits)
        want = set(self.expected(live))
        have = set(self.registry_state())
        tolerated = self.held_by_deleted_deployments()
        extras = []
        for repo, tag in sorted(have - want):
            if tag in tolerated:
                self.log(f"extra tolerated: {repo}:{tag}: {tolerated[tag]}")
            else:
                extras.append((repo, tag))
        return extras, sorted(want - have)

    def jobs_not_done(self) -> dict[str, list[str]]:
        """Failed jobs, and jobs still waiting for a retry or running (assertion 3). A re-check
        (IN_USE_RECHECK) that waits is no such job: a cleanup whose tags environments still used
        schedules one, and each that finds them still in use schedules the next."""
        conn = redis.Redis.from_url(self.service.redis_url)
        try:
            q = Queue(self.service.env.get("RQ_QUEUE", "tagsweeper"), connection=conn)
            scheduled = ScheduledJobRegistry(queue=q).get_job_ids()
            # Due later, never run: not a retry (a re-check; a retention pass RETIRE_DELAY after a pipeline).
            rechecks = [j for j in scheduled if j.startswith(("recheck-", "retire-"))
                        and (job := Job.fetch(j, connection=conn)) is not None and job.started_at is None]
            self.log(f"re-checks still scheduled at the end: {len(rechecks)}")
            return {name: ids for name, ids in (
                ("failed", FailedJobRegistry(queue=q).get_job_ids()),
                ("scheduled (awaiting a retry)", [j for j in scheduled if j not in rechecks]),
                ("started", StartedJobRegistry(queue=q).get_job_ids()),
                ("queued", q.job_ids)) if ids}
        finally:
            conn.close()

    # -- explaining a failure ---------------------------------------------------------------
    def explain_from_audit(self, found: list[Violation]) -> None:
        """Attach the audit trail (`tagsweeper audit --json`, read right after the burst, so the
        newest 1000 entries hold the deletions) to each violation, and name its cause: the job
        that deleted the tag, and whether the branch it cleaned exists now."""
        proc = self.cli("audit", "--project", str(self.project.id), "--json", "--limit", "1000")
        entries = []
        for raw in proc.stdout.splitlines():
            try:
                entries.append(json.loads(raw))
            except ValueError:
                continue
        entries.reverse()  # oldest first
        with self.emu.lock:
            branches = set(self.project.branches)
        for v in found:
            mine = [e for e in entries if e.get("tag") == v.tag]
            v.audit = [f"{e.get('time')} {e.get('repository')} {e.get('decision')} branch={e.get('branch')} "
                       f"trigger={e.get('trigger')} job={e.get('job_id')}: {e.get('reason')}" for e in mine]
            deleted = [e for e in mine if e.get("decision") == "deleted" and e.get("repository") == v.repo]
            if deleted:
                e = deleted[-1]
                branch, trigger = e.get("branch"), e.get("trigger")
                state = "exists" if branch in branches else "is gone"
                v.cause = f"deleted by a {trigger} cleanup of branch {branch!r}, which {state} now"

    def causes(self) -> Counter:
        """Violations by cause, with the cleaned branch's name left out: the kinds of bug seen."""
        return Counter(re.sub(r"branch '.*?', which", "branch X, which", v.cause) for v in self.violations)

    def log_lines_about(self, *needles: str, limit: int = 40) -> list[str]:
        needles = tuple(n for n in needles if n)
        self.log_file.flush()
        hits, current, shown = [], "", ""
        for line in self.log_path.read_text().splitlines():
            if line.startswith("["):
                current = line  # the step (or burst) the following lines belong to
            if any(n in line for n in needles):
                if current != line and current != shown:
                    hits.append(current)
                hits.append(line)
                shown = current
        return hits[-limit:]

    def explain(self, v: Violation) -> str:
        full = [sha for (_r, t) in self.pushed for sha in [t] if len(t) == 40 and t.startswith(v.tag)]
        lines = [v.line(self.seed), f"  cause: {v.cause}", "  audit (oldest first):"]
        lines += [f"    {a}" for a in v.audit] or ["    (no audit entry for this tag)"]
        lines.append("  event log lines about it:")
        lines += [f"    {e}" for e in self.log_lines_about(v.tag, *full)]
        return "\n".join(lines)

    def report(self, extras, missing, jobs, detail: int = 8) -> str:
        out = [f"month seed={self.seed} scale={self.script.scale}: {len(self.script.steps)} steps, "
               f"{self.bursts} worker bursts; full log {self.log_path}, worker log {self.worker_log}"]
        if self.violations:
            out.append(f"\n{len(self.violations)} live tag(s) deleted or moved (assertion 1), by cause:")
            out += [f"  {n} x {cause}" for cause, n in self.causes().most_common()]
            # The first of each cause in detail, then every one in a line.
            firsts = {}
            for v in self.violations:
                firsts.setdefault(v.cause, v)
            for v in list(firsts.values())[:detail]:
                out.append(self.explain(v))
            out += [f"{v.line(self.seed)}; {v.cause}" for v in self.violations]
        if extras:
            out.append(f"\n{len(extras)} dead tag(s) still there after the sweep (assertion 2, extras):")
            said = {(d.get("repository"), d.get("tag")): d.get("reason")
                    for d in (self.sweep_report or {}).get("decisions", [])}
            for repo, tag in extras[:60]:
                pushed = self.pushed.get((repo, tag))
                where = (f"pushed at step {pushed.step} by pipeline #{pushed.pipeline}" if pushed
                         else "never pushed by CI")
                reason = said.get((repo, tag)) or "kept by a rule (the sweep does not list those)"
                out.append(f"  {repo}:{tag} ({where}); sweep: {reason}")
        if missing:
            out.append(f"\n{len(missing)} live tag(s) missing after the sweep (assertion 2, missing):")
            out += [f"  {repo}:{tag}" for repo, tag in missing[:60]]
        if jobs:
            out.append(f"\njobs not done (assertion 3): {jobs}")
        return "\n".join(out)
