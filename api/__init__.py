"""The HTTP API: an app factory over the service layer in `shared/` (no torch, no worker imports)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from styleq.shared.adapters.settings import Settings


def gunicorn_command(bind: str, workers: int, worker_class: str, *options: str) -> list[str]:
    """Return the command that serves the API under gunicorn with styleq's gunicorn config (`api/gunicorn_config.py`).

    The one way it is started: by `styleq up`, the tests' deployments and the benchmarks alike; `options` are more of
    gunicorn's own.
    """
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:styleq.api.gunicorn_config",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        *options,
        "styleq.api:create_app()",
    ]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for `settings` (read from STYLEQ_* variables when not given); nothing connects yet."""
    # Imported here, not with the package: gunicorn's master imports this package to read its config
    # (api.gunicorn_config), and under the gevent worker class each worker monkey-patches the standard
    # library after the fork. A module imported before that keeps the real locks and sockets it took
    # at import, which block a whole gevent process; loaded here, in the patched worker, none does.
    from flask import Blueprint, Flask

    from styleq.shared.adapters.db import make_engine, make_session_factory
    from styleq.shared.adapters.secret_key import load_secret_key
    from styleq.shared.adapters.settings import load_settings
    from styleq.shared.adapters.storage import open_storage
    from styleq.shared.domain.params import MAX_STYLES
    from styleq.shared.service.retention import StorageUsage

    from . import auth, dashboard, errors, events, files, health, jobs, limits, openapi, request_context, security
    from .backends import EXTENSION, Backends, close_session
    from .queue import JobQueue

    settings = settings or load_settings()
    # The instance folder is the data directory, said outright: Flask's own guess walks the package's parents, and
    # `styleq` is a namespace package whose editable install has no folder of its own (the guess fails there).
    app = Flask(__name__, static_folder=None, instance_path=str(settings.data_dir.absolute()))
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's DefaultJSONProvider has it; app.json is typed as the base provider
    app.config.update(
        # The content and up to MAX_STYLES style images of at most max_upload_bytes each, plus the form fields
        # and multipart framing: a bigger body is refused (413) before any of it is read.
        MAX_CONTENT_LENGTH=(1 + MAX_STYLES) * settings.max_upload_bytes + 1024 * 1024,
        EVENTS_POLL_SECONDS=0.5,
        EVENTS_KEEPALIVE_SECONDS=15.0,
        EVENTS_MAX_SECONDS=300.0,
    )
    engine = make_engine(settings.database)
    secret_key = load_secret_key(settings)
    storage = open_storage(settings)
    resources = app.extensions[EXTENSION] = Backends(
        settings=settings,
        secret_key=secret_key,
        engine=engine,
        session_factory=make_session_factory(engine),
        storage=storage,
        queue=JobQueue(settings),
        storage_usage=StorageUsage(storage),
    )
    app.teardown_appcontext(close_session)
    errors.register_error_handlers(app)
    request_context.init_app(app)
    security.init_app(app, settings)

    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(auth.require_api_key)
    v1.before_request(limits.count_request)
    for blueprint in (jobs.bp, files.bp, events.bp):
        v1.register_blueprint(blueprint)
    app.register_blueprint(v1)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    # `/metrics` for Prometheus, and the request counts it reports. Imported here, in the serving process:
    # gunicorn's master imports this package with its config, before the config sets the folder that
    # prometheus_client, once imported, would never look for again (see api.gunicorn_config).
    from . import metrics

    metrics.init_app(app, resources.session_factory, resources.storage_usage)
    # The browser dashboard at `/`, and the secret its session cookie (also accepted by /v1) is signed with.
    dashboard.init_app(app, secret_key)
    app.wsgi_app = events.StreamOpenGate(app.wsgi_app)  # type: ignore[method-assign]  # middleware, wrapped as Flask documents
    return app
