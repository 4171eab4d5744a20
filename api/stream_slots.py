"""How many event streams each API key has open, counted across every API process that shares a store.

Each open stream holds a slot, a member with an expiry, which its process renews while the stream
lives and removes when it ends; a crashed process's slots expire on their own. The store is Redis
when the broker is Redis (every API process of every host shares it), else a small SQLite file in
the data directory, shared by the API processes of one host (`styleq up`'s): the job database has no
table for it, and a count that lives only as long as its streams does not belong among the jobs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from shared.settings import Settings

# A slot is renewed every RENEW_EVERY_SECONDS while its stream lives and expires SLOT_TTL_SECONDS after the last renewal.
SLOT_TTL_SECONDS = 60.0
RENEW_EVERY_SECONDS = 15.0
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class SlotStore(Protocol):
    """Where the slots live."""

    def acquire(self, key_id: int, member: str, limit: int, now: float) -> bool: ...
    def release(self, key_id: int, member: str) -> None: ...
    def renew(self, members: dict[str, int], now: float) -> None: ...


class StreamSlots:
    """The slots of this process's open streams, in a store every API process shares."""

    renew_every_seconds = RENEW_EVERY_SECONDS

    def __init__(self, store: SlotStore) -> None:
        self.store = store
        # This process's open slots (member -> key id), renewed together.
        self.held: dict[str, int] = {}
        self.process = uuid.uuid4().hex[:12]
        self.lock = threading.Lock()

    def acquire(self, key_id: int, limit: int) -> str | None:
        """Take one of the key's `limit` slots; return its name, or None when all are taken."""
        member = f"{self.process}:{uuid.uuid4().hex[:12]}"
        if not self.store.acquire(key_id, member, limit, time.time()):
            return None
        with self.lock:
            self.held[member] = key_id
        return member

    def release(self, member: str) -> None:
        """Give the slot back (once; later calls do nothing)."""
        with self.lock:
            key_id = self.held.pop(member, None)
        if key_id is not None:
            self.store.release(key_id, member)

    def renew(self) -> None:
        """Push back the expiry of every slot this process holds."""
        with self.lock:
            members = dict(self.held)
        if members:
            self.store.renew(members, time.time())


class RedisSlots:
    """Slots as a sorted set per key (member -> expiry time) in Redis."""

    def __init__(self, url: str, namespace: str) -> None:
        import redis  # only where the broker is Redis

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.script = self.redis.register_script(_ACQUIRE)
        # Named by the deployment's queue too: two deployments sharing one Redis number their keys alike.
        self.prefix = f"styleq:streams:{namespace}:"

    def _name(self, key_id: int) -> str:
        return f"{self.prefix}{key_id}"

    def acquire(self, key_id: int, member: str, limit: int, now: float) -> bool:
        taken = self.script(keys=[self._name(key_id)], args=[now, limit, now + SLOT_TTL_SECONDS, member, int(SLOT_TTL_SECONDS) + 1])
        return bool(taken)

    def release(self, key_id: int, member: str) -> None:
        self.redis.zrem(self._name(key_id), member)

    def renew(self, members: dict[str, int], now: float) -> None:
        pipeline = self.redis.pipeline(transaction=False)
        for member, key_id in members.items():
            pipeline.zadd(self._name(key_id), {member: now + SLOT_TTL_SECONDS}, xx=True)
            pipeline.expire(self._name(key_id), int(SLOT_TTL_SECONDS) + 1)
        pipeline.execute()


class SqliteSlots:
    """Slots as rows of a SQLite file that the API processes of one host share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        # Opened on first use, in the serving process (never across a fork); autocommit, with explicit transactions.
        if self.connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS stream_slots (member TEXT PRIMARY KEY, key_id INTEGER NOT NULL, expires REAL NOT NULL)")
            connection.execute("CREATE INDEX IF NOT EXISTS stream_slots_key ON stream_slots (key_id)")
            self.connection = connection
        return self.connection

    def acquire(self, key_id: int, member: str, limit: int, now: float) -> bool:
        with self.lock:
            connection = self._connect()
            # IMMEDIATE takes the file's write lock first, so two processes' counts never both see room for one.
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM stream_slots WHERE key_id = ? AND expires < ?", (key_id, now))
                (count,) = connection.execute("SELECT count(*) FROM stream_slots WHERE key_id = ?", (key_id,)).fetchone()
                if count >= limit:
                    connection.execute("COMMIT")
                    return False
                connection.execute("INSERT INTO stream_slots VALUES (?, ?, ?)", (member, key_id, now + SLOT_TTL_SECONDS))
                connection.execute("COMMIT")
                return True
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def release(self, key_id: int, member: str) -> None:
        with self.lock:
            self._connect().execute("DELETE FROM stream_slots WHERE member = ?", (member,))

    def renew(self, members: dict[str, int], now: float) -> None:
        with self.lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany("UPDATE stream_slots SET expires = ? WHERE member = ?", [(now + SLOT_TTL_SECONDS, member) for member in members])
            connection.execute("COMMIT")


def make_stream_slots(settings: Settings) -> StreamSlots:
    """Return the slots of this process in Redis when the broker is Redis, else in `<data_dir>/streams.db`."""
    if settings.broker.startswith(("redis://", "rediss://")):
        return StreamSlots(RedisSlots(settings.broker, settings.queue))
    return StreamSlots(SqliteSlots(settings.data_dir / "streams.db"))
