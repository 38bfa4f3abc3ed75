"""The GitLab emulator's environment and deployment handlers.

`GET /projects/:id/environments` (Environments::EnvironmentsFinder: `name`, `search`, `states`),
`GET /projects/:id/environments/:environment_id` (with `last_deployment`),
`GET /projects/:id/deployments` (DeploymentsFinder: `environment`, `status`, `order_by`, `sort`,
`updated_after`/`updated_before`, `finished_after`/`finished_before`) and
`GET /projects/:id/deployments/:deployment_id`. A mixin of `GitLabEmulator`.

What was checked against GitLab's source (lib/api/environments.rb, lib/api/deployments.rb,
app/finders/deployments_finder.rb, app/finders/environments/environments_finder.rb,
app/models/concerns/updated_at_filterable.rb, app/finders/concerns/updated_at_filter.rb,
app/models/deployment.rb, GitLab 17-18) and the "Deployments API" / "Environments API" docs:

- Grape refuses bad values with 400 {"error": "<param> does not have a valid value"} (order_by,
  sort, status, states; an empty value too) or "<param> is invalid" (times, ids, `status[]`),
  several joined by ", ". An empty time is no filter (Grape makes it nil).
  `order_by` is one of id, iid, created_at, updated_at, finished_at: `ref` was removed in GitLab 16.3
  (the docs still list it). `status` takes every Deployment status, `skipped` included.
- DeploymentsFinder#validate! then answers 400 {"message": "400 Bad request - <reason>"}, in this
  order: updated_* and finished_* together; updated_* without order_by=updated_at; finished_*
  without order_by=finished_at; order_by=finished_at without a finished_* filter or a finished
  status (success, failed, canceled); finished_* without status=success.
- updated_after/updated_before are inclusive (>= / <=) and nothing matches when before < after;
  finished_after is inclusive (>=) and finished_before strict (<), on finished_at.
- Ordering: created_at and iid sort as id; updated_at gets id as tie-breaker in the same
  direction; finished_at has none in GitLab (id here). Default id asc.
- Environments: `name` exact, `search` a case-insensitive prefix of the name or of the name inside
  its folder ("review/feature-x" matches "feat"), at least 3 characters (400 "Search query is less
  than 3 characters", flag environment_search_api_min_chars, on by default here:
  `environment_search_api_min_chars`); `name` with `search` is refused ("name, search cannot be
  used together"); `states` one of available, stopping, stopped. The list carries no
  `last_deployment`; the single environment does, and no `project`.
- Unknown environment or deployment ids answer 404 {"message": "404 Not found"}.
"""

from __future__ import annotations

import re

from tests.support.emulator_http import ApiError
from tests.support.emulator_state import (
    DEPLOYMENT_FINISHED, DEPLOYMENT_STATUSES, ENVIRONMENT_STATES, Deployment, Project, parse_time,
)


def _bad_request(reason: str) -> ApiError:
    return ApiError(400, f"400 Bad request - {reason}")


