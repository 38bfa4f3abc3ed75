"""Shared parts of the benchmarks: real servers (redis-server, docker-registry 2.8 with token auth, the
GitLab emulator), registry seeding with a storage cache, request counting, machine facts, results.

Nothing here is timed against an absolute target: every benchmark compares a baseline and a
candidate measured back to back in the same run, and reports the ratio.
"""

from __future__ import annotations

import json
import os
import tempfile
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.gitlab_emulator import GitLabEmulator  # noqa: E402
from tests.support.procs import RedisServer, free_port, stop, wait_for_port  # noqa: E402,F401
from tests.support.registry import DOCKER_MANIFEST_V2, RegistryServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("BENCH_CACHE", ROOT / ".run" / "bench-cache"))  # .run/ is git-ignored
WORK = Path(os.environ.get("BENCH_WORK") or Path(tempfile.gettempdir()) / "tagsweeper-bench")

_ACCESS = re.compile(rb'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/1\.[01]" (\d{3}) \S+ "[^"]*" "([^"]*)"')


# --- servers ---------------------------------------------------------------------------------------

class BenchRegistry(RegistryServer):
    """tests.support's docker-registry 2.8 with token auth, plus: the access log on (one line per
    request: the registry-side request count), an optional signing key shared with another
    instance (so one emulator issues tokens both trust) and storage seeded from a directory."""

    def __init__(self, workdir: Path, realm: str, *, like: "BenchRegistry | None" = None,
                 storage_from: Path | None = None):
        super().__init__(workdir, realm)
        if like is not None:
            self._key, self.issuer = like._key, like.issuer
        self.storage_from = storage_from
        self._offset = 0

    def _write_config(self, bundle: Path) -> Path:
        path = super()._write_config(bundle)
        path.write_text(path.read_text().replace("accesslog:\n    disabled: true", "accesslog:\n    disabled: false"))
        return path

    @property
    def storage(self) -> Path:
        return self.workdir / "data"

    def start(self) -> "BenchRegistry":
        if self.storage_from is not None:
            if self.storage.exists():
                shutil.rmtree(self.storage)
            self.workdir.mkdir(parents=True, exist_ok=True)
            # A real copy, never hard links: distribution rewrites link files in place.
            subprocess.run(["cp", "-a", str(self.storage_from), str(self.storage)], check=True)
        super().start()
        self.mark()
        return self

    def _access_lines(self) -> list[tuple[str, str, int, str]]:
        log = self.workdir / "registry.log"
        if self._log:
            self._log.flush()
        data = log.read_bytes() if log.exists() else b""
        return [(m.group(1).decode(), m.group(2).decode(), int(m.group(3)), m.group(4).decode(errors="replace"))
                for m in _ACCESS.finditer(data)]

    def mark(self) -> None:
        """Start counting requests from here."""
        time.sleep(0.05)  # the registry writes its access line after answering
        self._offset = len(self._access_lines())

    def requests(self, agent: str | None = None) -> list[tuple[str, str, int, str]]:
        """(method, path, status, user agent) of every request served since mark(); only those whose
        User-Agent starts with `agent` when given (tagsweeper sends "tagsweeper")."""
        time.sleep(0.05)
        lines = self._access_lines()[self._offset:]
        return [r for r in lines if agent is None or r[3].startswith(agent)]


class Stack:
    """The GitLab emulator and a registry whose token realm is the emulator's /jwt/auth."""

    def __init__(self, workdir: Path, storage_from: Path | None = None, like: BenchRegistry | None = None,
                 emulator: GitLabEmulator | None = None):
        self.own_emulator = emulator is None
        self.emulator = emulator or GitLabEmulator().start()
        self.registry = BenchRegistry(workdir, self.emulator.url + "/jwt/auth", like=like,
                                      storage_from=storage_from).start()
        self.emulator.registry = self.registry

    def stop(self) -> None:
        self.registry.stop()
        if self.own_emulator:
            self.emulator.stop()


# --- seeding ---------------------------------------------------------------------------------------

def add_tags(stack: Stack, repo: str, digest_of_tags: dict[str, list[str]]) -> None:
    """PUT an already pushed manifest under many more names: one request per tag.
    `digest_of_tags` maps a seed tag (already pushed) to the extra names it gets."""
    client = stack.emulator.registry_client
    for seed, names in digest_of_tags.items():
        found = client.manifest(repo, seed)
        assert found, f"{repo}:{seed} was not pushed"
        _, manifest = found
        for name in names:
            client.put_manifest(repo, name, manifest, manifest.get("mediaType") or DOCKER_MANIFEST_V2)


def parallel_by_repo(work: dict[str, callable]) -> None:
    """Run one callable per repository, repositories in parallel (never two writers in one repository:
    distribution 2.8 fails concurrent tag writes in a repository)."""
    with ThreadPoolExecutor(max_workers=max(1, len(work))) as pool:
        for f in [pool.submit(fn) for fn in work.values()]:
            f.result()


