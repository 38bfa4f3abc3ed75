"""A month in the life of a busy project, end to end: does the registry converge to exactly the live set?

tests/support/month.py generates a month from a seed (a few hundred events: branches, pushes,
pipelines, merge requests merged all four ways, stacked branches, slug collisions, re-used names,
releases, a silent bulk delete; environments: review apps of branches with open merge requests,
stopped on merge or left running, production deploys from `main` and a rollback, staging deploys
of feature branches, failed and slow deployments; deliveries dropped, doubled and late, Deployment
Hooks too), plays it against the GitLab emulator, the real docker-registry and tagsweeper itself
(gunicorn over HTTP; the worker as `tagsweeper worker --burst` every 1 to 40 events, so cleanups
decide late; IN_USE_RECHECK a few seconds, so re-checks run in later bursts), then runs one
`tagsweeper sweep`. Its oracle says which pushed tags are live from GitLab's state alone, deployed
images included (what live environments run or may roll back to).

1. After every burst and after the sweep, every live tag CI pushed is there at the digest CI
   pushed last (a deletion followed by a re-push would hide from a check at the end only): no
   deployed image is ever deleted.
2. After the sweep, each repository holds exactly the live set: every dead tag gone, nothing extra
   (but the commit of a deployment GitLab deleted, which tagsweeper's copy of the deployments
   keeps on the safe side while it would be among its live environment's newest: not required,
   tolerated, and logged).
3. No job failed (or waits for a retry; a re-check waiting for its time is no such job).

With retention on (KEEP_COMMITS=3, KEEP_COMMITS_MIN_AGE=0, RETIRE_DELAY of a second: each
successful Pipeline Hook schedules a pass of its branch, run in a later burst), the oracle lets a
live branch's superseded commits go unless something else claims them, and the month ends with
the scheduled sweep job, which also runs a pass of every live branch: then each repository holds
exactly the live set, the superseded commits' tags gone.

CI runs three small months, the third with retention on. By hand:

    TAGSWEEPER_MONTH_SEEDS=1-20 TAGSWEEPER_MONTH_SCALE=full .venv/bin/python -m pytest tests/test_month.py
    TAGSWEEPER_MONTH_SEEDS=1-10 TAGSWEEPER_MONTH_KEEP_COMMITS=3 .venv/bin/python -m pytest tests/test_month.py

(seeds: "7", "1-20" or "1,4,9"; scale: "ci" (default, ~70 s a month on two cores) or "full",
~120 branches and ~80 merges, ~2.5 min a month). A failure names the seed, the tag, the repository
and the burst, groups the violations by cause (the job that deleted the tag, from the audit
trail), and shows the audit trail and the event-log lines of the first of each cause; the test's
tmp directory keeps month.log (every event, pipeline, image push and delivery with its fate),
worker.log, sweep.json and report.txt. Add --basetemp=DIR to keep them where you want.
"""

from __future__ import annotations

import os
import time

import pytest

import datetime as dt

from tests.support.month import METHODS, MonthRun, generate, silent
from tests.support.service import Service

CI_SEEDS = (1, 2, 3)
CI_MONTHS = ((1, None), (2, None), (3, 3))  # (seed, KEEP_COMMITS): the third month with retention on
RECHECK = "3"  # IN_USE_RECHECK, seconds: a re-check runs in a burst a few events later
RETIRE_DELAY = "1"  # seconds: a retention pass runs in a burst after the pipeline that asked for it


def _months() -> list[tuple[int, int | None]]:
    text = os.environ.get("TAGSWEEPER_MONTH_SEEDS", "").strip()
    if not text:
        return list(CI_MONTHS)
    keep = os.environ.get("TAGSWEEPER_MONTH_KEEP_COMMITS", "").strip()
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return [(seed, int(keep) if keep else None) for seed in seeds]


def retention_env(keep: int | None) -> dict[str, str]:
    if keep is None:
        return {}
    return {"KEEP_COMMITS": str(keep), "KEEP_COMMITS_MIN_AGE": "0", "RETIRE_DELAY": RETIRE_DELAY}