class DeploymentsApi:
    """Environments and deployments: a mixin of `GitLabEmulator`."""

    # DeploymentsFinder::ALLOWED_SORT_VALUES
    DEPLOYMENT_ORDER = ("id", "iid", "created_at", "updated_at", "finished_at")
    ENVIRONMENT_SEARCH_MIN = 3

    # environments
    def list_environments(self, req, raw_path, pid):
        p = self._project(pid)
        args = req.args
        errors: list[str] = []
        states = args.get("states")
        if states is not None and states not in ENVIRONMENT_STATES:
            errors.append("states does not have a valid value")
        if "name" in args and "search" in args:
            errors.append("name, search cannot be used together")
        if errors:
            raise ApiError(400, ", ".join(errors), key="error")
        name, search = args.get("name"), args.get("search")
        if self.environment_search_api_min_chars and search and len(search) < self.ENVIRONMENT_SEARCH_MIN:
            raise _bad_request(f"Search query is less than {self.ENVIRONMENT_SEARCH_MIN} characters")
        with self.lock:
            envs = list(p.environments.values())  # id order
            if name:
                envs = [e for e in envs if e.name == name]
            if search:
                term = search.lower()

                def in_folder(env_name: str) -> str:
                    parts = env_name.split("/")
                    return env_name[len(parts[0]):].lstrip("/") if len(parts) > 1 else ""

                envs = [e for e in envs if e.name.lower().startswith(term)
                        or (in_folder(e.name) and in_folder(e.name).lower().startswith(term))]
            if states:
                envs = [e for e in envs if e.state == states]
            items = [e.as_json() for e in envs]
        return self._paginate(req, raw_path, items)

    def get_environment(self, req, raw_path, pid, environment_id):
        p = self._project(pid)
        if not re.fullmatch(r"\d+", environment_id):
            raise ApiError(400, "environment_id is invalid", key="error")
        with self.lock:
            env = p.environments.get(int(environment_id))
            if env is None:
                raise ApiError(404, "404 Not found")
            return self._json(env.as_json(last_deployment=True))

    # deployments
    def list_deployments(self, req, raw_path, pid):
        p = self._project(pid)
        args = req.args
        errors: list[str] = []

        def choice(param: str, allowed, default=None):
            value = args.get(param)
            if value is None:
                return default
            if value not in allowed:
                errors.append(f"{param} does not have a valid value")
                return default
            return value

        def when(param: str):
            value = args.get(param)
            if value is None or value == "":
                return None
            try:
                return parse_time(value)
            except (ValueError, TypeError, IndexError):
                errors.append(f"{param} is invalid")
                return None

        # Grape's declaration order (lib/api/deployments.rb).
        order_by = choice("order_by", self.DEPLOYMENT_ORDER, "id")
        sort = choice("sort", ("asc", "desc"), "asc")
        updated_after, updated_before = when("updated_after"), when("updated_before")
        finished_after, finished_before = when("finished_after"), when("finished_before")
        environment = args.get("environment") or None
        if "status[]" in args:
            errors.append("status is invalid")
        status = choice("status", DEPLOYMENT_STATUSES)
        if errors:
            raise ApiError(400, ", ".join(errors), key="error")

        # DeploymentsFinder#validate!
        by_updated = updated_after is not None or updated_before is not None
        by_finished = finished_after is not None or finished_before is not None
        if by_updated and by_finished:
            raise _bad_request("Both `updated_at` filter and `finished_at` filter can not be specified")
        if by_updated and order_by != "updated_at":
            raise _bad_request("`updated_at` filter requires `updated_at` sort")
        if by_finished and order_by != "finished_at":
            raise _bad_request("`finished_at` filter requires `finished_at` sort.")
        if order_by == "finished_at" and not (by_finished or status in DEPLOYMENT_FINISHED):
            raise _bad_request("`finished_at` sort requires `finished_at` filter or a filter with at least "
                               "one of the finished statuses.")
        if by_finished and status != "success":
            raise _bad_request("`finished_at` filter must be combined with `success` status filter.")

        with self.lock:
            items = self.find_deployments(p, updated_after=updated_after, updated_before=updated_before,
                                          finished_after=finished_after, finished_before=finished_before,
                                          environment=environment, status=status, order_by=order_by, sort=sort)
            out = [d.as_json() for d in items]
        return self._paginate(req, raw_path, out)

    def find_deployments(self, p: Project, *, updated_after=None, updated_before=None, finished_after=None,
                         finished_before=None, environment: str | None = None, status: str | None = None,
                         order_by: str = "id", sort: str = "asc") -> list[Deployment]:
        """DeploymentsFinder#execute on a project (the checks of #validate! are the handler's)."""
        with self.lock:
            items = list(p.deployments.values())  # id order
            if updated_before is not None and updated_after is not None and updated_before < updated_after:
                items = []
            if updated_before is not None:
                items = [d for d in items if parse_time(d.updated_at) <= updated_before]
            if updated_after is not None:
                items = [d for d in items if parse_time(d.updated_at) >= updated_after]
            if finished_before is not None:
                items = [d for d in items if d.finished_at and parse_time(d.finished_at) < finished_before]
            if finished_after is not None:
                items = [d for d in items if d.finished_at and parse_time(d.finished_at) >= finished_after]
            if environment:
                env = next((e for e in p.environments.values() if e.name == environment), None)
                items = [d for d in items if env is not None and d.environment_id == env.id]
            if status:
                items = [d for d in items if d.status == status]
            desc = sort == "desc"
            if order_by in ("id", "iid", "created_at"):
                items.sort(key=lambda d: d.id, reverse=desc)
            elif order_by == "updated_at":
                items.sort(key=lambda d: (parse_time(d.updated_at), d.id), reverse=desc)
            else:  # finished_at: PostgreSQL puts NULLs last ascending, first descending
                items.sort(key=lambda d: (d.finished_at is None, d.finished_at or "", d.id), reverse=desc)
            return items

    def get_deployment(self, req, raw_path, pid, deployment_id):
        p = self._project(pid)
        if not re.fullmatch(r"\d+", deployment_id):
            raise ApiError(400, "deployment_id is invalid", key="error")
        with self.lock:
            dep = p.deployments.get(int(deployment_id))
            if dep is None:
                raise ApiError(404, "404 Not found")
            return self._json(dep.as_json())
