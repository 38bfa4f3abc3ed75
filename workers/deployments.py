"""GitLab's record of deployments: which commits live environments run, or may roll back to.

An image that an environment runs is in use, whatever branch it came from and whether or not
that branch still exists: a review app started from the branch image, `production` running a
commit's image, and the releases an operator rolls back to. GitLab knows them through its
environments and deployments, and its API decides when a cleanup or a sweep decides
(`Protection.load`):

- **which environments are live** is read fresh every time: `GET /projects/:id/environments`
  with `states=available`, `stopping` and `stopped` (a stopped environment keeps nothing, unless
  its tier is production: see rules.ALWAYS_LIVE_TIERS). One listing each, a page per 100
  environments, never a request per environment;
- **what they ran** comes from a copy of the project's successful deployments in Redis
  (`Record`), brought up to date first like the pipelines record: the first sync reads every
  deployment of the project, each later one only those updated since (workers/timeline.py:
  by `updated_at`, with an overlap, the cursor moved only after a finished read). A
  deployment's commit, ref and environment never change, so reading one twice is harmless.

What they keep is rules.in_use's: per live environment the newest KEEP_DEPLOYMENTS successful
deployments' commits (COMMIT_TAGS), and the branch of the one it runs (BRANCH_TAGS).

A deployment GitLab deleted since (`DELETE /projects/:id/deployments/:id`: never an
environment's last one) stays in the copy and keeps its commit; it could hold the place of an
older one among the newest KEEP_DEPLOYMENTS. So when a commit about to lose its tags was
deployed to a live environment beyond the newest the copy holds, that environment's newest are
asked of GitLab once (`Protection.confirm`: one request, only for such environments), and
what either says keeps.

Deployment Hooks are a hint (`remember`): a successful deployment GitLab's list does not show
yet keeps its commit while its environment is live. A hint adds protection, never removes
any; once the copy holds the deployment as successful, the hint is dropped.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Iterable

import redis

from workers import rules, timeline
from workers.common import keys
from workers.gitlab import GitLab

log = logging.getLogger("tagsweeper.deployments")

SHA_OR_SHORT = re.compile(r"[0-9a-f]{8,40}")
HINT_TTL = 7 * 86400  # seconds a Deployment Hook's hint counts when GitLab's list never shows its deployment

# One page of deployments in one round trip. Per environment a sorted set of its successful
# deployments (score: id; member: "id\tsha\tref\tfinished"), the one that finished last per
# environment, which environments each short SHA was deployed to, every environment's name,
# and the hints the page makes redundant. A deployment listed with another status leaves the
# environment's set: GitLab's list decides.
_RECORD = timeline.LUA_ADD_LINE + """
local env_prefix, last_key, short_key, envs_key, hints_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
for i = 1, #ARGV, 6 do
  local id, env, sha, ref, finished, status = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local key = env_prefix .. env
  redis.call('ZREMRANGEBYSCORE', key, id, id)
  if status == 'success' then
    local member = id .. '\\t' .. sha .. '\\t' .. ref .. '\\t' .. finished
    redis.call('ZADD', key, id, member)
    redis.call('SADD', envs_key, env)
    local current = redis.call('HGET', last_key, env)
    local newer = not current
    if current then
      local cid, cfinished = string.match(current, '^(%d+)\\t[^\\t]*\\t[^\\t]*\\t(.*)$')
      local f, cf = tonumber(finished) or 0, tonumber(cfinished) or 0
      newer = (not cid) or f > cf or (f == cf and tonumber(id) > tonumber(cid))
    end
    if newer then redis.call('HSET', last_key, env, member) end
    add_line(short_key, string.sub(sha, 1, 8), env)
    redis.call('HDEL', hints_key, id)
  end
end
return 1
"""

# A hint, unless the copy already holds that deployment as successful.
_HINT = """
if #redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1]) > 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


def _member(value: bytes | str) -> rules.Deployment | None:
    """A deployment as the copy holds it ("id\\tsha\\tref\\tfinished")."""
    parts = timeline.text(value).split("\t")
    if len(parts) != 4 or not parts[0].isdigit():
        return None
    try:
        finished = float(parts[3]) if parts[3] else None
    except ValueError:
        finished = None
    return rules.Deployment(id=int(parts[0]), sha=parts[1], ref=parts[2] or None, finished=finished)


def from_api(item: dict) -> tuple[str, rules.Deployment] | None:
    """An item of GitLab's deployments list as (environment name, Deployment); None when it lacks
    an environment or a commit."""
    if not isinstance(item, dict):
        return None
    env = item.get("environment")
    name = env.get("name") if isinstance(env, dict) else env
    deployment_id, sha, ref = item.get("id"), item.get("sha"), item.get("ref")
    if not isinstance(name, str) or not name or isinstance(deployment_id, bool) \
            or not isinstance(deployment_id, int) or not rules.is_sha(sha):
        return None
    finished = timeline.parse_time(item.get("finished_at")) or timeline.parse_time(item.get("updated_at"))
    return name, rules.Deployment(id=deployment_id, sha=sha, ref=ref if isinstance(ref, str) and ref else None,
                                  status=str(item.get("status") or ""), finished=finished)