SCALE = os.environ.get("TAGSWEEPER_MONTH_SCALE", "ci").strip() or "ci"


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_the_generator_is_deterministic_and_covers_the_month(seed):
    """Each CI month is the same every time and has every kind of event the simulation is for."""
    script = generate(seed, "ci")
    assert script == generate(seed, "ci")
    assert script != generate(seed + 100, "ci")
    seen = script.coverage()
    for method in METHODS:
        assert seen[f"method:{method}"] >= 1, f"no {method} merge"
    for what in ("stacked_branch", "slug_collision", "reused_name", "release", "bulk_delete",
                 "fate:dropped", "fate:twice", "fate:late", "pipeline:mr", "pipeline:merged_results",
                 "pipeline:tag",
                 "deploy:review", "deploy:production", "deploy:staging", "deploy:mr_ref", "deploy:later",
                 "rollback", "review:stopped_on_merge", "review:left_running", "review:auto_stopped",
                 "stop_env", "stop:stopping"):
        assert seen[what] >= 1, f"no {what}"
    assert seen["deploy:failed"] + seen["deploy:canceled"] >= 1, "no deployment that did not succeed"
    hooks = [d for st in script.steps for d in script.deliveries_of(st) if d.hook == "deployment"]
    assert {"running", "success"} <= {d.what for d in hooks}
    assert {d.fate for d in hooks} >= {"once", "dropped"}, "Deployment Hooks are lost like the others"
    bulk = [s for s in script.steps if s.kind == "bulk_delete"]
    assert all(len(s.names) >= 4 and not s.deliveries for s in bulk)  # GitLab sends no hook for those
    assert script.bursts and max(script.bursts) < len(script.steps)
    gaps = [b - a for a, b in zip([-1, *sorted(script.bursts)], sorted(script.bursts))]
    assert max(gaps) <= 40


@pytest.mark.e2e
@pytest.mark.timeout(3600 if SCALE == "full" else 600)
@pytest.mark.parametrize("seed, keep", _months(), ids=lambda v: "off" if v is None else str(v))
def test_a_month_converges_to_exactly_the_live_set(seed, keep, gitlab, redis_url, tmp_path):
    script = generate(seed, SCALE)
    service = Service(tmp_path / "service", redis_url, gitlab.url, gitlab.token, SWEEP_CRON="off",
                      IN_USE_RECHECK=RECHECK, **retention_env(keep)).start_web()
    month = MonthRun(script, gitlab, service, tmp_path, keep_commits=keep)
    started = time.monotonic()
    try:
        month.run()
        extras, missing = month.final_difference()
        jobs = month.jobs_not_done()
        month.log(f"done in {time.monotonic() - started:.1f}s; bursts took {sum(month.burst_seconds):.1f}s")
        print(f"month seed={seed} scale={SCALE} keep_commits={keep}: {len(script.steps)} steps, "
              f"{month.bursts} bursts, {time.monotonic() - started:.1f}s; log {month.log_path}")
        if month.violations or extras or missing or jobs:
            report = month.report(extras, missing, jobs)
            (tmp_path / "report.txt").write_text(report)
            pytest.fail(report, pytrace=False)
    finally:
        month.close()
        service.stop()


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_an_empty_redis_and_a_year_of_history_converge_with_the_first_sweep(gitlab, redis_url, tmp_path):
    """The day tagsweeper is installed: a year of a busy project's history (a CI-scale month's
    events spread over a year, pipelines dated as GitLab keeps them), not one delivery ever
    received, an empty Redis. One `tagsweeper sweep` finds from GitLab's record alone every
    dead branch and the commits it built, and leaves each repository holding exactly the live set."""
    script = silent(generate(11, "ci"))
    assert not script.bursts and all(d.fate == "dropped" for st in script.steps for d in st.deliveries)
    service = Service(tmp_path / "service", redis_url, gitlab.url, gitlab.token, SWEEP_CRON="off",
                      IN_USE_RECHECK=RECHECK).start_web()
    year_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=365)
    month = MonthRun(script, gitlab, service, tmp_path, history_start=year_ago)
    try:
        month.run()
        extras, missing = month.final_difference()
        assert month.sweep_report and month.sweep_report.get("pipelines_read", 0) >= 100
        if month.violations or extras or missing:
            report = month.report(extras, missing, month.jobs_not_done())
            (tmp_path / "report.txt").write_text(report)
            pytest.fail(report, pytrace=False)
        # Something was there to clean: the sweep deleted dead branches' tags, not nothing.
        assert month.sweep_report["summary"].get("deleted", 0) > 0
    finally:
        month.close()
        service.stop()
