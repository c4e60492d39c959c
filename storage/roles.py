"""Cooperating processes on one SQLite database: the poller's lease, senders' liveness, channel leases.

`papers-bot run --role poller|deliverer|frontend` splits the bot over processes. Who is alive
is told by the kernel, never by a timestamp: each lease is an advisory lock (flock) on a file
beside the database, held by an open file descriptor, released when the process ends, even
by kill -9. (The PostgreSQL Store does the same with session-level advisory locks.)

- The poller's lease: `<db>.poller.lock`; one process polls, the others stand by.
- A sender's liveness: `<db>.sender-<sender_id>.lock`, held from the first claim until
  close(). A row left 'sending' by a sender whose lock can be taken was interrupted: its
  process is gone (`adopt_orphans`).
- Channel leases are rows (`channel_leases`, m026): a channel is served by one deliverer at
  a time, so the platform's per-channel pace holds; a lease runs out by time, so a dead
  holder's channels are taken over once it has.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlite_utils import Database

from bot.errors import StorageError
from bot.models import ChannelRef

from .db import immediate, storage_error

# How long a channel's dead holder keeps it once found dead: the longest gap a platform asks
# between two messages of a channel (Discord: 5 in 5 seconds); its last post may be that recent.
DEAD_HANDOVER = timedelta(seconds=5)


def new_sender_id() -> str:
    """A sender's id, unique among processes and Stores: the pid (for people reading logs) and randomness."""
    return f"{os.getpid()}-{secrets.token_hex(6)}"


