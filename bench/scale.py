"""Benchmark 3, scale: one branch cleanup with 10 and with 10,000 other tags in the registry.

    .venv/bin/python -m bench.scale              # 2 rounds; --other 10,10000 --modes registry,api

The same cleanup as bench/cleanup.py (303 owned tags in 3 repositories), on two seeded registries
that differ only in how many OTHER tags they hold: 10, or 10,000, spread over the same three
repositories (the worst place for them: distribution 2.8 scans a repository's tags to delete a
manifest by digest). The other tags are PUTs of `main`'s manifest under new names, one request per
tag, one writer per repository; the seeded storage is cached under .run/bench-cache/.

Small and large run back to back (order alternating), in each mode; the ratios large/small of
requests and of wall time are the figures (target <= 1.1 each).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys

import redis

from bench import cleanup as cb
from bench.common import WORK, LoadSampler, RedisServer, Stack, machine, median, save


def trial(golden, emu, redis_url: str, mode: str, tag: str) -> dict:
    workdir = WORK / "scale" / tag
    if workdir.exists():
        shutil.rmtree(workdir)
    stack = Stack(workdir, storage_from=golden, emulator=emu)
    try:
        cb.setup_emulator(emu)
        redis.Redis.from_url(redis_url).flushall()
        return cb.run_tagsweeper(stack, redis_url, mode, 4)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def delete_by_digest_ms(golden, emu, samples: int = 15) -> float:
    """Median time of one DELETE /v2/<repo>/manifests/<digest> on this registry (what deleting one tag
    costs GitLab on distribution 2.8, and tagsweeper's tombstone fallback once per batch)."""
    import secrets
    import time

    from tests.support.registry import OCI_MANIFEST

    workdir = WORK / "scale" / "probe"
    if workdir.exists():
        shutil.rmtree(workdir)
    stack = Stack(workdir, storage_from=golden, emulator=emu)
    try:
        cb.setup_emulator(emu)
        client = emu.registry_client
        repo = cb.REPOS[0]
        config = client._dummy_config_descriptor(repo)  # noqa: SLF001 - the emulator's own tombstone config
        times = []
        for i in range(samples):
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [],
                        "annotations": {"probe": secrets.token_hex(8)}}
            digest = client.put_manifest(repo, f"probe-{i}", manifest, OCI_MANIFEST)
            started = time.perf_counter()
            r = client._repo("DELETE", repo, f"/manifests/{digest}")  # noqa: SLF001
            times.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 202, r.status_code
        return median(times)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from tests.support.gitlab_emulator import GitLabEmulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--other", default="10,10000", help="small,large numbers of other tags")
    parser.add_argument("--modes", default="registry,api")
    args = parser.parse_args(argv)
    small, large = (int(x) for x in args.other.split(","))
    modes = [m for m in args.modes.split(",") if m]
    logging.getLogger("tagsweeper").setLevel(logging.ERROR)

    goldens = {n: cb.storage(n) for n in (small, large)}
    work = WORK / "scale"
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work / "redis").start()
    emu = GitLabEmulator().start()
    runs: dict[str, dict[int, list[dict]]] = {m: {small: [], large: []} for m in modes}
    try:
        with LoadSampler() as sampler:
            for r in range(args.rounds):
                for k, mode in enumerate(modes):
                    order = (small, large) if (r + k) % 2 == 0 else (large, small)
                    for n in order:
                        res = trial(goldens[n], emu, server.url, mode, f"{mode}-{n}-{r}")
                        res["total_requests"] = res["gitlab_requests"] + res["registry_requests"]
                        runs[mode][n].append(res)
                        print(f"round {r + 1} {mode:8s} other tags {n:6d}: {res['wall_s']:6.2f} s  "
                              f"requests {res['total_requests']} (gitlab {res['gitlab_requests']}, registry "
                              f"{res['registry_requests']}; GitLab's own registry calls {res['registry_requests_by_gitlab']})"
                              f"  deleted {res['deleted']}  collateral {res['collateral']}", flush=True)
        probe = {n: delete_by_digest_ms(goldens[n], emu) for n in (small, large)}
    finally:
        emu.stop()
        server.stop()
    summary = {"delete_by_digest_ms": probe}
    print(f"distribution 2.8, one DELETE of a manifest by digest in a repository of {cb.REPOS[0]}: "
          f"{probe[small]:.1f} ms with {small} other tags, {probe[large]:.1f} ms with {large} "
          f"(about {large // len(cb.REPOS)} of them in that repository)")
    print()
    for mode in modes:
        a, b = runs[mode][small], runs[mode][large]
        time_ratios = [y["wall_s"] / x["wall_s"] for x, y in zip(a, b)]
        req_ratios = [y["total_requests"] / x["total_requests"] for x, y in zip(a, b)]
        summary[mode] = {
            "small": small, "large": large,
            "wall_s_small_median": median([x["wall_s"] for x in a]), "wall_s_large_median": median([x["wall_s"] for x in b]),
            "requests_small": a[-1]["total_requests"], "requests_large": b[-1]["total_requests"],
            "gitlab_registry_calls_small": a[-1]["registry_requests_by_gitlab"],
            "gitlab_registry_calls_large": b[-1]["registry_requests_by_gitlab"],
            "time_ratio_median": median(time_ratios), "time_ratios": time_ratios,
            "request_ratio": median(req_ratios),
        }
        s = summary[mode]
        print(f"{mode:8s} requests {s['requests_small']} -> {s['requests_large']} (ratio {s['request_ratio']:.3f}), "
              f"time {s['wall_s_small_median']:.2f} s -> {s['wall_s_large_median']:.2f} s "
              f"(ratio {s['time_ratio_median']:.2f}; per round {[round(x, 2) for x in time_ratios]}); target <= 1.1")
    save("scale", {"machine": machine(), "load": sampler.summary(), "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