class Record(timeline.Copy):
    """One project's copy of GitLab's successful deployments in Redis: sync it (`timeline.Copy.sync`),
    then ask it."""

    what = "deployment"
    needs = "a usable environment or sha"
    page = "deployments_page"
    script = _RECORD
    prefix = staticmethod(keys.deployments)

    # -- writing ----------------------------------------------------------------------------
    def script_keys(self) -> list[str]:
        return [self.part(p) for p in ("env:", "last", "short", "envs", "hints")]

    def row(self, item: dict) -> list[str] | None:
        found = from_api(item)
        if found is None:
            return None
        env, d = found
        return [str(d.id), env, d.sha, d.ref or "", "" if d.finished is None else repr(d.finished), d.status]

    def hint(self, environment: str, deployment_id: int, sha: str, now: float | None = None) -> bool:
        """Remember a successful deployment a Deployment Hook named; False when the copy holds it already."""
        now = time.time() if now is None else now
        return bool(self.conn.eval(_HINT, 2, self.part("env:") + environment, self.part("hints"), int(deployment_id),
                                   f"{environment}\t{sha}\t{now!r}", HINT_TTL))

    def drop(self) -> None:
        """Forget the project's copy (it is read again from GitLab when next needed)."""
        names = [self.state_key, self.part("envs"), self.part("last"), self.part("short"), self.part("hints")]
        names += [self.part("env:") + timeline.text(e) for e in self.conn.smembers(self.part("envs"))]
        for start in range(0, len(names), 500):
            self.conn.delete(*names[start:start + 500])

    # -- reading ----------------------------------------------------------------------------
    def newest(self, environments: Iterable[str], count: int) -> dict[str, tuple[list[rules.Deployment], int]]:
        """Per environment its `count` newest successful deployments and the one that finished
        last, and how many the copy holds in all (one round trip)."""
        names = list(dict.fromkeys(environments))
        if not names:
            return {}
        pipe = self.conn.pipeline(transaction=False)
        for name in names:
            pipe.zrevrange(self.part("env:") + name, 0, count - 1)
            pipe.zcard(self.part("env:") + name)
        pipe.hmget(self.part("last"), names)
        answers = pipe.execute()
        lasts = answers[-1]
        out: dict[str, tuple[list[rules.Deployment], int]] = {}
        for n, name in enumerate(names):
            members, total = answers[2 * n], answers[2 * n + 1]
            found = {d.id: d for d in map(_member, [*members, *([lasts[n]] if lasts[n] else [])]) if d}
            out[name] = (sorted(found.values(), key=lambda d: d.id, reverse=True), int(total))
        return out

    def anything(self) -> bool:
        """Whether the copy holds any successful deployment, or any hint (one round trip)."""
        return bool(self.conn.exists(self.part("envs"), self.part("hints")))

    def hinted(self, environments: Iterable[str], now: float | None = None) -> dict[str, list[rules.Deployment]]:
        """The successful deployments Deployment Hooks named in these environments, not yet in the copy."""
        now = time.time() if now is None else now
        wanted = set(environments)
        out: dict[str, list[rules.Deployment]] = {}
        stale = []
        for field, value in self.conn.hgetall(self.part("hints")).items():
            parts = timeline.text(value).split("\t")
            try:
                deployment_id, at = int(timeline.text(field)), float(parts[2])
            except (ValueError, IndexError):
                stale.append(field)
                continue
            if at < now - HINT_TTL:
                stale.append(field)
            elif parts[0] in wanted:
                out.setdefault(parts[0], []).append(rules.Deployment(id=deployment_id, sha=parts[1], hinted=True,
                                                                     finished=at))
        if stale:
            self.conn.hdel(self.part("hints"), *stale)
        return out

    def deployed_to(self, prefixes: Iterable[str]) -> dict[str, frozenset[str]]:
        """For each 8-hex prefix, the environments a successful deployment of such a commit went to."""
        prefixes = list(dict.fromkeys(prefixes))
        if not prefixes:
            return {}
        found = self.conn.hmget(self.part("short"), prefixes)
        return {p: frozenset(timeline.text(v).split("\n")) for p, v in zip(prefixes, found) if v}


def remember(conn: redis.Redis, *, project_id: int, environment: str, deployment_id: int, sha: str,
             status: str) -> None:
    """A Deployment Hook's hint: `sha` was deployed to `environment` by deployment `deployment_id`
    with `status`. Only a successful deployment adds anything (its commit keeps its tags while
    the environment is live, until GitLab's list shows the deployment); any other status, or a
    deployment the copy holds already, writes nothing. It never removes protection.
    Raises ValueError for values no Deployment Hook carries."""
    if not isinstance(environment, str) or not environment.strip() or "\t" in environment or "\n" in environment:
        raise ValueError(f"environment must be an environment's name, got {environment!r}")
    if isinstance(deployment_id, bool) or not isinstance(deployment_id, int) or deployment_id < 1:
        raise ValueError(f"deployment_id must be a positive integer, got {deployment_id!r}")
    if not rules.is_sha(sha):
        raise ValueError(f"sha must be 40 lower-case hex characters, got {sha!r}")
    if status != rules.DEPLOYED_STATUS:
        return
    Record(conn, project_id).hint(environment, deployment_id, sha)


