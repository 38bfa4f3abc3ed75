"""The activity page in a real headless browser (Debian's chromium), on a service that ran real cleanups.

One service for the module (gunicorn and a `tagsweeper worker`, the GitLab emulator, the real
registry): a merge cleans acme/shop's branch; a merged branch whose review app still runs keeps its
images (and schedules its in-use re-check); a branch with a hostile name is deleted; a cleanup whose
deletions GitLab fails ends a failed job. Then chromium (tests/support/browser.py, over DevTools)
loads the page with JavaScript on and off: the numbers are the audit trail's; a click on a cleanup
opens its decisions; typing a tag into the search box and pressing Enter finds it; and a screenshot
is kept as an artifact (under pytest's tmp_path and in test-artifacts/, which git ignores;
docs/activity.png, shown by README, is a copy of one).
"""

from __future__ import annotations

import html
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.support.browser import Browser, pixel
from tests.support.service import Service
from tests.support.shop import make_shop, merge_payload
from tests.support.story import Story
from workers.common import audit
from workers.rules import ref_slug

pytestmark = pytest.mark.e2e

USER = "operator"
PASSWORD = "browser-Pa55word-never-shown"
HOSTILE = '"><img src=x onerror=alert(1)><script>alert(1)</script>'
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def scene(redis_server, gitlab_stack, tmp_path_factory):
    emu = gitlab_stack.emulator
    redis.Redis.from_url(redis_server.url).flushall()
    emu.reset()
    gitlab_stack.registry.wipe()
    emu.registry_client.clear_cache()
    svc = Service(tmp_path_factory.mktemp("activity-browser"), redis_server.url, emu.url, emu.token,
                  SWEEP_CRON="off", CLEANUP_RETRIES="0", IN_USE_RECHECK="3600",
                  DASHBOARD_USER=USER, DASHBOARD_PASSWORD=PASSWORD).start()
    try:
        # 1. A merge: the branch's five tags go from both repositories.
        shop, _, _ = make_shop(emu, 4711, "acme/shop")
        merged = svc.post(merge_payload(shop), "Merge Request Hook", key="browser-merge").json()["job_id"]
        assert svc.wait_for_job(merged).get_status() == "finished", svc.logs()[-3000:]

        # 2. A merged branch whose review app still runs: its head's tags are kept, in use.
        story = Story(emu, svc)
        p = story.project
        p.add_environment("review/feature-x", auto_stop_setting="with_action")
        p.add_branch("feature/x", from_branch="main")
        heads = []
        for _ in range(2):
            sha = p.push("feature/x")
            story.pipeline(sha, "feature/x", ["feature-x"], hook=False)
            heads.append(sha)
        p.deploy("review/feature-x", ref="feature/x", sha=heads[-1])
        p.add_merge_request(1, "feature/x", "main")
        p.merge(1, "merge", remove_source_branch=True)
        story.merged(1)
        p.add_branch(HOSTILE, from_branch="main")
        sha = p.push(HOSTILE)
        story.pipeline(sha, HOSTILE, [ref_slug(HOSTILE)], hook=False)
        story.deleted(HOSTILE)

        # 3. GitLab fails every deletion in a third project: a failed job.
        broken, _, _ = make_shop(emu, 4800, "acme/broken")
        for repo in broken.registry_repositories:
            emu.inject_fault("DELETE", rf"/registry/repositories/{repo.id}/tags/", 500, times=-1)
        failed = svc.post(merge_payload(broken), "Merge Request Hook", key="browser-broken").json()["job_id"]
        assert svc.wait_for_job(failed, timeout=120).get_status() == "failed"
        emu.clear_faults()

        conn = redis.Redis.from_url(redis_server.url)
        trail = audit.read(conn, limit=1000)
        yield {"svc": svc, "base": svc.url, "trail": trail, "merged": merged, "failed": failed,
               "review": story, "heads": heads}
    finally:
        svc.stop()


def numbers(dom: str, project_id: int) -> dict[tuple[str, str], int]:
    article = re.search(rf'<article class="project" id="project-{project_id}".*?</article>', dom, re.S)
    assert article, f"project {project_id} is not on the page"
    return {(w, what): int(n) for w, what, n in
            re.findall(r'data-window="(\w+)" data-count="([\w-]+)"[^>]*>(\d+)<', article.group(0))}


def expected(trail: list[dict], project_id: int) -> dict[tuple[str, str], int]:
    """What the page must say for the last day, from the audit trail itself."""
    mine = [e for e in trail if e["project_id"] == project_id]
    by = Counter(e["decision"] for e in mine)
    kept = Counter(e["reason_kind"] for e in mine if e["decision"] == "kept")
    return {("day", "deleted"): by["deleted"], ("day", "failed"): by["failed"],
            ("day", "kept-in-use"): kept["deployed"],
            ("day", "kept-protected"): kept["protected"] + kept["default_branch"] + kept["git_tag"]}


