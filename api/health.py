"""Liveness and readiness probes for load balancers and orchestrators (no API key needed)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from kombu import Connection
from sqlalchemy import text

from .backends import backends
from .documented import described, json_body

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)
BROKER_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
@described({"summary": "Liveness.", "security": [], "responses": {"200": json_body("Up.", "Health")}})
def healthz() -> Response:
    """Answer that the process is up, touching nothing else."""
    return jsonify(status="ok")


@bp.get("/readyz")
@described(
    {
        "summary": "Readiness: the database and the broker answer.",
        "security": [],
        "responses": {"200": json_body("Ready.", "Health"), "503": json_body("Not ready; checks names the failing one.", "Health")},
    }
)
def readyz() -> tuple[Response, int]:
    """Answer 200 when the database and the broker both answer, else 503 naming the one that failed."""
    checks = {"database": check_database(), "broker": check_broker()}
    ready = all(check["ok"] for check in checks.values())
    return jsonify(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503


def check_database() -> dict[str, object]:
    """Run `SELECT 1` on a connection of its own."""
    try:
        with backends().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        log.warning("readiness: database check failed", exc_info=True)
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True}


def check_broker() -> dict[str, object]:
    """Open (and close) a connection to the broker, trying once."""
    try:
        with Connection(backends().settings.broker, connect_timeout=BROKER_TIMEOUT_SECONDS) as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2, timeout=BROKER_TIMEOUT_SECONDS
            )
    except Exception as error:
        log.warning("readiness: broker check failed", exc_info=True)
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True}
