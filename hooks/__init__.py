"""tagsweeper's web side: receives GitLab webhooks and enqueues RQ jobs, nothing else.

`create_app()` is the application factory (gunicorn: ``gunicorn 'hooks:create_app()'``).
Settings are read when the app is created, never at import time; a missing or bad
setting raises RuntimeError, which gunicorn prints before it exits.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from os.environ, with `test_config` overriding keys of the same name."""
    from hooks import dashboard, intake, logs, metrics_view, signing, views
    from workers.common import settings

    app = Flask(__name__)
    config = settings.web_config(os.environ, test_config, signing_keys=signing.parse_keys)
    extra = {k: v for k, v in (test_config or {}).items() if k not in settings.WEB_VARIABLES}
    app.config.from_mapping(extra)  # e.g. TESTING
    app.config.from_mapping(config)
    # Werkzeug refuses a larger Content-Length early; views.read_body bounds chunked bodies.
    app.config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]
    app.json.sort_keys = False

    logs.init_app(app)
    intake.init_app(app)
    views.init_app(app)
    metrics_view.init_app(app)
    dashboard.init_app(app)
    return app

