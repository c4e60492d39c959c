"""Store: every read and write of the bot's SQLite database, named by intent."""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.request import pathname2url

from sqlite_utils import Database

from bot.errors import StorageError

from .channels import ChannelsMixin
from .command_log import CommandLogMixin
from .db import BUSY_TIMEOUT, LOOP_AUTOCHECKPOINT_PAGES, close_checkpointer, immediate, open_database, storage_error
from .deliveries import DeliveriesMixin
from .feedback import FeedbackMixin
from .installations import InstallationsMixin
from .papers import PapersMixin
from .people import PeopleMixin
from .roles import RolesMixin
from .source_state import SourceStateMixin
from .subscriptions import SubscriptionsMixin

THREAD_CACHE_KB = 8 * 1024  # page cache of the connections of other threads (_thread_db)


class Store(PapersMixin, SubscriptionsMixin, DeliveriesMixin, SourceStateMixin, ChannelsMixin, CommandLogMixin,
            PeopleMixin, FeedbackMixin, InstallationsMixin, RolesMixin):
    """The SQLite implementation of `StoreContract` (storage/contract.py, where each method's
    contract is written down). One connection, used from the bot's one event-loop thread.

    Every method turns SQLite's failures into StorageError (StorageBusy when another
    process kept the database locked past the busy timeout), so callers never see a raw
    sqlite3 exception.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT, durable: bool = True):
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self.durable = durable
        self.db = open_database(path, timeout=busy_timeout, durable=durable)
        self.owner_thread = threading.get_ident()  # self.db is used from this thread only
        self._identity = _identity(self.path)
        self._lease: int | None = None  # the open lock file while this process holds the sender lease
        self._roles_init()  # sender_id; the poller's lease and this sender's liveness lock, once taken
        # The connections of other threads that write for this store ("any thread" methods that
        # write, such as plan_burst): one a thread, kept open for its next call, closed with the store.
        self._thread_dbs: dict[int, Database] = {}
        self._thread_dbs_guard = threading.Lock()
        self._closed = False  # then a worker thread's write fails, as self.db's would (no connection reopened)

    def hold_sender_lease(self) -> bool:
        """True when this process is (now) the one that settles sends a crash left unfinished.

        Rows in 'sending' belong to whoever claimed them; only when no other live process
        holds the lease (a `run`, a `poll`, a `command` delivering what it queued) were their
        senders interrupted. An advisory lock on `<database>.lock`, held until close(); the
        kernel releases it when a process dies, even by kill -9.
        """
        if self._lease is not None or self.path == ":memory:":
            return True
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise storage_error(exc, self.path + ".lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lease = fd
        return True

    def transaction(self) -> AbstractContextManager[object]:
        """All writes inside happen together or not at all; the write lock is taken first.
        On the calling thread's connection (`_thread_db`): a worker thread's transaction
        holds the "any thread" writes it makes inside, as the loop's holds its own."""
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[object]:
        with self._thread_db() as db, immediate(db):
            yield db

    @contextmanager
    def _thread_db(self) -> Iterator[Database]:
        """The connection for this thread, for an "any thread" method that writes: self.db on its
        own thread (and always for an in-memory database: it has one connection); else this
        thread's own, opened at its first call and kept (schema read once, not once a call).
        It takes the write turnstile like self.db (storage/db.py: same file, same turnstile),
        so its transactions and the loop's are serialized as any two of this process's are."""
        me = threading.get_ident()
        if me == self.owner_thread or not self.reads_off_loop():
            yield self.db
            return
        with self._thread_dbs_guard:
            if self._closed:  # a sweep left running past shutdown: no write after close
                raise StorageError(f"the database {self.path} is closed", self.path)
            db = self._thread_dbs.get(me)
        if db is None:
            try:
                # mode=rw: never creates the file (see PapersMixin._reader). Not bound to this
                # thread, so that close() can close it from the store's thread.
                conn = sqlite3.connect(f"file:{pathname2url(os.path.abspath(self.path))}?mode=rw", uri=True,
                                       timeout=self.busy_timeout, check_same_thread=False)
                conn.execute("PRAGMA foreign_keys = ON")
                # A big burst rewrites ~2,000 rows on as many pages: room for them (8 MB).
                conn.execute(f"PRAGMA cache_size = -{THREAD_CACHE_KB}")
                # Each card's claim and outcome commits here: as on the loop's connection, no
                # checkpoint at a commit while the poller's worker keeps the WAL small.
                conn.execute(f"PRAGMA wal_autocheckpoint = {LOOP_AUTOCHECKPOINT_PAGES}")
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path) from None
            db = Database(conn)
            db.papers_bot_timeout = self.busy_timeout  # type: ignore[attr-defined]
            with self._thread_dbs_guard:
                if self._closed:  # closed while this one opened
                    db.close()
                    raise StorageError(f"the database {self.path} is closed", self.path)
                self._thread_dbs[me] = db
        yield db

    def close(self) -> None:
        self._drop_leases()
        with self._thread_dbs_guard:
            self._closed = True
            others, self._thread_dbs = list(self._thread_dbs.values()), {}
        for db in others:
            db.close()
        close_checkpointer(self.db)
        self.db.close()
        if self._lease is not None:
            os.close(self._lease)  # releases the lock
            self._lease = None
        self._roles_close()

    def check_file(self) -> None:
        """Raise StorageError if the database file was deleted or replaced since it was opened.

        SQLite keeps writing to an unlinked file without a word, while the next process to
        open the path would create a new, empty database: better to stop. One stat call.
        """
        if self._identity is None:
            return
        try:
            now = _identity(self.path, strict=True)
        except FileNotFoundError:
            raise StorageError(f"the database file {self.path} was deleted while papers-bot was running; "
                               "restore it (or a backup) and start papers-bot again", self.path) from None
        except OSError as exc:
            raise storage_error(exc, self.path) from None
        if now != self._identity:
            raise StorageError(f"the database file {self.path} was replaced by another file while papers-bot was "
                               "running; check which one is right and start papers-bot again", self.path)


def _identity(path: str, strict: bool = False) -> tuple[int, int] | None:
    if path == ":memory:" or path.startswith("file:"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        if strict:
            raise
        return None
    return st.st_dev, st.st_ino


def _guarded(func):
    @functools.wraps(func)
    def guarded(self, *args, **kwargs):
        try:
            return func(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from exc

    return guarded


# Every public method of the mixins: a raw sqlite3 error becomes a StorageError naming the file.
for _name in dir(Store):
    if not _name.startswith("_") and _name not in ("transaction", "close", "check_file", "hold_sender_lease",
                                                "hold_poller_lease", "live_sender_id"):
        _attr = getattr(Store, _name)
        if callable(_attr):
            setattr(Store, _name, _guarded(_attr))


if TYPE_CHECKING:
    from .contract import StoreContract

    def _implements_the_contract(store: Store) -> StoreContract:
        return store  # mypy checks here that Store has every member of StoreContract, with compatible types
