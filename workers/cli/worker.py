"""`tagsweeper worker`: run a worker (workers.worker) until stopped."""

from __future__ import annotations

import argparse

from workers.cli.command import at_least_one
from workers import worker
from workers.common.settings import DEFAULT_ABANDONED_AFTER, DEFAULT_MAINTENANCE_INTERVAL, Settings


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "worker", help="run a worker: it runs the queued cleanups and sweeps",
        description="Run an RQ worker, with its scheduler, on the cleanup queue (RQ_QUEUE): it runs the "
                    "cleanups the webhook receiver accepted, their retries, and the sweeps. It waits out "
                    "a Redis restart, retries the jobs of workers that died, and enqueues the scheduled "
                    "sweeps (SWEEP_CRON). Run as many as you like; stop one with Ctrl-C or SIGTERM.")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--name", help="the worker's name, as `tagsweeper status` and the dashboard show it "
                                  "(default: a random one)")
    p.add_argument("--maintenance-interval", type=at_least_one("seconds"), metavar="SECONDS",
                   help="how often this worker runs RQ's maintenance, which retries the jobs of dead "
                        f"workers (default: WORKER_MAINTENANCE_INTERVAL or {DEFAULT_MAINTENANCE_INTERVAL})")
    p.add_argument("--abandoned-after", type=at_least_one("seconds"), metavar="SECONDS",
                   help="a running job whose worker sent no heartbeat for this long is abandoned and "
                        f"retried (default: WORKER_ABANDONED_AFTER or {DEFAULT_ABANDONED_AFTER}; at least 2)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    worker.run(settings, name=args.name, burst=args.burst, maintenance_interval=args.maintenance_interval,
               abandoned_after=args.abandoned_after)
    return 0