def lease_time(moment: datetime) -> str:
    """UTC ISO-8601 to the microsecond (a lease's hand-over gap is about a second), sortable as text."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _try_lock(path: str) -> int | None:
    """An open descriptor holding an exclusive flock on `path` (created if missing), or None if
    another open file (this process's or another's) holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class RolesMixin:
    db: Database
    path: str
    sender_id: str
    _poller_lease: int | None
    _alive: int | None  # the open lock file that says this sender is alive
    _leased: bool
    _alive_guard: threading.Lock
    if TYPE_CHECKING:
        def _thread_db(self) -> AbstractContextManager[Database]: ...  # Store's: this thread's, to write

    def _roles_init(self) -> None:
        self.sender_id = new_sender_id()
        self._poller_lease = None
        self._alive = None
        self._alive_guard = threading.Lock()  # claims and leases may come from worker threads at once
        self._leased = False  # whether it ever held a channel lease (dropped at close)

    def _drop_leases(self) -> None:
        """At close: the channels this store served are free at once (a clean stop; a dead
        process's leases run out instead)."""
        if self._leased:
            self._leased = False
            try:
                with immediate(self.db):
                    self.db.execute("DELETE FROM channel_leases WHERE holder = ?", [self.sender_id])
            except Exception:  # closing regardless: they run out by themselves
                pass

    def _roles_close(self) -> None:
        if self._alive is not None:  # nothing more is sent: its rows are anyone's to adopt from now
            try:
                os.unlink(self._sender_lock(self.sender_id))
            except OSError:
                pass
        with self._alive_guard:  # not while a worker thread's claim takes it
            for name in ("_poller_lease", "_alive"):
                fd = getattr(self, name)
                if fd is not None:
                    os.close(fd)  # releases the lock
                    setattr(self, name, None)

    def _sender_lock(self, sender: str) -> str:
        """The file whose flock says `sender` is alive: `<db>.sender-<id>.lock`, beside the database."""
        return f"{self.path}.sender-{os.path.basename(sender)}.lock"

    def hold_poller_lease(self) -> bool:
        """True when this process is (now) the one that polls; kept until close()."""
        if self._poller_lease is not None or self.path == ":memory:":
            return True
        self._poller_lease = _try_lock(self.path + ".poller.lock")
        return self._poller_lease is not None

    def live_sender_id(self) -> str:
        """`sender_id`, its liveness lock taken first (so a row never names a sender that
        cannot be told alive); what claims write as `claimed_by`. Any thread: taken once."""
        if self._alive is None and self.path != ":memory:":
            with self._alive_guard:  # two threads must not both open (and flock) the file
                if getattr(self, "_closed", False):  # closed: no liveness lock taken again (never released)
                    raise StorageError(f"the database {self.path} is closed", self.path)
                if self._alive is None:
                    fd = _try_lock(self._sender_lock(self.sender_id))
                    if fd is None:  # nobody else has this random name
                        raise storage_error(OSError(f"the lock of sender {self.sender_id} is held elsewhere"),
                                            self.path)
                    self._alive = fd
        return self.sender_id

    def adopt_orphans(self) -> int:
        """Rows in 'sending' (deliveries and follow-ups) whose claimer's process is gone are
        claimed by this store instead (its liveness lock held first); how many. Each dead
        sender's rows are taken under its own lock, so two processes never adopt the same rows."""
        if self.path == ":memory:":
            return 0
        others = [row[0] for row in self.db.execute(
            """SELECT claimed_by FROM deliveries WHERE status = 'sending' AND claimed_by IS NOT NULL
               UNION SELECT claimed_by FROM followups WHERE status = 'sending' AND claimed_by IS NOT NULL""")
            if row[0] != self.sender_id]
        adopted = 0
        for other in others:
            lock = self._sender_lock(other)
            fd = _try_lock(lock)
            if fd is None:
                continue  # alive: its sends are its own
            try:
                me = self.live_sender_id()
                with immediate(self.db):
                    for table in ("deliveries", "followups"):
                        adopted += self.db.execute(
                            f"UPDATE {table} SET claimed_by = ? WHERE status = 'sending' AND claimed_by = ?",
                            [me, other]).rowcount
                try:
                    os.unlink(lock)
                except OSError:
                    pass  # another adopter's: nothing left to adopt under it
            finally:
                os.close(fd)
        self._tidy_senders()
        return adopted

    def _tidy_senders(self, at_most: int = 100) -> None:
        """Remove the lock files of senders killed with nothing left to adopt (a clean close
        removes its own)."""
        folder, base = os.path.split(os.path.abspath(self.path))
        prefix = f"{base}.sender-"
        try:
            senders = [entry.name[len(prefix):-len(".lock")] for entry in os.scandir(folder)
                       if entry.name.startswith(prefix) and entry.name.endswith(".lock")][:at_most]
        except OSError:
            return
        for sender in senders:
            if sender != self.sender_id:
                self._dead(sender)

    def lease_channel(self, channel: ChannelRef, now: datetime, until: datetime,
                      handover: timedelta = DEAD_HANDOVER) -> bool:
        """Take, or renew, the lease on serving `channel` until `until`: True when this store
        holds it (it was free, ran out at or before `now`, or was already its own). A holder
        found dead keeps it only until `now + handover` (its last message may be that recent).
        Any thread (on the calling thread's connection: the bot leases from worker threads)."""
        me = self.live_sender_id()  # a holder can always be told alive or dead
        self._leased = True
        with self._thread_db() as db:
            with immediate(db):
                if db.execute(
                        """INSERT INTO channel_leases (channel, holder, until) VALUES (?, ?, ?)
                           ON CONFLICT (channel) DO UPDATE SET holder = excluded.holder, until = excluded.until
                            WHERE channel_leases.holder = excluded.holder OR channel_leases.until <= ?""",
                        [channel.key, me, lease_time(until), lease_time(now)]).rowcount == 1:
                    return True
                holder = db.execute("SELECT holder FROM channel_leases WHERE channel = ?", [channel.key]).fetchone()
            if holder and self._dead(holder[0]):
                with immediate(db):
                    db.execute("UPDATE channel_leases SET until = min(until, ?) WHERE channel = ? AND holder = ?",
                               [lease_time(now + handover), channel.key, holder[0]])
        return False

    def _dead(self, sender: str) -> bool:
        """Whether `sender`'s process is gone (its liveness lock is free); never waits."""
        if self.path == ":memory:":
            return False  # one store only
        lock = self._sender_lock(sender)
        fd = _try_lock(lock)
        if fd is None:
            return False
        try:
            os.unlink(lock)  # made just now, or left by the dead: nobody's
        except OSError:
            pass
        finally:
            os.close(fd)
        return True

    def release_channel(self, channel: ChannelRef, until: datetime) -> None:
        """Done serving `channel` for now: nobody else takes it before `until` (its
        platform's gap between two messages); this store may take it again at once. Any thread."""
        with self._thread_db() as db, immediate(db):
            db.execute("UPDATE channel_leases SET until = ? WHERE channel = ? AND holder = ?",
                       [lease_time(until), channel.key, self.sender_id])
