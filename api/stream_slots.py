"""How many event streams each API key has open, counted across every API process that shares a store.

Each open stream holds a slot, a member with an expiry, which its process renews while the stream
lives and removes when it ends; a crashed process's slots expire on their own
(`STYLEQ_STREAM_SLOT_TTL_SECONDS` after their last renewal). The store is Redis
when the broker is Redis (every API process of every host shares it), else a small SQLite file in
the data directory, shared by the API processes of one host (`styleq up`'s): the job database has no
table for it, and a count that lives only as long as its streams does not belong among the jobs.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from styleq.shared.adapters.settings import Settings

T = TypeVar("T")
# How long to wait for the other API processes' write on streams.db before giving up on a slot.
SQLITE_LOCK_WAIT_SECONDS = 30.0
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class SlotStore(Protocol):
    """Where the slots live."""

    ttl_seconds: float

    def acquire(self, key_id: int, member: str, limit: int, now: float) -> bool: ...
    def release(self, key_id: int, member: str) -> None: ...
    def renew(self, members: dict[str, int], now: float) -> None: ...


class StreamSlots:
    """The slots of this process's open streams, in a store every API process shares."""

    def __init__(self, store: SlotStore) -> None:
        self.store = store
        # Renewed four times within an expiry, so a slow poll or two never lets a live stream's slot lapse.
        self.renew_every_seconds = store.ttl_seconds / 4
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

    def __init__(self, url: str, namespace: str, ttl_seconds: float) -> None:
        import redis  # only where the broker is Redis

        self.ttl_seconds = ttl_seconds
        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.script = self.redis.register_script(_ACQUIRE)
        # Named by the deployment's queue too: two deployments sharing one Redis number their keys alike.
        self.prefix = f"styleq:streams:{namespace}:"

    def _name(self, key_id: int) -> str:
        return f"{self.prefix}{key_id}"

    def acquire(self, key_id: int, member: str, limit: int, now: float) -> bool:
        taken = self.script(keys=[self._name(key_id)], args=[now, limit, now + self.ttl_seconds, member, math.ceil(self.ttl_seconds) + 1])
        return bool(taken)

    def release(self, key_id: int, member: str) -> None:
        self.redis.zrem(self._name(key_id), member)

    def renew(self, members: dict[str, int], now: float) -> None:
        pipeline = self.redis.pipeline(transaction=False)
        for member, key_id in members.items():
            pipeline.zadd(self._name(key_id), {member: now + self.ttl_seconds}, xx=True)
            pipeline.expire(self._name(key_id), math.ceil(self.ttl_seconds) + 1)
        pipeline.execute()


class SqliteSlots:
    """Slots as rows of a SQLite file that the API processes of one host share.

    sqlite3 waits for another process's write lock in C, sleeping the whole process: under gunicorn's
    gevent worker that froze every request of the process (a fifth of its time with 250 streams opening
    at once, measured with py-spy). So the file is opened without a busy timeout and a locked write is
    retried after a short sleep, which gevent turns into a switch to the other requests.
    """

    def __init__(self, path: Path, ttl_seconds: float) -> None:
        self.path = path
        self.ttl_seconds = ttl_seconds
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        # Opened on first use, in the serving process (never across a fork); autocommit, with explicit transactions.
        if self.connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            self._retrying(lambda: connection.execute("PRAGMA journal_mode=WAL"))
            # No fsync per slot: a machine crash loses at most slots, which its API processes' restart frees anyway.
            connection.execute("PRAGMA synchronous=OFF")
            self._retrying(
                lambda: connection.execute(
                    "CREATE TABLE IF NOT EXISTS stream_slots (member TEXT PRIMARY KEY, key_id INTEGER NOT NULL, expires REAL NOT NULL)"
                )
            )
            self._retrying(lambda: connection.execute("CREATE INDEX IF NOT EXISTS stream_slots_key ON stream_slots (key_id)"))
            self.connection = connection
        return self.connection

    def _retrying(self, write: Callable[[], T]) -> T:
        """Run `write`, again after a short cooperative sleep while another process holds the file's write lock."""
        deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
        pause = 0.002
        while True:
            try:
                return write()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run `body` in one write transaction, taken with the file's write lock first (BEGIN IMMEDIATE)."""
        connection = self._connect()

        def attempt() -> T:
            # IMMEDIATE takes the write lock first, so two processes' counts never both see room for one.
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = body(connection)
                connection.execute("COMMIT")
                return result
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        return self._retrying(attempt)

    def acquire(self, key_id: int, member: str, limit: int, now: float) -> bool:
        def take(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM stream_slots WHERE key_id = ? AND expires < ?", (key_id, now))
            (count,) = connection.execute("SELECT count(*) FROM stream_slots WHERE key_id = ?", (key_id,)).fetchone()
            if count >= limit:
                return False
            connection.execute("INSERT INTO stream_slots VALUES (?, ?, ?)", (member, key_id, now + self.ttl_seconds))
            return True

        with self.lock:
            return self._transaction(take)

    def release(self, key_id: int, member: str) -> None:
        with self.lock:
            self._transaction(lambda connection: connection.execute("DELETE FROM stream_slots WHERE member = ?", (member,)))

    def renew(self, members: dict[str, int], now: float) -> None:
        rows = [(now + self.ttl_seconds, member) for member in members]
        with self.lock:
            self._transaction(lambda connection: connection.executemany("UPDATE stream_slots SET expires = ? WHERE member = ?", rows))


def make_stream_slots(settings: Settings) -> StreamSlots:
    """Return the slots of this process in Redis when the broker is Redis, else in `<data_dir>/streams.db`."""
    if settings.broker.startswith(("redis://", "rediss://")):
        return StreamSlots(RedisSlots(settings.broker, settings.queue, settings.stream_slot_ttl_seconds))
    return StreamSlots(SqliteSlots(settings.data_dir / "streams.db", settings.stream_slot_ttl_seconds))
