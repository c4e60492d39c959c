"""PgStore: the PostgreSQL implementation of StoreContract (storage/contract.py), on psycopg 3.

Chosen with `[storage] url = "postgresql://..."` (storage.open_store); SQLite stays the
default and needs nothing. Each area of the contract is a mixin of its own here, as for
SQLite. Differences an operator may notice:

- Writers about different things run side by side (MVCC); a method that decides from what it
  read takes an advisory lock on what it decides about (Database.lock), so two processes
  deciding about the same channel take turns.
- The sender lease is a session-level advisory lock: the server releases it when the
  process's connection ends, also when the process is killed.
- `durable=False` (the poller's worker and writer) sets synchronous_commit off for that
  connection: a crash of the server (not of papers-bot) may lose its last commits, which the
  next poll makes again.
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Iterator

import psycopg

from . import migrations
from .channels import ChannelsMixin
from .command_log import CommandLogMixin
from .db import LOCK_KEY, Database, ThreadConnections, redacted, storage_error
from .deliveries import DeliveriesMixin
from .feedback import FeedbackMixin
from .followups import FollowUpsMixin
from .installations import InstallationsMixin
from .papers import PapersMixin
from .people import PeopleMixin
from .roles import RolesMixin
from .source_state import SourceStateMixin
from .subscriptions import SubscriptionsMixin

SENDER_LEASE = "papers-bot sender lease"

log = logging.getLogger(__name__)


class PgStore(CommandLogMixin, SourceStateMixin, PapersMixin, DeliveriesMixin, FollowUpsMixin,
              SubscriptionsMixin, ChannelsMixin, PeopleMixin, FeedbackMixin, InstallationsMixin, RolesMixin):
    """One connection for the thread that opened it; "any thread" reads use one per thread."""

    def __init__(self, url: str, *, busy_timeout: float = 10.0, durable: bool = True):
        self.url = url
        self.path = redacted(url)  # what messages name: never the password
        self.busy_timeout = busy_timeout
        self.durable = durable
        # durable=False: the poller's connections commit without waiting for the disk (see above)
        self.db = Database(url, busy_timeout=busy_timeout, session=[] if durable else ["SET synchronous_commit = off"],
                           reconnect=True)
        self.db.on_reconnect.append(self._lease_again)
        self.owner_thread = threading.get_ident()
        self._readers = ThreadConnections(url, busy_timeout=busy_timeout)
        self._closed = False  # then no liveness lock is taken again (live_sender_id), nor a connection opened
        self._lease = False
        self._roles_init()  # sender_id; the poller's lease and this sender's liveness, once taken
        try:
            migrations.apply(self.db)  # checks, too, that no newer version migrated it
        except psycopg.Error as exc:
            self.db.close()
            raise storage_error(exc, self.path) from None
        except BaseException:
            self.db.close()
            raise

    # ---- the store itself -------------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[object]:
        """On the calling thread's connection (`_reader`): a worker thread's transaction holds
        the "any thread" writes it makes inside, as the loop's holds its own."""
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        with self._reader() as db, db.transaction():
            yield db

    def close(self) -> None:
        self._closed = True
        self._drop_leases()
        self._readers.close()
        if self._lease and not self.db.conn.closed:
            try:  # at once: the server frees a closed session's locks only once it has noticed
                self.db.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                pass
        self.db.close()  # ends the session: its advisory locks (the sender lease) go with it
        self._lease = False
        self._roles_close()

    def check_file(self) -> None:
        """No file to check: a server that went away fails the next call with StorageError."""

    def hold_sender_lease(self) -> bool:
        if self._lease:
            return True
        self._lease = bool(self.db.scalar(f"SELECT pg_try_advisory_lock({LOCK_KEY})", [SENDER_LEASE]))
        return self._lease

    def _lease_again(self) -> None:
        """The connection was replaced, and the server freed the old session's locks: a sender
        lease held on it is taken again, unless another process took it meanwhile."""
        if self._lease:
            self._lease = False  # until taken again
            row = self.db.conn.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})", [SENDER_LEASE]).fetchone()
            self._lease = bool(row and row[0])
            if not self._lease:
                log.warning("the sender lease went with the lost connection to %s; another process holds it now",
                            self.path)

    def reads_off_loop(self) -> bool:
        return True

    @contextmanager
    def _reader(self) -> Iterator[Database]:
        """The connection for this thread: self.db on its own thread, else the thread's own."""
        if threading.get_ident() == self.owner_thread:
            self.db.ready()
            yield self.db
        else:
            yield self._readers.get()


def _guarded(func):
    @functools.wraps(func)
    def guarded(self, *args, **kwargs):
        try:
            return func(self, *args, **kwargs)
        except psycopg.Error as exc:
            raise storage_error(exc, self.path) from exc

    return guarded


# Every public method of the mixins: a psycopg error becomes a StorageError naming the server.
for _name in dir(PgStore):
    if not _name.startswith("_") and _name not in ("transaction", "close", "check_file", "reads_off_loop"):
        _attr = getattr(PgStore, _name)
        if callable(_attr):
            setattr(PgStore, _name, _guarded(_attr))


if TYPE_CHECKING:
    from ..contract import StoreContract

    def _implements_the_contract(store: PgStore) -> StoreContract:
        return store  # mypy checks here that PgStore has every member of StoreContract, with compatible types
