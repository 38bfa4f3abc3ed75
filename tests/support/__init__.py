"""What the tests share: the real parts they talk to, and the helpers that drive them.

No test module imports from another one; what two of them need lives here (pytest fixtures
are in tests/conftest.py). Each module's docstring says what it provides:

The real parts
- procs: starting and stopping server processes (redis-server), free ports.
- registry: a real docker-registry with token auth, and a test-side client to push images.
- service: tagsweeper itself (gunicorn and RQ workers) as end-to-end tests run it.
- faultproxy, faults: a proxy in front of the registry that fails on cue; what a fault is.
- devstack: the emulator and a registry to try tagsweeper by hand.

The GitLab emulator
- gitlab_emulator: `GitLabEmulator`, assembled from the modules below; its route table.
- emulator_state: the state model (projects, commit graph, merge requests, pipelines,
  environments and deployments).
- emulator_http: the WSGI app, routing, auth, pagination, errors.
- emulator_projects, emulator_merge_requests, emulator_pipelines, emulator_deployments,
  emulator_registry, emulator_hooks: the handlers of each API area.

Helpers of the tests
- payloads: where the example deliveries live, their events, and Deployment Hook deliveries
  built from the emulator's deployments (`deployment_hook`).
- webapp: the hooks app in-process (`make_app`, `post`, `headers`, `keyspace`).
- shop: the example project seeded in the emulator and the registry (`make_shop`,
  `merge_payload`, `assert_registry`).
- modes: the two deletion modes (`MODES`, `mode_env`, `settings_for`).
- safety_model, safety_generator, safety_checks: the safety property's ground truth, its
  Hypothesis generator and its checks.
- retention_model: the retention property's ground truth.
- built: a project whose pipelines push images, for the retention tests (`BuiltProject`, `tags_of`).
- month: a month in the life of a busy project (generator, driver, oracle).
"""
