"""`tagsweeper register` and `tagsweeper unregister`: tagsweeper's webhook on a project or group
(what they do: workers.registration).

Exit status: 0 done (or nothing to do), 1 GitLab said no (unknown project or group,
token refused, ...), 2 bad usage or configuration (a URL that is not http(s), no
WEBHOOK_SECRET). The secret never appears in the output, logs or error messages.
"""

from __future__ import annotations

import argparse
import json

from workers import registration
from workers.cli.command import CommandError, answer, group, project, quiet_logs
from workers.common.settings import ConfigError, Settings
from workers.gitlab import GitLab
from workers.registration import RECEIVER_PATH, RegistrationError, redact


def _url(value: str) -> str:
    try:
        return registration.check_url(value)
    except RegistrationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(subparsers) -> None:
    for name, help_text, description, handler in (
        ("register", "create or update tagsweeper's webhook on a project or group",
         "Create tagsweeper's webhook on a project or group, or update the one with this URL: merge "
         "request, push, pipeline and deployment events, with the first value of WEBHOOK_SECRET as its secret token. "
         "Running it twice leaves one hook.", run_register),
        ("unregister", "delete tagsweeper's webhook from a project or group",
         "Delete every hook with this URL from a project or group.", run_unregister),
    ):
        p = subparsers.add_parser(name, help=help_text, description=description)
        owner = p.add_mutually_exclusive_group(required=True)
        owner.add_argument("--project", type=project, help="project id or path (group/project)")
        owner.add_argument("--group", type=group, help="group id or path (group webhooks need a paid tier)")
        p.add_argument("--url", required=True, type=_url,
                       help=f"the receiver's URL, e.g. https://tagsweeper.example.com{RECEIVER_PATH}")
        p.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "register":
            p.add_argument("--no-ssl-verification", action="store_true",
                           help="let GitLab deliver to a receiver whose certificate it cannot verify")
            p.add_argument("--prune-duplicates", action="store_true",
                           help="delete the other hooks with the same URL (default: only report them)")
        p.set_defaults(handler=handler)


def run_register(args: argparse.Namespace, settings: Settings) -> int:
    secret = registration.webhook_secret(settings)
    return _run(args, settings, secret, lambda gitlab, owner: registration.register(
        gitlab, owner, args.url, secret, ssl_verification=not args.no_ssl_verification,
        dry_run=args.dry_run, prune_duplicates=args.prune_duplicates))


def run_unregister(args: argparse.Namespace, settings: Settings) -> int:
    try:
        secret = registration.webhook_secret(settings)  # only to keep it out of the output, should GitLab echo it
    except ConfigError:
        secret = None
    return _run(args, settings, secret, lambda gitlab, owner: registration.unregister(
        gitlab, owner, args.url, dry_run=args.dry_run))


def _run(args: argparse.Namespace, settings: Settings, secret: str | None, action) -> int:
    settings.require_gitlab()
    quiet_logs(settings)
    kind, ref = ("project", args.project) if args.project is not None else ("group", args.group)
    gitlab = GitLab.from_settings(settings)
    try:
        owner = registration.resolve(gitlab, kind, ref)
        result = action(gitlab, owner)
    except RegistrationError as exc:
        raise CommandError(redact(str(exc), secret), exc.status) from None
    finally:
        gitlab.close()
    print(redact(answer(args, result, format_text), secret))
    return 0


def _ids(ids: list[int]) -> str:
    return ("hook " if len(ids) == 1 else "hooks ") + ", ".join(str(i) for i in ids)


def _value(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def format_text(result: dict) -> str:
    owner = f"{result['owner']['kind']} {result['owner']['path']}"
    would = result["dry_run"]
    lines = []
    if result["command"] == "register":
        if result["action"] == "created":
            what = (f"would create a hook on {owner}" if would
                    else f"created hook {result['hook_id']} on {owner}")
            lines.append(f"{what} for {result['url']} (merge request, push, pipeline and deployment events; "
                         f"SSL verification {'on' if result['enable_ssl_verification'] else 'off'}; secret token set)")
        else:
            verb = "would update" if would else "updated"
            token = "token would be re-sent" if would else "token re-sent"
            changes = result["changes"]
            if changes:
                detail = "; ".join(f"{k} {_value(old)} -> {_value(new)}" for k, (old, new) in changes.items())
                lines.append(f"{verb} hook {result['hook_id']} on {owner}: {detail}; {token}")
            else:
                lines.append(f"{verb} hook {result['hook_id']} on {owner}: URL, events and SSL verification "
                             f"already matched; {token} (GitLab never shows a hook's token, so it is always sent)")
        dups = result["duplicates"]
        if dups and result["duplicates_deleted"]:
            verb = "would delete" if would else "deleted"
            lines.append(f"{verb} duplicate {_ids(result['duplicates_deleted'])} with the same URL")
        elif dups:
            one = len(dups) == 1
            lines.append(f"warning: {_ids(dups)} on {owner} also {'has' if one else 'have'} this URL and "
                         f"{'delivers' if one else 'deliver'} every event again; run register with "
                         f"--prune-duplicates to delete {'it' if one else 'them'}")
        lines += [f"note: {n}" for n in result["notes"]]
    else:
        if result["action"] == "none":
            lines.append(f"no hook for {result['url']} on {owner}: nothing to do")
        for hook_id in result["deleted"]:
            lines.append(f"{'would delete' if would else 'deleted'} hook {hook_id} on {owner} ({result['url']})")
        for hook_id in result["already_gone"]:
            lines.append(f"hook {hook_id} on {owner} was already gone")
    return "\n".join(lines)
