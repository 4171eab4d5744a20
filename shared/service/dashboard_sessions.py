"""Dashboard sessions kept server-side: a signed cookie only names one, so signing out or revoking the key ends it for every copy."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..adapters.models import ApiKey, DashboardSession, utcnow


def start_dashboard_session(session: Session, key: ApiKey, *, lifetime: timedelta) -> DashboardSession:
    """Open a session for `key` and forget sessions older than `lifetime` (they can no longer be used)."""
    now = utcnow()
    session.execute(delete(DashboardSession).where(DashboardSession.created_at < now - lifetime))
    dashboard_session = DashboardSession(id=secrets.token_urlsafe(32), key_id=key.id, created_at=now)
    session.add(dashboard_session)
    session.flush()
    return dashboard_session


def signed_in_key(session: Session, session_id: str, *, lifetime: timedelta) -> ApiKey | None:
    """Return the live key of the open session `session_id`, or None (unknown, ended, expired, or its key revoked)."""
    row = session.execute(
        select(DashboardSession, ApiKey).join(ApiKey, DashboardSession.key_id == ApiKey.id).where(DashboardSession.id == session_id)
    ).first()
    if row is None:
        return None
    dashboard_session, key = row
    if dashboard_session.ended_at is not None or key.revoked_at is not None or dashboard_session.created_at < utcnow() - lifetime:
        return None
    return key


def end_dashboard_session(session: Session, session_id: str) -> None:
    """End the session `session_id` (signing out), if it is open."""
    dashboard_session = session.get(DashboardSession, session_id)
    if dashboard_session is not None and dashboard_session.ended_at is None:
        dashboard_session.ended_at = utcnow()
        session.flush()
