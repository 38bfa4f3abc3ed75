"""Reconciliation ("sweep"): find the image tags of branches that no longer exist and clean them.

GitLab never re-sends a failed delivery, sends no Push Hook at all for a push that changes
more than three branches, and nothing arrives while the service is down: branches vanish
without tagsweeper hearing of it. A sweep goes over every tag of a project's registry
repositories, a page at a time, and deletes only what it can show belongs to a dead branch
(see `rules.sweep_tag` / `rules.sweep_commit`), with the same protection rules
(`rules.live_owners`, PROTECTED_TAGS, what live environments run or may roll back to:
workers/deployments.py) and the same deletion path as an event cleanup (workers/deletion.py,
`Report`). What it cannot attribute is kept and reported as unclear; what only environments
keep is kept and listed, and goes in the first sweep after they are stopped.

Memory stays flat on big registries: tags are listed and decided a page at a time; what is
held for the whole sweep is the project's refs (live branches, git tags, known branch names)
and a bounded cache of commit lookups.

It runs by hand (`tagsweeper sweep`), as the job `workers.jobs.sweep_project`, and on a
schedule inside `tagsweeper worker` (`Scheduler`, SWEEP_CRON).

    facts.py     what a sweep knows: the project's refs (`gather`) and its commits (`Commits`)
    project.py   one project: list, decide and clean its tags a page at a time (`run_project`)
    group.py     every project of a group (`run_group`)
    schedule.py  which projects the schedule sweeps, and when (`enqueue_scheduled`, `Scheduler`)
"""

from workers.sweep.group import run_group
from workers.sweep.project import PAGE_SIZE, ProjectSweep, SweepError, run_project
from workers.sweep.schedule import (PROJECTS_KEY, Scheduler, enqueue_scheduled, forget_project, job_id,
                                    remember_project, scheduled_projects, slot_of)

__all__ = ["PAGE_SIZE", "PROJECTS_KEY", "ProjectSweep", "Scheduler", "SweepError", "enqueue_scheduled",
           "forget_project", "job_id", "remember_project", "run_group", "run_project", "scheduled_projects",
           "slot_of"]
