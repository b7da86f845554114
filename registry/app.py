"""The application factory: the Flask app around the services of ``registry.services``.

Nothing runs at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from registry.config import Settings
from registry.services import EXTENSION, build_services, ensure_admin_token


def create_app(config: Settings | Mapping[str, Any] | None = None, *,
               start_workers: bool = False) -> Flask:
    """Build the web application. ``config`` overrides the environment (tests pass a dict)."""
    settings = config if isinstance(config, Settings) else Settings.load(config)
    services = build_services(settings, start_workers=start_workers)
    ensure_admin_token(services)
    from registry.jobs.sandbox import Sandbox

    Sandbox(settings).announce()  # one line: is the converter sandbox full or degraded?

    from registry.api import register_api
    from registry.upload_stream import UploadRequest

    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + settings.max_eval_bytes + \
        settings.max_metadata_bytes + (1 << 20)
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_metadata_bytes
    app.config["TESTING"] = settings.testing
    app.extensions[EXTENSION] = services
    register_api(app)
    from registry.ratelimit import init_app as init_rate_limits

    init_rate_limits(app, settings)
    from registry.web import register_web

    register_web(app)
    from registry.observability import init_app as init_observability

    init_observability(app)  # request ids, JSON request log, request metrics
    return app
