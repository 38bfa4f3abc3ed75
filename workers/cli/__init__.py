"""The `tagsweeper` command line: its parser and `main()`.

One module per command group: worker, cleanup, sweep, retire, webhook (register and unregister),
operations (status and replay) and audit. Each adds its parsers with `add_parsers(subparsers)`
and sets a `handler(args, settings) -> exit status` on each; `command.run` runs the handler
after reading the settings, and turns failures into a message and an exit status.
"""

from __future__ import annotations

import argparse

from workers.cli import audit, cleanup, command, operations, retire, sweep, webhook, worker

COMMAND_GROUPS = (worker, cleanup, sweep, retire, webhook, operations, audit)  # in the order --help lists them

DESCRIPTION = (
    "Delete exactly a branch's container image tags from GitLab's registries once its merge request is "
    "merged or the branch is deleted. The web process receives GitLab's webhooks and `tagsweeper worker` "
    "runs the cleanups; the other commands clean by hand, register the webhook and operate the service."
)
EPILOG = (
    "Settings come from environment variables: GITLAB_URL, GITLAB_TOKEN and REDIS_URL above all (see "
    "the README's Configuration section). Exit status: 0 done, 2 bad usage or configuration, 1 most "
    "other failures; the message on stderr says what went wrong. `tagsweeper COMMAND --help` tells more."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagsweeper", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return command.run(build_parser().parse_args(argv))
