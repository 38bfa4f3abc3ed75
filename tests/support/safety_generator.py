"""The Hypothesis strategy of the safety property: `projects()` draws a GitLab project's history.

Random histories over small pools of SHAs and branch names (so slug and short-SHA collisions are
the rule): commits, branches, pipelines seen or lost, git tags, merge requests opened, closed and
merged by any of GitLab's four methods (`apply_merge`, rebasing first where a fast-forward needs
it), then the cleanup event (B's merge request merged, or B deleted) and the late events before
the worker runs (`LATE_OPS`). It builds the model of tests/support/safety_model.py; the property
is tests/test_safety_property.py.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.support.safety_model import (
    BRANCH_NAMES, DEFAULT_NAMES, GIT_TAG_NAMES, MERGE_METHODS, SHA_POOL, TEMP_POOL, MergeRequest, Project, ci_slug,
    event,
)

OPS = ("commit", "branch", "pipeline", "old_pipeline", "tag", "untag", "open_mr", "mr_pipeline",
       "close_mr", "merge", "delete", "short_lived", "orphaned_mr")
LATE_OPS = OPS + ("from_b", "recreate_b", "tag_b", "target_moves")


def fresh_sha(draw, exclude) -> str | None:
    """A commit for a new commit object: from the pool, not one the branch already holds."""
    choices = [s for s in SHA_POOL if s not in set(exclude)]
    return draw(st.sampled_from(choices)) if choices else None


def apply_merge(pr: Project, mr: MergeRequest, method: str, draw, seen) -> bool:
    """Merge an open merge request the way GitLab does (gitlab.md, and the emulator's merge()):
    a fast-forward needs the target's head in the source, so a source that is behind is rebased
    first (its commits become new ones on top of the target). False when there is nothing to merge."""
    src, dst = mr.source, mr.target
    if method in ("ff", "squash_ff") and pr.branches[dst][-1] not in pr.branches[src]:
        new = []
        for _ in mr.commits or (None,):
            sha = fresh_sha(draw, pr.branches[dst] + new)
            if sha is None:
                break
            new.append(sha)
        if not new:
            return False
        pr.set_branch(src, pr.branches[dst] + new)
        pr.log.append(f"rebase {src!r} onto {dst!r}: {[s[:8] for s in new]}")
        if draw(st.booleans()):
            pr.run_pipeline("branch", src, new[-1], seen())
    if not mr.commits:
        return False
    history = pr.branches[dst]
    mr.state, mr.method = "merged", method          # its commits are frozen from here on
    taken = history + list(mr.commits)

    def new_commit() -> str:  # a merge or squash commit is a new commit (the pool may have run out)
        sha = fresh_sha(draw, taken) or draw(st.sampled_from(SHA_POOL))
        taken.append(sha)
        return sha

    if method == "merge":
        mr.merge_commit_sha = new_commit()
        pr.set_branch(dst, history + list(mr.commits) + [mr.merge_commit_sha])
    elif method == "ff":
        pr.set_branch(dst, history + list(mr.commits))
    elif method == "squash":
        mr.squash_commit_sha = new_commit()
        mr.merge_commit_sha = new_commit()
        pr.set_branch(dst, history + [mr.squash_commit_sha, mr.merge_commit_sha])
    else:  # squash_ff
        mr.squash_commit_sha = new_commit()
        pr.set_branch(dst, history + [mr.squash_commit_sha])
    mr.squash = method.startswith("squash")
    pr.log.append(f"merge {mr}; {dst!r} now at {pr.branches[dst][-1][:8]}")
    event(f"merge method: {method}")
    return True


@st.composite
def projects(draw) -> Project:
    default = draw(st.sampled_from(DEFAULT_NAMES))
    cleaned = draw(st.sampled_from([n for n in BRANCH_NAMES if n != default]))
    pr = Project(default=default, cleaned=cleaned, tag_images=draw(st.sampled_from(("name", "slug"))))
    pr.set_branch(default, [draw(st.sampled_from(SHA_POOL))])
    # Which Pipeline Hooks reached memory: any subset, and often all of them or none.
    hooks = draw(st.sampled_from(("some", "some", "none", "all")))
    event(f"hooks received: {hooks}")

    def seen() -> bool:
        return hooks == "all" or (hooks == "some" and draw(st.booleans()))

    # Half the time a new branch is one of B's namesakes (same slug), so slug clashes are common.
    namesakes = [n for n in BRANCH_NAMES if ci_slug(n) == ci_slug(cleaned) and n not in (default, cleaned)]

    def any_commit(prefer_b: bool) -> str:
        everything = sorted({s for h in pr.ever_on.values() for s in h})
        mine = sorted(set(pr.b_history) | pr.ever_on[cleaned])
        if prefer_b and mine and draw(st.booleans()):
            return draw(st.sampled_from(mine))
        return draw(st.sampled_from(everything))

    def step(late: bool) -> None:
        op = draw(st.sampled_from(LATE_OPS if late else OPS))
        names = [n for n in BRANCH_NAMES if n != default and not (late and n == cleaned)]
        if namesakes and draw(st.booleans()):
            names = namesakes
        movable = sorted(n for n in pr.branches if not (late and n == cleaned))
        if op == "commit":                     # push one commit, usually with its pipeline
            name = draw(st.sampled_from(movable))
            sha = draw(st.sampled_from(SHA_POOL))
            pr.set_branch(name, pr.branches[name] + [sha])
            pr.log.append(f"commit {sha[:8]} on {name!r}")
            if draw(st.booleans()):
                pr.run_pipeline("branch", name, sha, seen())
        elif op == "branch":                   # create from another branch's head, or from any commit
            name = draw(st.sampled_from(names))
            if name in pr.branches:
                return
            if draw(st.booleans()):
                source = draw(st.sampled_from(sorted(pr.branches)))
                history = list(pr.branches[source])
                pr.log.append(f"branch {name!r} from {source!r} at {history[-1][:8]}")
            else:
                history = [any_commit(late)]
                pr.log.append(f"branch {name!r} from commit {history[0][:8]}")
            pr.set_branch(name, history)
            if draw(st.booleans()):
                pr.run_pipeline("branch", name, history[-1], seen())
        elif op == "pipeline":                 # a pipeline on a branch head (retry, schedule, web)
            name = draw(st.sampled_from(movable))
            pr.run_pipeline("branch", name, pr.branches[name][-1], seen())
        elif op == "old_pipeline":             # a pipeline created late for an older commit of a branch
            name = draw(st.sampled_from(movable))
            history = pr.branches[name]
            mine = [s for s in history if s in pr.ever_on[cleaned] or s in pr.b_history]
            sha = draw(st.sampled_from(mine if mine and draw(st.booleans()) else history))
            pr.run_pipeline("branch", name, sha, seen())
            if late and (sha in pr.b_history or sha in pr.ever_on[cleaned]):
                event("late: a live branch's pipeline on one of B's commits")
        elif op in ("tag", "tag_b"):           # git tag on some commit, maybe with a tag pipeline
            name = draw(st.sampled_from(GIT_TAG_NAMES))
            if name in pr.tags:
                return
            sha = pr.last_commit if op == "tag_b" else any_commit(late)
            pr.tags[name] = sha
            pr.ever_tags.add(name)
            pr.log.append(f"git tag {name!r} on {sha[:8]}")
            if draw(st.booleans()):
                pr.run_pipeline("tag", name, sha, seen())
        elif op == "untag":
            if pr.tags:
                name = draw(st.sampled_from(sorted(pr.tags)))
                del pr.tags[name]
                pr.log.append(f"delete git tag {name!r}")
        elif op == "open_mr":
            if len(movable) < 2:
                return
            source = draw(st.sampled_from(movable))
            target = draw(st.sampled_from([n for n in movable if n != source]))
            if not any(mr.source == source and mr.target == target for mr in pr.open_mrs()):
                pr.open_mr(source, target)
        elif op == "mr_pipeline":              # a merge request pipeline: on its head, or merged results
            mrs = [mr for mr in pr.open_mrs() if mr.sha]
            if mrs:
                mr = draw(st.sampled_from(mrs))
                if draw(st.booleans()):
                    pr.run_pipeline("mr", f"refs/merge-requests/{mr.iid}/head", mr.sha, seen(), mr.source)
                else:
                    pr.run_pipeline("mr", f"refs/merge-requests/{mr.iid}/merge", draw(st.sampled_from(TEMP_POOL)),
                                    seen(), mr.source)
        elif op == "close_mr":
            mrs = pr.open_mrs()
            if mrs:
                mr = draw(st.sampled_from(mrs))
                mr.state = "closed"
                pr.log.append(f"close !{mr.iid}")
        elif op == "merge":                    # merge another branch's merge request (not B's: B's is the event)
            if len(movable) < 2:
                return
            mrs = [mr for mr in pr.open_mrs() if mr.source in movable and mr.target in movable
                   and mr.source != cleaned]
            if mrs and draw(st.booleans()):
                mr = draw(st.sampled_from(mrs))
            else:
                candidates = [n for n in movable if n != cleaned]
                if len(candidates) < 2:
                    return
                source = draw(st.sampled_from(candidates))
                mr = pr.open_mr(source, draw(st.sampled_from([n for n in movable if n != source])))
            if apply_merge(pr, mr, draw(st.sampled_from(MERGE_METHODS)), draw, seen):
                if draw(st.booleans()):
                    pr.run_pipeline("branch", mr.target, pr.branches[mr.target][-1], seen())
                if mr.source != default and draw(st.booleans()):
                    pr.delete_branch(mr.source)
                    pr.log.append(f"delete branch {mr.source!r}")
        elif op == "delete":
            victims = [n for n in movable if n != default]
            in_use = [n for n in victims if any(mr.source == n for mr in pr.open_mrs())]
            if in_use and draw(st.booleans()):   # the source of an open merge request: it stays open
                victims = in_use
            if victims:
                name = draw(st.sampled_from(victims))
                pr.delete_branch(name)
                pr.log.append(f"delete branch {name!r}")
        elif op == "short_lived":              # a branch from another's head (often B's), built, deleted
            name = draw(st.sampled_from(names))
            if name in pr.branches:
                return
            sources = sorted(pr.branches)
            source = cleaned if cleaned in sources and draw(st.booleans()) else draw(st.sampled_from(sources))
            history = list(pr.branches[source])
            pr.set_branch(name, history)
            pr.log.append(f"branch {name!r} from {source!r} at {history[-1][:8]}")
            pr.run_pipeline("branch", name, history[-1], seen())
            pr.delete_branch(name)
            pr.log.append(f"delete branch {name!r}")
        elif op == "orphaned_mr":              # a branch off B's work, built, its MR opened, the branch deleted
            name = draw(st.sampled_from(names))
            if name in pr.branches or (cleaned not in pr.branches and not pr.b_history):
                return
            history = list(pr.branches[cleaned] if cleaned in pr.branches else pr.b_history)
            pr.set_branch(name, history)
            pr.log.append(f"branch {name!r} from B at {history[-1][:8]}")
            pr.run_pipeline("branch", name, history[-1], seen())
            sha = draw(st.sampled_from(SHA_POOL))
            pr.set_branch(name, history + [sha])
            pr.log.append(f"commit {sha[:8]} on {name!r}")
            if draw(st.booleans()):
                pr.run_pipeline("branch", name, sha, seen())
            pr.open_mr(name, draw(st.sampled_from(sorted(n for n in pr.branches if n not in (name, cleaned)))))
            pr.delete_branch(name)
            pr.log.append(f"delete branch {name!r} (its merge request stays open)")
        elif op == "from_b":                   # a branch created from B's last commit
            name = draw(st.sampled_from(names))
            if name not in pr.branches:
                pr.set_branch(name, list(pr.b_history))
                pr.log.append(f"branch {name!r} from B's last commit {pr.last_commit[:8]}")
                event("late: a branch created from B's head")
                if draw(st.booleans()):
                    pr.run_pipeline("branch", name, pr.last_commit, seen())
        elif op == "recreate_b":               # B is pushed again
            if cleaned in pr.branches:
                return
            if draw(st.booleans()):
                history = list(pr.b_history)
            else:
                history = list(pr.branches[draw(st.sampled_from(sorted(pr.branches)))])
            if draw(st.booleans()):
                history.append(draw(st.sampled_from(SHA_POOL)))
            pr.set_branch(cleaned, history)
            pr.log.append(f"branch {cleaned!r} created again at {history[-1][:8]}")
            event("late: B created again")
            if draw(st.booleans()):
                pr.run_pipeline("branch", cleaned, history[-1], seen())
            if draw(st.booleans()):
                pr.open_mr(cleaned, draw(st.sampled_from(sorted(n for n in pr.branches if n != cleaned))))
        elif op == "target_moves":             # the merge's target branch goes on
            if pr.target in pr.branches and pr.target != cleaned:
                sha = draw(st.sampled_from(SHA_POOL))
                pr.set_branch(pr.target, pr.branches[pr.target] + [sha])
                pr.log.append(f"commit {sha[:8]} on {pr.target!r} (the target moves on)")
                event("late: the target moved on")
                if draw(st.booleans()):
                    pr.run_pipeline("branch", pr.target, sha, seen())

    for _ in range(draw(st.integers(0, 12))):
        step(late=False)

    # B must exist when its merge or deletion happens; maybe with work of its own.
    if cleaned not in pr.branches:
        source = draw(st.sampled_from(sorted(pr.branches)))
        pr.set_branch(cleaned, list(pr.branches[source]))
        pr.log.append(f"branch {cleaned!r} from {source!r}")
    for _ in range(draw(st.integers(0, 2))):
        sha = draw(st.sampled_from(SHA_POOL))
        pr.set_branch(cleaned, pr.branches[cleaned] + [sha])
        pr.log.append(f"commit {sha[:8]} on {cleaned!r}")
        if draw(st.booleans()):
            pr.run_pipeline("branch", cleaned, sha, seen())

    # The event: B's merge request is merged, or B is deleted.
    trigger = draw(st.sampled_from(("merge", "branch_deleted")))
    if trigger == "merge":
        mine = [mr for mr in pr.open_mrs() if mr.source == cleaned]
        mr = draw(st.sampled_from(mine)) if mine and draw(st.booleans()) else pr.open_mr(
            cleaned, draw(st.sampled_from(sorted(n for n in pr.branches if n != cleaned))))
        if not mr.commits:                     # GitLab merges nothing without a commit: push one
            sha = fresh_sha(draw, pr.branches[mr.target])
            if sha is not None:
                pr.set_branch(cleaned, pr.branches[cleaned] + [sha])
                pr.log.append(f"commit {sha[:8]} on {cleaned!r}")
                if draw(st.booleans()):
                    pr.run_pipeline("branch", cleaned, sha, seen())
        if mr.commits and draw(st.booleans()):
            if draw(st.booleans()):
                pr.run_pipeline("mr", f"refs/merge-requests/{mr.iid}/head", mr.sha, seen(), cleaned)
            else:
                pr.run_pipeline("mr", f"refs/merge-requests/{mr.iid}/merge", draw(st.sampled_from(TEMP_POOL)),
                                seen(), cleaned)
        if mr.commits and apply_merge(pr, mr, draw(st.sampled_from(MERGE_METHODS)), draw, seen):
            pr.trigger, pr.target, pr.mr_iid, pr.last_commit = "merge", mr.target, mr.iid, mr.sha
            pr.b_history = list(pr.branches[cleaned])
            if draw(st.booleans()):
                pr.run_pipeline("branch", mr.target, pr.branches[mr.target][-1], seen())
            if draw(st.booleans()):
                pr.delete_branch(cleaned)             # force_remove_source_branch
                pr.log.append(f"delete branch {cleaned!r}")
        else:
            trigger = "branch_deleted"
    if trigger == "branch_deleted":
        pr.trigger = "branch_deleted"
        pr.last_commit = pr.branches[cleaned][-1]     # the push's `before`
        pr.b_history = list(pr.branches[cleaned])
        pr.delete_branch(cleaned)
        pr.log.append(f"delete branch {cleaned!r} (push with after=000…)")
    # Merge requests B still had open: usually closed by then, else the cleanup is skipped.
    for mr in pr.open_mrs():
        if mr.source == cleaned and mr.iid != pr.mr_iid and draw(st.booleans()):
            mr.state = "closed"
            pr.log.append(f"close !{mr.iid}")
    pr.log.append("-- cleanup event; CLEANUP_DELAY (or a long outage) passes --")

    for _ in range(draw(st.integers(0, 6))):   # the project goes on before the worker looks
        step(late=True)
    return pr
