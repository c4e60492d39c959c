"""Cooperating processes on PostgreSQL: the poller's lease, senders' liveness, channel leases.

As for SQLite (storage/roles.py), who is alive is the server's word: a session-level advisory
lock, held by a connection this store keeps open for its leases, goes when that session ends,
also when the process is killed. Keys are per schema (`current_schema()`), so two bots in
two schemas of one database never share a lease.

- The poller's lease: the key "papers-bot poller lease".
- A sender's liveness: the key "papers-bot sender <sender_id>", held from its first claim
  until close(). A row left 'sending' whose claimer's key can be taken was interrupted.
- Channel leases are rows (`channel_leases`, p003), taken atomically with INSERT ... ON
  CONFLICT DO UPDATE ... WHERE (the row's holder, or its lease ran out).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from bot.errors import StorageError
from bot.models import ChannelRef

from ..roles import DEAD_HANDOVER, new_sender_id
from .db import LOCK_KEY, Database

POLLER_LEASE = "papers-bot poller lease"
SENDER = "papers-bot sender "
_KEY = LOCK_KEY  # per schema


def _exact(moment: datetime) -> datetime:
    """Aware UTC, microseconds kept (a lease's hand-over gap is about a second)."""
    return moment.astimezone(timezone.utc)


class RolesMixin:
    db: Database
    url: str
    path: str
    busy_timeout: float
    sender_id: str
    _leases_db: Database | None  # the session holding this store's advisory locks (poller, liveness)
    _polls: bool
    _alive: bool
    _leased: bool  # whether it ever held a channel lease (dropped at close)
    _session_guard: threading.Lock
    if TYPE_CHECKING:
        def _reader(self) -> AbstractContextManager[Database]: ...  # PgStore's: this thread's connection

    def _roles_init(self) -> None:
        self.sender_id = new_sender_id()
        self._leases_db = None
        self._polls = False
        self._alive = False
        self._leased = False
        # Claims and leases may come from worker threads at once: one session, one liveness lock.
        self._session_guard = threading.Lock()

    def _session(self) -> Database:
        if self._leases_db is None:
            with self._session_guard:
                if self._leases_db is None:
                    self._leases_db = Database(self.url, busy_timeout=self.busy_timeout)
        return self._leases_db

    def _try_lock(self, name: str) -> bool:
        return bool(self._session().scalar(f"SELECT pg_try_advisory_lock({_KEY})", [name]))

    def _drop_leases(self) -> None:
        if self._leased:
            self._leased = False
            try:
                self.db.execute("DELETE FROM channel_leases WHERE holder = %s", [self.sender_id])
            except Exception:  # closing regardless: they run out by themselves
                pass

    def _roles_close(self) -> None:
        if self._leases_db is not None:
            try:  # at once: the server frees a closed session's locks only once it has noticed
                self._leases_db.execute("SELECT pg_advisory_unlock_all()")
            except Exception:  # closing regardless: they go with the session
                pass
            self._leases_db.close()
            self._leases_db = None
        self._polls = self._alive = False

    def hold_poller_lease(self) -> bool:
        if not self._polls:
            self._polls = self._try_lock(POLLER_LEASE)
        return self._polls

    def live_sender_id(self) -> str:
        if not self._alive:
            if getattr(self, "_closed", False):  # a worker thread's claim after close: no new session, no lock
                raise StorageError(f"the database {self.path} is closed", self.path)
            session = self._session()
            with self._session_guard:  # taken once, whichever thread comes first
                if not self._alive:
                    if not bool(session.scalar(f"SELECT pg_try_advisory_lock({_KEY})", [SENDER + self.sender_id])):
                        raise StorageError(f"the liveness lock of sender {self.sender_id} is held elsewhere",
                                           self.path)  # nobody else has this random name
                    self._alive = True
        return self.sender_id

    def adopt_orphans(self) -> int:
        others = [row[0] for row in self.db.all(
            """SELECT claimed_by FROM deliveries WHERE status = 'sending' AND claimed_by IS NOT NULL
               UNION SELECT claimed_by FROM followups WHERE status = 'sending' AND claimed_by IS NOT NULL""")
            if row[0] != self.sender_id]
        adopted = 0
        for other in others:
            if not self._try_lock(SENDER + other):
                continue  # alive (or another process is adopting its rows right now)
            try:
                me = self.live_sender_id()
                with self.db.transaction():
                    for table in ("deliveries", "followups"):
                        adopted += self.db.execute(
                            f"UPDATE {table} SET claimed_by = %s WHERE status = 'sending' AND claimed_by = %s",
                            [me, other]).rowcount
            finally:
                self._session().execute(f"SELECT pg_advisory_unlock({_KEY})", [SENDER + other])
        return adopted

    def lease_channel(self, channel: ChannelRef, now: datetime, until: datetime,
                      handover: timedelta = DEAD_HANDOVER) -> bool:
        """Any thread: on the calling thread's connection (`_reader`), as `release_channel`."""
        me = self.live_sender_id()  # a holder can always be told alive or dead
        self._leased = True
        with self._reader() as db:
            if db.execute(
                    """INSERT INTO channel_leases (channel, holder, until) VALUES (%s, %s, %s)
                       ON CONFLICT (channel) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
                        WHERE channel_leases.holder = EXCLUDED.holder OR channel_leases.until <= %s""",
                    [channel.key, me, _exact(until), _exact(now)]).rowcount == 1:
                return True
            holder = db.scalar("SELECT holder FROM channel_leases WHERE channel = %s", [channel.key])
            if holder is not None and self._try_lock(SENDER + holder):  # its session is gone
                try:
                    db.execute("""UPDATE channel_leases SET until = least(until, %s)
                                   WHERE channel = %s AND holder = %s""",
                               [_exact(now + handover), channel.key, holder])
                finally:
                    self._session().execute(f"SELECT pg_advisory_unlock({_KEY})", [SENDER + holder])
        return False

    def release_channel(self, channel: ChannelRef, until: datetime) -> None:
        with self._reader() as db:  # any thread
            db.execute("UPDATE channel_leases SET until = %s WHERE channel = %s AND holder = %s",
                       [_exact(until), channel.key, self.sender_id])
