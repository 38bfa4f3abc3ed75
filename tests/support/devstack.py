"""A stand-in GitLab and registry to try tagsweeper by hand: `python -m tests.support.devstack`.

Starts the GitLab emulator and a real docker-registry (token auth) on loopback, seeds the
project of the example deliveries (4711, acme/shop: two registry repositories, images for
`main`, `latest`, `v1.2.0`, another live branch and the branch `Feature/Checkout-Flow`, and
twelve older commits `main` built over the past weeks, for KEEP_COMMITS to retire),
prints the environment to give `scripts/serve.sh`, and keeps running until Ctrl-C.
Every two seconds the registry's tags are printed again when they changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import tempfile
import time
from pathlib import Path

from tests.support.gitlab_emulator import GitLabEmulator
from tests.support.registry import RegistryServer

FEATURE = "Feature/Checkout-Flow"
LAST = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
MERGE = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"


def seed(emu: GitLabEmulator) -> list[str]:
    project = emu.add_project(4711, "acme/shop", default_branch="main")
    project.branches["main"] = MERGE
    project.branches["feature/other"] = "2" * 40
    project.tags["v1.2.0"] = "3" * 40
    project.add_merge_request(38, FEATURE, "main", state="merged", commits=[LAST], merge_commit_sha=MERGE)
    # GitLab's record of who built what: main's older commits, a day apart, weeks ago; the
    # branch's pipeline; then main's on the merge commit.
    now = dt.datetime.now(dt.timezone.utc)
    older = [hashlib.sha1(f"main-{i}".encode()).hexdigest() for i in range(12)]
    for i, sha in enumerate(older):
        project.add_commit(sha, on=("main",))
        project.add_pipeline(sha, "main", created_at=now - dt.timedelta(days=30 - i))
    project.add_pipeline(LAST, FEATURE)
    project.add_pipeline(MERGE, "main")
    repos = []
    for name in ("", "worker"):
        project.add_registry_repository(name)
        repo = project.path + (f"/{name}" if name else "")
        repos.append(repo)
        reg = emu.registry_client
        reg.push_image(repo, ["latest", "feature-checkout-flow", LAST, LAST[:8]], content=f"{repo}-feat")
        for sha in older:
            reg.push_image(repo, [sha, sha[:8]], content=f"{repo}-{sha}")
        reg.push_image(repo, ["main", MERGE, MERGE[:8]], content=f"{repo}-main")
        reg.push_image(repo, ["v1.2.0"], content=f"{repo}-rel")
        reg.push_image(repo, ["feature-other"], content=f"{repo}-other")
    return repos


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tagsweeper-devstack-"))
    emu = GitLabEmulator().start()
    registry = RegistryServer(workdir / "registry", realm=emu.url + "/jwt/auth").start()
    emu.registry = registry
    try:
        repos = seed(emu)
        print(f"GITLAB_URL={emu.url} GITLAB_TOKEN={emu.token}", flush=True)
        print(f"registry: {registry.url}  repositories: {', '.join(repos)}", flush=True)
        last = None
        while True:
            now = {repo: sorted(emu.registry_client.tags(repo)) for repo in repos}
            if now != last:
                for repo, tags in now.items():
                    print(f"{repo}: {' '.join(tags)}", flush=True)
                last = now
            time.sleep(2)
    except KeyboardInterrupt:
        pass
    finally:
        registry.stop()
        emu.stop()


if __name__ == "__main__":
    main()
