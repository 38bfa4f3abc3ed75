"""A cleanup's, a sweep's or a retention pass's report as people read it at a terminal (`--json` prints it as it is).

Both are a workers.report.Report's `as_dict()`; a sweep adds what it scanned, and a group
sweep is a list of project sweeps. They read alike: a head line, the repositories, then
the tags grouped by decision, each with its reason, and a summary.
"""

from __future__ import annotations

from typing import Any

# A cleanup's kept tags are its plan's reasons to spare them; a sweep's are mostly "unclear",
# and can be many: its failures come first.
CLEANUP_ORDER = ("deleted", "would_delete", "kept", "failed", "absent")
SWEEP_ORDER = ("deleted", "would_delete", "failed", "kept", "absent")


def cleanup(report: dict[str, Any]) -> str:
    """`tagsweeper cleanup`'s report."""
    head = f"{_dry_run(report)}cleanup of branch {report['branch']!r} in {_project(report)} ({report['trigger']})"
    return _report(head, report, CLEANUP_ORDER)


def sweep(report: dict[str, Any]) -> str:
    """One project's sweep report (or its failure, in a group sweep)."""
    head = f"{_dry_run(report)}sweep of {_project(report)}"
    if report.get("error"):
        return f"{head}\n  failed: {report['error']}"
    scanned = (f"  scanned {report['scanned']} tags: {report['kept_by_rule']} kept by the rules "
               f"(protected, or a live ref's), {report['unclear']} unclear (kept)")
    return _report(head, report, SWEEP_ORDER, scanned)


def group_sweep(result: dict[str, Any]) -> str:
    """A group's sweep: a head line, then each project's report."""
    head = (f"{_dry_run(result)}sweep of group {result['group']}: "
            f"{len(result['projects'])} project(s), {result['failed']} failed")
    return "\n\n".join([head, *(sweep(r) for r in result["projects"])])


def retention(result: dict[str, Any]) -> str:
    """`tagsweeper retire`'s report: one branch's, or a head line and each branch's."""
    if "branches" not in result:
        return _retention_branch(result)
    head = (f"{_dry_run(result)}retention on the live branches of {_project(result)}: "
            f"{len(result['branches'])} branch(es)")
    if not result["branches"]:
        return f"{head}\n  no live branch that KEEP_COMMITS_BRANCHES matches has run a pipeline: nothing to do"
    return "\n\n".join([head, *(_retention_branch(r) for r in result["branches"])])


def _retention_branch(report: dict[str, Any]) -> str:
    head = f"{_dry_run(report)}retention pass of branch {report['branch']!r} in {_project(report)} (superseded)"
    stats = report.get("retention") or {}
    details = []
    if stats:
        details.append(f"  built {stats.get('built', 0)} commits: keeps the newest {stats.get('keep')}, "
                       f"{stats.get('retired_before', 0)} retired before, {stats.get('candidates', 0)} decided now")
    if not report.get("skipped") and not stats.get("candidates") and not report["decisions"]:
        return "\n".join([head, *details, "  summary: nothing to do"])
    return _report(head, report, CLEANUP_ORDER, *details)


def _report(head: str, report: dict[str, Any], order: tuple[str, ...], *details: str) -> str:
    lines = [head]
    if report.get("skipped"):
        lines.append(f"  skipped: {report['skipped']}")
        return "\n".join(lines)
    lines.append(f"  repositories: {', '.join(report['repositories']) or '(none)'}")
    lines.extend(details)
    for outcome in order:
        items = [d for d in report["decisions"] if d["decision"] == outcome]
        if not items:
            continue
        lines.append(f"  {outcome.replace('_', ' ')} ({len(items)}):")
        for d in items:
            where = d["repository"] or "all repositories"
            lines.append(f"    {where}:{d['tag']}  ({d['reason']})")
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["summary"].items() if v)
    lines.append(f"  summary: {summary or 'nothing to do'}")
    return "\n".join(lines)


def _dry_run(report: dict[str, Any]) -> str:
    return "DRY RUN: " if report.get("dry_run") else ""


def _project(report: dict[str, Any]) -> Any:
    return report.get("project") or report.get("project_id")
