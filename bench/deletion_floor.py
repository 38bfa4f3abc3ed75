"""The baseline process of bench/retention.py: delete given tags exactly as a retention pass deletes
its doomed tags, deciding nothing.

    python -m bench.deletion_floor SPEC.json    # {"project_id", "repositories": [as GitLab lists them], "tags"}

Settings come from the environment, as for `tagsweeper` (REGISTRY_MODE, DELETE_CONCURRENCY, ...), and
logging is configured as the `tagsweeper` command does (a line per decision on stderr):
the same store (`workers.deletion.open_store`) and the same `workers.deletion.delete_tags` call as
workers/retention.py, with no GitLab look-up and no rule. It imports only what that needs (not
bench.common and the emulator), so its peak RSS compares with the `tagsweeper retire` process's.
Prints the report (JSON) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from workers import deletion
    from workers.common import logs
    from workers.common.settings import Settings
    from workers.gitlab import GitLab
    from workers.report import Report
    from workers.rules import Code, Decision, Reason

    spec = json.loads(Path(argv[0]).read_text())
    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_format)  # as `tagsweeper retire --json`: a log line per decision
    gitlab = GitLab.from_settings(settings)
    report = Report(spec["project_id"], "main", "superseded", False)
    why = Reason(Code.SUPERSEDED, "the floor: deleted without deciding")
    doomed = [Decision(t, True, why, "commit") for t in spec["tags"]]
    store = deletion.open_store(settings, gitlab, spec["project_id"])
    try:
        deletion.delete_tags(store, report, spec["repositories"], doomed, dry_run=False,
                             concurrency=settings.delete_concurrency)
    finally:
        store.close()
        gitlab.close()
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
