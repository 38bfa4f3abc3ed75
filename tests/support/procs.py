"""Starting and stopping the real server processes the suite talks to."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def require_binary(name: str) -> str:
    """The path of a server binary; a missing one is an error, never a skip (tests run on real parts)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if not path:
        raise RuntimeError(f"{name} is not installed: run scripts/test.sh, which installs it")
    return path


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A throw-away redis-server on a free loopback port.

    `appendfsync` ("always", "everysec") turns on append-only persistence in `workdir`, so
    `crash()` then `start()` (same port, same files) is a Redis restart that keeps its data."""

    def __init__(self, workdir: Path, appendfsync: str | None = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [require_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--dir", str(self.workdir), "--daemonize", "no",
             *(["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.appendfsync
               else ["--appendonly", "no"])],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)

    def crash(self) -> None:
        """SIGKILL: no shutdown save, clients see their connections reset."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
