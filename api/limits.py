"""Fair use: every /v1 request counts against its key's per-minute limit (the limit on jobs is checked at submit)."""

from __future__ import annotations

from styleq.shared.adapters.models import utcnow
from styleq.shared.service import limits

from .auth import current_key
from .backends import backends, db_session


def count_request() -> None:
    """Count the authenticated request against its key's requests per minute, or refuse it with 429."""
    session = db_session()
    limits.count_request(session, current_key(), limit=backends().settings.max_requests_per_minute, now=utcnow())
    # Committed before the view runs: the count holds whatever the view does, and its row lock is not kept.
    session.commit()
