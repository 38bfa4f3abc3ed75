"""The example deliveries' project, seeded for end-to-end tests: `make_shop`, `merge_payload`,
`assert_registry`, and the commits they name.

`make_shop(gitlab)` seeds the GitLab emulator with a project like the one in tests/payloads/
(merge request !38 of `Feature/Checkout-Flow` merged into `main`, another live branch, a git tag,
two registry repositories) and pushes a realistic set of tiny images to the real registry.
`merge_payload(project)` is the example Merge Request Hook pointed at that project, and
`assert_registry` checks the registry afterwards: the tags that should go are gone, every other
tag is at the digest it was pushed with.
"""

from __future__ import annotations

import itertools

from tests.support.payloads import load_payload

FEATURE = "Feature/Checkout-Flow"
LAST = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"      # last_commit of the example MR
MERGE = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"     # its merge commit, main's head
EARLIER = "1111111111111111111111111111111111111111"   # an earlier commit of the MR
OTHER = "2222222222222222222222222222222222222222"     # head of another live branch
_ids = itertools.count(1)


def make_shop(gitlab, project_id: int = 4711, path: str | None = None):
    """The example deliveries' project, with two registry repositories and a realistic set of images.

    Returns (project, repos, digests) where digests maps (repo, tag) to the digest pushed.
    """
    path = path or f"acme/shop-{next(_ids)}"
    project = gitlab.add_project(project_id, path, default_branch="main")
    project.branches["main"] = MERGE
    project.branches["feature/other"] = OTHER
    project.tags["v1.2.0"] = "3" * 40
    project.add_merge_request(38, FEATURE, "main", state="merged", commits=[LAST, EARLIER], merge_commit_sha=MERGE)
    repos = [path, f"{path}/worker"]
    for name in ("", "worker"):
        project.add_registry_repository(name)
    reg = gitlab.registry_client
    digests = {}
    for repo in repos:
        # The branch's image is also `latest`: deleting by digest would take `latest` with it.
        d = reg.push_image(repo, ["latest", "feature-checkout-flow", LAST, LAST[:8]], content=f"{repo}-feat")
        digests.update({(repo, t): d for t in ["latest", "feature-checkout-flow", LAST, LAST[:8]]})
        d = reg.push_image(repo, [EARLIER, EARLIER[:8]], content=f"{repo}-earlier")
        digests.update({(repo, t): d for t in [EARLIER, EARLIER[:8]]})
        for tags, content in ((["main", MERGE, MERGE[:8]], "main"), (["v1.2.0"], "rel"),
                              (["feature-other", OTHER[:8]], "other")):
            d = reg.push_image(repo, tags, content=f"{repo}-{content}")
            digests.update({(repo, t): d for t in tags})
    return project, repos, digests


def assert_registry(gitlab, repos, digests, gone):
    """Every tag in `gone` is absent everywhere; every other pushed tag is at its original digest."""
    reg = gitlab.registry_client
    for repo in repos:
        present = set(reg.tags(repo))
        for (r, tag), digest in digests.items():
            if r != repo:
                continue
            if tag in gone:
                assert tag not in present, f"{repo}:{tag} should be gone"
            else:
                assert reg.resolve(repo, tag) == digest, f"{repo}:{tag} must survive at its digest"


def merge_payload(project, **changes):
    body = load_payload("merge_request_merge.json")
    body["project"]["id"] = project.id
    body["project"]["path_with_namespace"] = project.path
    attrs = body["object_attributes"]
    attrs["source_project_id"] = attrs["target_project_id"] = project.id
    attrs["source"]["path_with_namespace"] = attrs["target"]["path_with_namespace"] = project.path
    attrs.update(changes)
    return body
