"""The `tagsweeper` command: run the worker, clean a branch by hand, and operate the service.

`cleanup` and `worker` live here; every other command lives in its own module, listed in
COMMAND_MODULES, which exposes `add_commands(subparsers)` and sets `handler=` on each
parser: a function `handler(args, settings) -> exit status`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

import redis

from workers import cleanup, logs
from workers.gitlab import GitLab, GitLabError
from workers.report import format_text
from workers.settings import ConfigError, Settings


def _project(value: str) -> int | str:
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("give a numeric project id or a path like group/project")
    return int(value) if value.isdigit() else value.strip("/")


# Modules adding their own subcommands (see the module docstring).
COMMAND_MODULES: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagsweeper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cleanup", help="clean a branch's image tags now, printing every decision")
    p.add_argument("--project", required=True, type=_project, help="project id or path (group/project)")
    p.add_argument("--branch", required=True, help="branch name, as in git (not the slug)")
    p.add_argument("--dry-run", action="store_true", help="decide and report, delete nothing")
    p.add_argument("--force", action="store_true", help="clean even if the branch still exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_cleanup)

    p = sub.add_parser("worker", help="run an RQ worker (with its scheduler) for the cleanup queue")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--name", help="worker name")
    p.set_defaults(handler=run_worker)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        return args.handler(args, settings)
    except ConfigError as exc:
        print(f"tagsweeper: configuration error: {exc}", file=sys.stderr)
        return 2


def run_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_gitlab()
    if not args.json:
        logs.configure(settings.log_format, level=logging.WARNING)  # the printed report says it all
    request = cleanup.Request(project_id=args.project, branch=args.branch, trigger="manual", force=args.force)
    gitlab = GitLab(settings.gitlab_url, settings.gitlab_token, timeout=settings.http_timeout,
                    pool_size=settings.delete_concurrency + 2)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        report = cleanup.run(request, gitlab=gitlab, conn=conn, settings=settings,
                             dry_run=True if args.dry_run else None)
        status = 0
    except cleanup.CleanupIncomplete as exc:
        report, status = exc.report, 1
    except cleanup.CleanupError as exc:
        print(f"tagsweeper: {exc}", file=sys.stderr)
        return 2
    except GitLabError as exc:
        print(f"tagsweeper: GitLab: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"tagsweeper: Redis at REDIS_URL is unreachable ({type(exc).__name__}); "
              "start redis-server or set REDIS_URL", file=sys.stderr)
        return 1
    finally:
        gitlab.close()
        conn.close()
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return status


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from rq import Queue, Worker

    settings.require_gitlab()
    conn = redis.Redis.from_url(settings.redis_url)
    worker = Worker([Queue(settings.queue, connection=conn)], connection=conn, name=args.name)
    worker.work(with_scheduler=True, burst=args.burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
