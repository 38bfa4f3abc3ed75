"""What every `tagsweeper` command shares: how a project is named, and how a command runs.

`project` and `group` are the argparse types of --project and --group. `run` is the skeleton
every command runs in: it reads the settings, sets up logging and calls the command's
`handler(args, settings) -> exit status`; then it turns a failure into one line on stderr
and an exit status:

- a setting missing or malformed (ConfigError): "tagsweeper: configuration error: ...", 2;
- Redis unreachable: "tagsweeper: Redis at REDIS_URL is unreachable (...)", 1;
- a failure the command foresaw (CommandError): "tagsweeper: <its message>", its status.

`run_by_hand` is what `sweep` and `retire` share: their clients, progress line and exit statuses.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Callable

import redis

from workers import cleanup
from workers.common import errors, logs
from workers.common.projects import parse_project
from workers.common.settings import ConfigError, Settings
from workers.gitlab import GitLab


class CommandError(Exception):
    """A command's failure, with the message to print and the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def at_least_one(unit: str) -> Callable[[str], int]:
    """An argparse type: a whole number of `unit` (seconds, entries), at least 1."""

    def parse(value: str) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"{value!r}: give a whole number of {unit}, at least 1")
        return number

    parse.__name__ = unit  # argparse names the type in its error message
    return parse


def project(value: str) -> int | str:
    """--project: a numeric project id or a path like group/project."""
    try:
        return parse_project(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def group(value: str) -> int | str:
    """--group: a numeric group id or a path like group or group/subgroup (named as projects are)."""
    try:
        return parse_project(value)
    except ValueError:
        raise argparse.ArgumentTypeError("give a numeric group id or a path like group or group/subgroup") from None


def run(args: argparse.Namespace) -> int:
    """Run the command `args` names (its `handler`); return the process's exit status."""
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        return args.handler(args, settings)
    except ConfigError as exc:
        print(f"tagsweeper: configuration error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"tagsweeper: {exc}", file=sys.stderr)
        return exc.status
    except redis.RedisError as exc:
        return say_redis_unreachable(exc)


def say_redis_unreachable(exc: BaseException) -> int:
    """Tell a person at a terminal that Redis is down; exit status 1. Only the error's type is
    shown: its text could quote REDIS_URL, and with it a password."""
    print(f"tagsweeper: Redis at REDIS_URL is unreachable ({type(exc).__name__}); "
          "start redis-server or set REDIS_URL", file=sys.stderr)
    return 1


def quiet_logs(settings: Settings) -> None:
    """Log warnings and errors only: the printed report says it all."""
    logs.configure(settings.log_format, level=logging.WARNING)


def answer(args: argparse.Namespace, value: Any, as_text: Callable[[Any], str], **json_options: Any) -> str:
    """A command's answer: JSON with --json, else the text people read."""
    return json.dumps(value, indent=2, **json_options) if args.json else as_text(value)


class Terminal:
    """One self-overwriting progress line on stderr (only used when stderr is a terminal)."""

    def __init__(self, stream):
        self.stream = stream
        self.shown = False
        self.last = 0.0

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        self.stream.write("\r\x1b[K" + text[:200])
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run_by_hand(args: argparse.Namespace, settings: Settings, call: Callable[..., Any],
                invalid: type[Exception]) -> tuple[Any, int]:
    """What `sweep` and `retire` share: run `call` (a sweep or retention run) as the operator's own
    choice, with progress on a terminal; return (its report, exit status). Some deletions failed:
    the partial report and 1; `invalid` (an unknown project, say): CommandError 2; GitLab or the
    registry refused or kept failing: CommandError 1."""
    settings.require_gitlab()
    if not args.json:
        quiet_logs(settings)
    terminal = Terminal(sys.stderr) if sys.stderr.isatty() else None
    gitlab = GitLab.from_settings(settings)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        return call(gitlab=gitlab, conn=conn, settings=settings, dry_run=True if args.dry_run else None,
                    progress=terminal, by_operator=True), 0  # by hand: ALLOWED_PROJECTS does not apply
    except cleanup.CleanupIncomplete as exc:
        return exc.report, 1
    except invalid as exc:
        raise CommandError(str(exc), 2) from None
    except errors.ServiceError as exc:  # GitLab's or the registry's
        raise CommandError(str(exc), 1) from None
    finally:
        if terminal:
            terminal.clear()
        gitlab.close()
        conn.close()
