"""The server secret: signs the dashboard's cookies and keys the stored hashes of API keys."""

from __future__ import annotations

import secrets
from pathlib import Path

from .settings import Settings
from .storage import write_atomically


def secret_key_file(settings: Settings) -> Path:
    """Return where the secret is kept when `STYLEQ_SECRET_KEY` does not give it."""
    return settings.data_dir / "secret-key"


def load_secret_key(settings: Settings) -> str:
    """Return `settings.secret_key`, else the one kept in the data directory (made there first if missing).

    The API and `styleq keys create` both call this: a key made with one secret is not recognised
    under another, so they must see the same setting or the same data directory.
    """
    if settings.secret_key:
        return settings.secret_key
    path = secret_key_file(settings)
    if not path.is_file():
        # replace=False: of several processes racing to make it, the first one's secret is the one kept.
        write_atomically(path, (secrets.token_hex(32) + "\n").encode(), replace=False)
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(
            f"the secret key file {path} is empty; delete it to have a new one made (every API key made since must then be made again)"
        )
    return secret
