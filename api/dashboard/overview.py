"""The operator view (admin keys only): the workers, the queue, jobs per status, recent failures and storage in use."""

from __future__ import annotations

from datetime import timedelta

from flask import abort, render_template

from styleq.shared.adapters.models import utcnow
from styleq.shared.service import fleet

from ..auth import current_key
from ..backends import backends, db_session
from . import bp
from .queries import jobs_by_id, oldest_queued, owner_names, recent_failures, status_counts


@bp.get("/operator")
def show_operator() -> str:
    """Show the state of the fleet and the queue."""
    key = current_key()
    if not key.is_admin:
        abort(403, "The operator view is for admin keys. Sign in with one to see the workers and the queue.")
    session, settings = db_session(), backends().settings
    usage = backends().storage_usage.get()
    workers = fleet.list_workers(session)
    # A worker reports itself every sweep; one silent for longer than a job's lease counts as lost.
    silent_since = utcnow() - timedelta(seconds=settings.lease_seconds)
    oldest = oldest_queued(session)
    failures = recent_failures(session)
    counts = status_counts(session, key)
    owners = [job.owner_id for job in failures] + ([oldest.owner_id] if oldest else [])
    return render_template(
        "operator.html",
        workers=workers,
        online={worker.name for worker in workers if worker.heartbeat_at >= silent_since},
        current=jobs_by_id(session, (worker.current_job_id for worker in workers)),
        counts=counts,
        total=sum(counts.values()),
        oldest=oldest,
        failures=failures,
        names=owner_names(session, owners),
        now=utcnow(),
        usage=usage,
        storage_total=sum(usage.values()),
        keep_days={kind: getattr(settings, f"keep_{kind}_days") for kind in ("results", "previews", "states", "uploads")},
    )