def live_environments(gitlab: GitLab, project_id: int) -> dict[str, tuple[str, str | None]]:
    """Every environment whose deployments count now (name -> (state, tier)), from GitLab's
    environments list: available and stopping ones, and stopped ones of a tier that stays live
    (rules.ALWAYS_LIVE_TIERS). One listing per state, never a request per environment."""
    live: dict[str, tuple[str, str | None]] = {}
    for state in (*rules.LIVE_ENVIRONMENT_STATES, "stopped"):
        for item in gitlab.environments(project_id, state):
            name = item.get("name") if isinstance(item, dict) else None
            tier = item.get("tier") if isinstance(item, dict) and isinstance(item.get("tier"), str) else None
            if not isinstance(name, str) or not name:
                continue
            env = rules.Environment(name, str(item.get("state") or state), tier=tier)
            if env.live:
                live.setdefault(name, (env.state, tier))
    return live


class Protection:
    """What a project's live environments keep, as of now: `load` it, `confirm` the commits a
    decision is about to release, then read `in_use`."""

    def __init__(self, gitlab: GitLab, conn: redis.Redis, project_id: int, keep: int):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.gitlab, self.pid, self.keep = gitlab, int(project_id), keep
        self.record = Record(conn, project_id)
        self.live: dict[str, tuple[str, str | None]] = {}
        self.environments: list[rules.Environment] = []
        self.held: dict[str, tuple[list[rules.Deployment], int]] = {}
        self.asked: set[str] = set()  # environments whose newest GitLab was asked for
        self.merge_requests: dict[int, rules.MergeRequest] = {}  # read for deployments' refs
        self.read = 0
        self.requests = 0  # requests `confirm` made

    def load(self) -> "Protection":
        """Sync the copy, list the live environments, read what they ran. Raises GitLabError."""
        self.read = self.record.sync(self.gitlab)
        # A project that never deployed successfully (nor did a Deployment Hook say so) has nothing
        # an environment could keep: its environments are not even listed.
        self.live = live_environments(self.gitlab, self.pid) if self.record.anything() else {}
        self.held = self.record.newest(self.live, self.keep)
        hints = self.record.hinted(self.live)
        self.environments = [rules.Environment(name, state, tuple(self.held[name][0]) + tuple(hints.get(name, ())),
                                               tier=tier)
                             for name, (state, tier) in sorted(self.live.items())]
        return self

    def in_use(self, merge_requests: dict[int, rules.MergeRequest] | None = None) -> rules.InUse:
        """What the live environments keep. A deployment from a merge-request pipeline ran its
        source branch's images: the merge requests its ref names that the caller did not know
        (another branch's, long merged) are read from GitLab, up to 100 per request. Raises GitLabError."""
        known = {**self.merge_requests, **(merge_requests or {})}
        wanted = {rules.merge_request_of_ref(d.ref) for env in self.environments for d in env.deployments
                  if d.ref} - {None} - set(known)
        if wanted:
            for item in self.gitlab.merge_requests_by_iid(self.pid, sorted(wanted)):
                mr = rules.MergeRequest.from_api(item, self.pid)
                self.merge_requests[mr.iid] = known[mr.iid] = mr
        return rules.in_use(self.environments, self.keep, known)

    def confirm(self, shas: Iterable[str]) -> bool:
        """Ask GitLab for the newest successful deployments of every live environment a commit
        among `shas` (full or short SHAs; or one sharing its short SHA) was deployed to beyond
        the newest the copy holds: a deployment GitLab deleted must not hold the place of a real
        one. One request per such environment, once. Returns whether anything was asked. Raises
        GitLabError."""
        prefixes = {s[:8] for s in shas if SHA_OR_SHORT.fullmatch(s)}
        ask: set[str] = set()
        for prefix, names in self.record.deployed_to(prefixes).items():
            for name in names:
                held, total = self.held.get(name, ([], 0))
                if name in self.live and name not in self.asked and total > len(held) \
                        and not any(d.sha.startswith(prefix) for d in held):
                    ask.add(name)
        for name in sorted(ask):
            self.asked.add(name)
            self.requests += 1
            items = self.gitlab.deployments_page(self.pid, {
                "environment": name, "status": rules.DEPLOYED_STATUS, "order_by": "id", "sort": "desc",
                "per_page": self.keep, "page": 1})
            found = tuple(d for env, d in filter(None, map(from_api, items)) if env == name)
            # What GitLab answered stands next to what the copy holds: either keeps (rules.in_use).
            state, tier = self.live[name]
            self.environments.append(rules.Environment(name, state, found, tier=tier))
        return bool(ask)
