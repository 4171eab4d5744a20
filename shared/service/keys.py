"""API keys: made once, shown once, stored only as a hash keyed by the server secret; listed and revoked by operators,
who also rotate each key's webhook signing secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..adapters.models import ApiKey, DashboardSession, KeyHashScheme, utcnow
from ..domain.errors import Conflict, NotFound

KEY_PREFIX = "sq_"
# How many of a key's first characters are kept in the clear, to tell keys apart in listings.
PREFIX_LENGTH = 10
# Keys the server secret for this one use, so the same secret signing cookies never keys the hashes directly.
HASH_PURPOSE = b"styleq api key hash v1"


def hash_key(token: str, secret: str) -> str:
    """Return the stored form of an API key: HMAC-SHA256 under a key derived from the server secret."""
    hash_secret = hmac.new(secret.encode(), HASH_PURPOSE, hashlib.sha256).digest()
    return hmac.new(hash_secret, token.encode(), hashlib.sha256).hexdigest()


def legacy_hash_key(token: str) -> str:
    """Return the plain SHA-256 that keys made before migration 0007 are stored as."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(session: Session, name: str, *, secret: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Add a key named `name`; return its row and the secret, which is not stored and cannot be shown again."""
    if not name or len(name) > 100:
        raise ValueError("a key needs a name of 1 to 100 characters")
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, key_hash=hash_key(token, secret), hash_scheme=KeyHashScheme.HMAC_SHA256, prefix=token[:PREFIX_LENGTH], is_admin=is_admin
    )
    session.add(key)
    session.flush()
    return key, token


def authenticate(session: Session, token: str, *, secret: str) -> ApiKey | None:
    """Return the live key whose secret is `token`, or None.

    A key still stored as a plain SHA-256 is rewritten as HMAC in `session`: commit it to keep that.
    """
    if not token.startswith(KEY_PREFIX):
        return None
    keyed, plain = hash_key(token, secret), legacy_hash_key(token)
    key = session.scalar(
        select(ApiKey).where(
            or_(
                and_(ApiKey.key_hash == keyed, ApiKey.hash_scheme == KeyHashScheme.HMAC_SHA256),
                and_(ApiKey.key_hash == plain, ApiKey.hash_scheme == KeyHashScheme.SHA256),
            )
        )
    )
    if key is None or key.revoked_at is not None:
        return None
    if key.hash_scheme is not KeyHashScheme.HMAC_SHA256:
        key.key_hash, key.hash_scheme = keyed, KeyHashScheme.HMAC_SHA256
    return key


def list_api_keys(session: Session) -> list[ApiKey]:
    """Return every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def find_api_key(session: Session, id_or_prefix: str) -> ApiKey:
    """Return the key with this id (digits) or this prefix (as `list_api_keys` shows it).

    Raises:
        NotFound: no key has it.
        Conflict: several keys share the prefix (then name the key by its id).
    """
    text = id_or_prefix.strip()
    if text.isdigit():
        key = session.get(ApiKey, int(text))
        if key is None:
            raise NotFound(f"no API key has the id {text}")
        return key
    matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == text).order_by(ApiKey.id)))
    if not matches:
        raise NotFound(f"no API key has the id or prefix {text!r}")
    if len(matches) > 1:
        ids = ", ".join(str(key.id) for key in matches)
        raise Conflict(f"several API keys have the prefix {text!r} (ids {ids}); name one by its id")
    return matches[0]


def revoke_api_key(session: Session, key: ApiKey) -> bool:
    """Revoke `key` and end every dashboard session signed in with it; return False if it was revoked already."""
    if key.revoked_at is not None:
        return False
    now = utcnow()
    key.revoked_at = now
    for dashboard_session in session.scalars(
        select(DashboardSession).where(DashboardSession.key_id == key.id, DashboardSession.ended_at.is_(None))
    ):
        dashboard_session.ended_at = now
    session.flush()
    return True


def rotate_webhook_secret(session: Session, key: ApiKey) -> None:
    """Give the key a new webhook signing secret (shared.service.webhooks.webhook_secret of its next version); the old one signs too for a while."""
    key.webhook_secret_version += 1
    key.webhook_secret_rotated_at = utcnow()
    session.flush()


def key_is_live(session: Session, key_id: int) -> bool:
    """Tell whether the key `key_id` exists and is not revoked (for work that outlives the request that checked it)."""
    return session.scalar(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))) is not None
