"""Per-branch cleanup locks in Redis: one cleanup of a project's branch at a time, on any worker.

A merge and the deletion of its source branch send two deliveries, so two jobs for the same
branch often run at once on two workers; a replay can add a third. They would make the same
decisions, but interleaved they race on every tag and their reports contradict each other.
So `cleanup.run` holds `BranchLock(project id, branch)` from "look again" to the last delete:

- taken with `SET key token NX PX ttl`, the token unique to this holder;
- renewed every ttl/3 by a thread while held, so a long cleanup keeps it and a holder that
  died (SIGKILL, lost machine) frees it within `CLEANUP_LOCK_TTL` seconds (default 60);
- released by a Lua compare-and-delete, so a holder whose lock expired never deletes the
  lock of the cleanup that took it over.

A cleanup that finds the lock taken waits for it (polling) instead of failing or dropping
its work: it then looks at GitLab again and finds the tags absent. The wait is bounded by
the job's own timeout; RQ retries a job that times out. Cleanups of different branches
take different locks and run in parallel.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import redis

from workers.common import keys

log = logging.getLogger("tagsweeper.locks")


# KEYS[1] the lock, ARGV[1] our token: only the holder may extend or delete it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def _holder() -> str:
    """Who holds the lock, for the messages of those waiting for it."""
    try:
        from rq import get_current_job

        job = get_current_job()
    except Exception:  # no RQ context at all
        job = None
    return f"job {job.id}" if job is not None else f"pid {os.getpid()}"


class BranchLock:
    """The lock of one project's branch. Use as a context manager, or acquire()/release()."""

    def __init__(self, conn: redis.Redis, project_id: int | str, branch: str, *, ttl: float,
                 poll: float = 0.25):
        """`ttl`: seconds a holder that died keeps the lock (the setting CLEANUP_LOCK_TTL)."""
        self.conn = conn
        self.key = keys.cleanup_lock(project_id, branch)
        self.ttl = float(ttl)
        self.poll = poll
        self.token = f"{uuid.uuid4().hex} {_holder()}"
        self.waited = 0.0  # seconds spent waiting for another holder
        self.lost = False  # the lock expired under us (renewals failed for a whole ttl)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _take(self) -> bool:
        return bool(self.conn.set(self.key, self.token, nx=True, px=int(self.ttl * 1000)))

    def acquire(self, wait: float | None = None) -> "BranchLock":
        """Take the lock, waiting for the current holder as long as `wait` (None: until taken)."""
        started = time.monotonic()
        told = False
        while not self._take():
            if wait is not None and time.monotonic() - started >= wait:
                raise TimeoutError(f"{self.key} is still held by {self._current_holder()} after {wait:.0f}s")
            if not told:
                log.info("waiting for the running cleanup of this branch",
                         extra={"lock": self.key, "held_by": self._current_holder()})
                told = True
            time.sleep(self.poll)
        self.waited = round(time.monotonic() - started, 3)
        if told:
            log.info("took the branch lock", extra={"lock": self.key, "waited_s": self.waited})
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="branch-lock", daemon=True)
        self._renewer.start()
        return self

    def _current_holder(self) -> str:
        try:
            value = self.conn.get(self.key)
        except redis.RedisError:
            return "unknown"
        if not value:
            return "nobody (just released)"
        return value.decode(errors="replace").partition(" ")[2] or "unknown"

    def _renew_loop(self) -> None:
        renew = self.conn.register_script(_RENEW)
        while not self._stop.wait(self.ttl / 3):
            try:
                if renew(keys=[self.key], args=[self.token, int(self.ttl * 1000)]):
                    continue
                # Expired (Redis unreachable for a whole ttl, or restarted without it): take it
                # back if it is free; a cleanup racing us then waits for ours to finish.
                if self._take():
                    log.warning("branch lock had expired and was taken again", extra={"lock": self.key})
                    continue
                if not self.lost:
                    self.lost = True
                    log.error("branch lock lost to another cleanup", extra={
                        "lock": self.key, "held_by": self._current_holder()})
            except redis.RedisError as exc:
                # Keep trying: Redis may come back before the ttl runs out.
                log.warning("could not renew the branch lock", extra={"lock": self.key, "error": str(exc)})

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        try:
            self.conn.register_script(_RELEASE)(keys=[self.key], args=[self.token])
        except redis.RedisError as exc:
            # It expires by itself within the ttl.
            log.warning("could not release the branch lock", extra={"lock": self.key, "error": str(exc)})

    def __enter__(self) -> "BranchLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