def browser(javascript: bool = False) -> Browser:
    return Browser(javascript=javascript, auth=(USER, PASSWORD))


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_the_page_shows_what_the_audit_trail_says(scene, javascript):
    with browser(javascript) as b:
        dom = b.open(scene["base"] + "/").html()
    trail = scene["trail"]
    for project_id in {e["project_id"] for e in trail}:
        shown = numbers(dom, project_id)
        for key, value in expected(trail, project_id).items():
            assert shown.get(key, 0) == value, (project_id, key, shown)
    assert numbers(dom, 4711)[("day", "deleted")] == 10  # five tags in two repositories
    assert numbers(dom, 4800)[("day", "failed")] > 0
    # Failing: the failed job, with its link into rq-dashboard where it can be replayed.
    assert "Something is failing" in dom
    assert f'href="/rq/0/view/job/{scene["failed"]}"' in dom
    assert re.search(r'data-count="workers">1<', dom)
    # In use: the review app's images, and the re-check waiting for them.
    in_use = re.search(r'id="in-use".*?</table>', dom, re.S).group(0)
    head = scene["heads"][-1]
    assert {"feature-x", head, head[:8]} <= set(re.findall(r"<td><code>([^<]+)</code></td>", in_use))
    assert "review/feature-x" in in_use
    waits = re.search(r'id="scheduled".*?</table>', dom, re.S).group(0)
    assert "in-use re-check" in waits and 'href="/rq/0/view/job/recheck-' in waits
    # The hostile branch name is text, never markup.
    assert "<script" not in dom and "<img" not in dom
    assert html.escape(HOSTILE, quote=False) in dom


def test_a_click_on_a_cleanup_opens_its_decisions(scene):
    with browser() as b:
        dom = b.open(scene["base"] + "/").html()
        branch = next(e["branch"] for e in scene["trail"] if e["job_id"] == scene["merged"])
        rows = re.findall(r'<tr class="run" data-run="([^"]+)">(.*?)</tr>', dom, re.S)
        run_id = next(rid for rid, cells in rows
                      if "<td>acme/shop</td>" in cells and f"<code>{html.escape(branch)}</code>" in cells)
        page = b.click(f'tr[data-run="{run_id}"] a.open-run').html()
        assert b.url() == scene["base"] + f"/activity/run/{run_id}"
    shown = sorted(re.findall(r'data-tag="([^"]*)" data-decision="([^"]*)"', page))
    trail = sorted((e["tag"], e["decision"]) for e in scene["trail"] if e["job_id"] == scene["merged"])
    assert shown == trail and ("feature-checkout-flow", "deleted") in shown
    assert f'href="/rq/0/view/job/{scene["merged"]}"' in page
    # Each decision says why: its reason as the audit trail has it.
    whys = re.findall(r'<tr class="decision[^>]*>.*?<td>([^<]*)</td></tr>', page, re.S)
    reasons = {html.escape(e["reason"], quote=False) for e in scene["trail"] if e["job_id"] == scene["merged"]}
    assert len(whys) == len(trail) and set(whys) == reasons and all(whys)


def test_typing_a_tag_into_the_search_finds_it(scene):
    head = scene["heads"][-1]
    with browser() as b:
        b.open(scene["base"] + "/")
        page = b.type_into("#q", head[:8], submit=True).html()
        assert b.url() == scene["base"] + f"/activity?q={head[:8]}"
        tags = re.findall(r'data-tag="([^"]*)" data-decision="([^"]*)"', page)
        assert (head[:8], "kept") in tags and all(head[:8] in t for t, _ in tags)
        # From a hit to its whole cleanup: the merge of feature/x, the kept head among its decisions.
        run = b.click("article.hit-run a.open-run").html()
    assert (head[:8], "kept") in re.findall(r'data-tag="([^"]*)" data-decision="([^"]*)"', run)
    assert "feature/x" in run


def test_a_screenshot_of_the_page_is_kept(scene, tmp_path):
    with browser(javascript=True) as b:
        shot = b.open(scene["base"] + "/").screenshot(tmp_path / "activity.png")
    ARTIFACTS.mkdir(exist_ok=True)
    kept = shutil.copy(shot, ARTIFACTS / "activity.png")
    print(f"\nscreenshot of the activity page: {shot} (and {kept})")
    assert shot.stat().st_size > 20_000
    # The stylesheet was served and applied: the header bar is dark, the page's background is not.
    assert pixel(shot, 5, 5) == (0x1D, 0x23, 0x30)
    assert pixel(shot, 5, 200) != (0x1D, 0x23, 0x30)
    with browser(javascript=False) as b:
        no_js = b.open(scene["base"] + "/").screenshot(tmp_path / "activity-no-js.png")
    assert pixel(no_js, 5, 5) == (0x1D, 0x23, 0x30)