def cached_storage(name: str, build) -> Path:
    """A registry storage directory built once by `build(stack)` and kept under CACHE/<name>.
    Delete the directory (or set BENCH_CACHE elsewhere) to seed again."""
    target = CACHE / name
    if (target / ".complete").exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    tmp = WORK / f"seed-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    stack = Stack(tmp)
    started = time.monotonic()
    try:
        build(stack)
    finally:
        stack.stop()
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(tmp / "data"), str(target)], check=True)
    (target / ".complete").write_text(f"seeded in {time.monotonic() - started:.1f}s\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- facts about the run ---------------------------------------------------------------------------

def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    import flask
    import gunicorn
    import redis as redis_py
    import requests
    import rq
    return {
        "nproc": _run(["nproc"]),
        "cpu": cpu,
        "free_h": _run(["free", "-h"]),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "redis-server": _run(["redis-server", "--version"]).split(" sha=")[0],
            "docker-registry": _run(["docker-registry", "--version"]),
            "wrk": (_run(["wrk", "--version"]) or _run(["sh", "-c", "wrk --version 2>&1"])).splitlines()[0]
            if shutil.which("wrk") else "-",
            "skopeo": _run(["skopeo", "--version"]) if shutil.which("skopeo") else "-",
            "gunicorn": gunicorn.__version__, "flask": flask.__version__, "rq": rq.__version__,
            "redis-py": redis_py.__version__, "hiredis": _version("hiredis"), "requests": requests.__version__,
        },
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def without_dirs(command: str) -> str:
    """A command line with directories dropped from its paths: what ran, not where it lives."""
    return re.sub(r"(?<![\w.])/(?:[^\s/]+/)+", "", command)


def load() -> dict:
    """The 1-minute load average and the busiest processes that are not this benchmark's."""
    mine = {os.getpid()}
    out = _run(["ps", "-eo", "pid,ppid,pcpu,args", "--sort=-pcpu", "--no-headers"])
    busy = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        pid, ppid, pcpu, args = int(parts[0]), int(parts[1]), float(parts[2]), parts[3]
        if pid in mine or ppid in mine or pcpu < 5.0 or args.startswith("ps "):
            continue
        busy.append(f"{pcpu:.0f}% {without_dirs(args)[:90]}")
    return {"loadavg": Path("/proc/loadavg").read_text().split()[:3], "busy": busy[:6],
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class LoadSampler:
    """Samples /proc/loadavg and busy processes every `every` seconds while a benchmark runs."""

    def __init__(self, every: float = 15.0):
        self.every = every
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.samples.append(load())
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(load())

    def summary(self) -> dict:
        loads = [float(s["loadavg"][0]) for s in self.samples]
        others = sorted({b.split(" ", 1)[1][:70] for s in self.samples for b in s["busy"]})
        return {"load1_min": min(loads), "load1_max": max(loads), "others_seen": others[:12]}


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- GitLab requests by endpoint ----------------------------------------------------------------

_ENDPOINTS = [  # (regex on the path after /api/v4, template); first match wins
    (r"/projects/[^/]+/registry/repositories/\d+/tags/[^/]+", "/projects/:id/registry/repositories/:rid/tags/:tag"),
    (r"/projects/[^/]+/registry/repositories/\d+/tags", "/projects/:id/registry/repositories/:rid/tags"),
    (r"/projects/[^/]+/registry/repositories", "/projects/:id/registry/repositories"),
    (r"/projects/[^/]+/repository/branches/[^/]+", "/projects/:id/repository/branches/:branch"),
    (r"/projects/[^/]+/repository/branches", "/projects/:id/repository/branches"),
    (r"/projects/[^/]+/repository/tags", "/projects/:id/repository/tags"),
    (r"/projects/[^/]+/repository/commits/[^/]+/refs", "/projects/:id/repository/commits/:sha/refs"),
    (r"/projects/[^/]+/repository/commits/[^/]+", "/projects/:id/repository/commits/:sha"),
    (r"/projects/[^/]+/merge_requests/\d+/commits", "/projects/:id/merge_requests/:iid/commits"),
    (r"/projects/[^/]+/merge_requests/\d+", "/projects/:id/merge_requests/:iid"),
    (r"/projects/[^/]+/merge_requests", "/projects/:id/merge_requests"),
    (r"/projects/[^/]+/pipelines/\d+", "/projects/:id/pipelines/:pipeline_id"),
    (r"/projects/[^/]+/pipelines", "/projects/:id/pipelines"),
    (r"/projects/[^/]+/environments/\d+", "/projects/:id/environments/:environment_id"),
    (r"/projects/[^/]+/environments", "/projects/:id/environments"),
    (r"/projects/[^/]+/deployments/\d+", "/projects/:id/deployments/:deployment_id"),
    (r"/projects/[^/]+/deployments", "/projects/:id/deployments"),
    (r"/projects/[^/]+", "/projects/:id"),
]
_ENDPOINT_RX = [(re.compile(rx), name) for rx, name in _ENDPOINTS]


def endpoint(method: str, path: str) -> str:
    """`GET /projects/:id/pipelines` for `GET /api/v4/projects/4711/pipelines` (the emulator's raw path)."""
    sub = path[len("/api/v4"):] if path.startswith("/api/v4") else path
    for rx, name in _ENDPOINT_RX:
        if rx.fullmatch(sub):
            return f"{method} {name}"
    return f"{method} {sub}"


def by_endpoint(requests: list[tuple]) -> dict[str, int]:
    """Counts of the emulator's request log (method, raw path, status) per endpoint, most first."""
    counts: dict[str, int] = {}
    for method, path, *_ in requests:
        key = endpoint(method, path)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class TimedEmulator(GitLabEmulator):
    """The GitLab emulator, also adding up the time it spends serving each endpoint (its own work,
    which GitLab's database would do differently: benchmarks subtract it to show tagsweeper's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served_s: dict[str, float] = {}
        self._served_lock = threading.Lock()

    def _respond(self, req, raw_path):
        started = time.perf_counter()
        try:
            return super()._respond(req, raw_path)
        finally:
            took = time.perf_counter() - started
            key = endpoint(req.method, raw_path)
            with self._served_lock:
                self.served_s[key] = self.served_s.get(key, 0.0) + took

    def reset_served(self) -> None:
        with self._served_lock:
            self.served_s.clear()
