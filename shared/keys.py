"""API keys: made once, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey

KEY_PREFIX = "sq_"


def hash_key(token: str) -> str:
    """Return the stored form of an API key."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(session: Session, name: str, *, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Add a key named `name`; return its row and the secret, which is not stored and cannot be shown again."""
    if not name or len(name) > 100:
        raise ValueError("a key needs a name of 1 to 100 characters")
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, key_hash=hash_key(token), prefix=token[:10], is_admin=is_admin)
    session.add(key)
    session.flush()
    return key, token


def authenticate(session: Session, token: str) -> ApiKey | None:
    """Return the live key whose secret is `token`, or None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    return key if key is not None and key.revoked_at is None else None
