"""Opening the database: WAL, foreign keys, a busy timeout, migrations applied.

Every transaction that writes takes SQLite's write lock when it begins (`immediate`),
never half-way through: under WAL, a deferred transaction that has read and then wants
to write fails at once with "database is locked" when another process wrote meanwhile,
whatever the busy timeout. Taking the lock first makes the second process wait its turn.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlite_utils import Database

from bot.errors import StorageBusy, StorageError

from .migrations import migrations

BUSY_TIMEOUT = 10.0  # seconds a second process (say `papers-bot command` while `run` polls) waits its turn

_savepoints = itertools.count(1)
# The poller's connections: commits between checkpoints. A transaction of ENQUEUE_ROWS (250)
# deliveries writes up to ~500 pages (most of them one a delivery in the outbox's index by
# channel): every 8 keeps the WAL well under LOOP_AUTOCHECKPOINT_PAGES, so the event loop's
# commit has no checkpoint to do.
CHECKPOINT_EVERY = 8
LOOP_AUTOCHECKPOINT_PAGES = 10_000  # other connections: SQLite checkpoints at their commit past this
BACKGROUND_CACHE_KB = 64 * 1024  # page cache of the poller's connections

# One turnstile a database file, for the Stores of this process: the event loop's and the
# poller's worker thread's. A write transaction takes it before SQLite's write lock, so a
# writer waiting for another thread of this process sleeps on a lock that wakes it the
# moment the other commits, instead of in SQLite's busy handler, which polls at growing
# intervals (up to 100 ms) and can miss many short gaps between the worker's transactions.
# Reentrant: a thread that holds it goes on to SQLite, which answers as it always did.
#
# First come, first served, the event loop's connection before the poller's: the poller's
# writer thread commits one transaction after another, and with a plain lock the thread that
# releases it usually takes it again before a waiter wakes (measured: a slash command's write
# on the loop waited seconds behind a poll's writes). A connection opened with durable=False
# (the poller's worker and writer) waits while any other waits: the loop waits for the
# transaction under way at most.
class Turnstile:
    """A reentrant lock: waiters get it in the order they came, urgent ones first."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queues: tuple[list[int], list[int]] = ([], [])  # urgent, then background: thread idents
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, timeout: float = -1, *, background: bool = False) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            queue = self._queues[background]
            queue.append(me)

            def my_turn() -> bool:
                if self._owner is not None:
                    return False
                if background and self._queues[0]:
                    return False
                return queue[0] == me

            if not self._cond.wait_for(my_turn, None if timeout < 0 else timeout):
                queue.remove(me)
                self._cond.notify_all()
                return False
            queue.pop(0)
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a turnstile not held by this thread")
            self._depth -= 1
            if self._depth:
                return
            self._owner = None
            self._cond.notify_all()


_turnstiles: dict[str, Turnstile] = {}
_turnstiles_guard = threading.Lock()


def open_database(path: str | Path, *, timeout: float = BUSY_TIMEOUT, durable: bool = True) -> Database:
    """Open (or create) the database; a file that cannot be used raises StorageError.

    `durable=False` (the poller's worker connection): its commits are not synced to disk one
    by one (synchronous=NORMAL, WAL), only at checkpoints and at the next synced commit of any
    connection. A crash or kill of the process loses nothing; a power cut may lose its last
    commits, all of them after some point (the WAL keeps its order), together with the
    listing's validators, which that connection writes last: the next poll stores them again.

    Checks at once what would otherwise fail later with a traceback: a file that is
    not a database or is damaged, a file or directory this user cannot write.
    """
    memory = str(path) == ":memory:"
    try:
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=timeout)
    except (OSError, sqlite3.Error) as exc:
        raise storage_error(exc, str(path)) from None
    db = Database(conn)
    db.papers_bot_timeout = timeout  # type: ignore[attr-defined]  # how long a writer waits its turn
    try:
        if not memory:
            db.enable_wal()
            if not durable:
                db.execute("PRAGMA synchronous = NORMAL")
                # Its commits never checkpoint (copy the WAL into the database file: pages and
                # a sync, tens of ms) while the turnstile is held; it checkpoints after every
                # CHECKPOINT_EVERY commits instead (`_tidy_wal`), outside the turnstile.
                db.execute("PRAGMA wal_autocheckpoint = 0")
                db.papers_bot_commits = 0  # type: ignore[attr-defined]
                # The outbox's index by channel takes a random page a delivery: a poll's write
                # transactions touch thousands, read again and again from the OS with the
                # default 2 MB cache (measured: 2.4 GB read for 208k deliveries; 0.13 GB with this).
                db.execute(f"PRAGMA cache_size = -{BACKGROUND_CACHE_KB}")
            else:
                # A connection that may be the event loop's checkpoints only when the WAL is
                # big (SQLite's default is 1,000 pages): the poller's worker keeps it smaller.
                db.execute(f"PRAGMA wal_autocheckpoint = {LOOP_AUTOCHECKPOINT_PAGES}")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "not a database", "malformed"
        with immediate(db):
            # A write that changes nothing: a read-only file fails here, not at the first real write.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute(f"PRAGMA user_version = {int(version)}")
            if migrations.pending(db):
                migrations.apply(db)  # inside the lock: two processes starting at once apply them once
    except sqlite3.Error as exc:
        conn.close()
        raise storage_error(exc, str(path)) from None
    except StorageError:
        conn.close()
        raise
    return db


def _take_turnstile(db: Database) -> Turnstile | None:
    """Wait for this database's turnstile (None if it has none), as a write transaction
    must before it takes the write lock; StorageBusy after the busy timeout."""
    turnstile = _turnstile(db)
    if turnstile is not None and not turnstile.acquire(timeout=getattr(db, "papers_bot_timeout", BUSY_TIMEOUT),
                                                       background=hasattr(db, "papers_bot_commits")):
        raise storage_error(sqlite3.OperationalError("database is locked"), _path(db))
    return turnstile


@contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """A write transaction holding the write lock from its start; all of it or nothing.

    Nested inside another transaction it is a savepoint (the outer one holds the lock).
    Still locked by another process after the busy timeout: StorageBusy, nothing written.
    """
    conn = db.conn
    if conn.in_transaction:
        name = f"papers_bot_{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield db
        except BaseException:
            if conn.in_transaction:
                conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            conn.execute(f"RELEASE SAVEPOINT {name}")
        return
    turnstile = _take_turnstile(db)
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(exc, _path(db)) from None
        try:
            yield db
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise storage_error(exc, _path(db)) from None
    finally:
        if turnstile is not None:
            turnstile.release()
    _tidy_wal(db)


def _tidy_wal(db: Database) -> None:
    """For a connection that does not checkpoint at commit (durable=False: the poller's worker
    and writer): every CHECKPOINT_EVERY commits, a passive checkpoint (it waits for no one
    and no one waits for it), outside the turnstile, by the connection's `Checkpointer`:
    the connection's thread goes on meanwhile."""
    commits = getattr(db, "papers_bot_commits", None)
    if commits is None:
        return
    if commits + 1 < CHECKPOINT_EVERY:
        db.papers_bot_commits = commits + 1  # type: ignore[attr-defined]
        return
    db.papers_bot_commits = 0  # type: ignore[attr-defined]
    aside: Checkpointer | None = getattr(db, "papers_bot_checkpointer", None)
    if aside is None:  # started at the first (Store.close ends it: `close_checkpointer`)
        aside = db.papers_bot_checkpointer = Checkpointer(  # type: ignore[attr-defined]
            _path(db), getattr(db, "papers_bot_timeout", BUSY_TIMEOUT))
    aside.request()


class Checkpointer:
    """Passive checkpoints of a database file in a thread of their own, with a connection of
    its own, for a connection whose thread should not wait for them (the poller's worker and
    writer: a checkpoint copies the WAL's pages into the database file and syncs it, 36 ms
    of wall time for 7 of CPU a checkpoint on this machine's disk; in the writer's thread,
    the poll's bound with the index in a worker process, 0.96 s of a 100k poll's 3.6 s of
    transactions). Requests made while one runs make one more after it, not one each: the
    WAL is kept as small as by checkpointing inline, a few transactions later at most.
    Nothing depends on a checkpoint but the WAL's size: a failure is ignored (the next one
    does it)."""

    def __init__(self, path: str, timeout: float):
        self._path, self._timeout = path, timeout
        self._cond = threading.Condition()
        self._wanted = False
        self._closing = False
        self.done = 0  # checkpoints run (tests)
        self._thread = threading.Thread(target=self._run, name="papers-bot-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._wanted = True
            self._cond.notify()

    def close(self) -> None:
        """Run the checkpoint asked for, if any, and end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._wanted or self._closing)
                    if not self._wanted:
                        return
                    self._wanted = False
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, timeout=self._timeout, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass
                self.done += 1
        finally:
            if conn is not None:
                conn.close()


def close_checkpointer(db: Database) -> None:
    aside: Checkpointer | None = getattr(db, "papers_bot_checkpointer", None)
    if aside is not None:
        db.papers_bot_checkpointer = None  # type: ignore[attr-defined]
        aside.close()


@contextmanager
def alone(db: Database) -> Iterator[sqlite3.Connection]:
    """Statements each a write transaction of its own (SQLite's autocommit: a statement that
    writes takes the write lock from its start, waiting as BEGIN IMMEDIATE does), with the
    turnstile held as `immediate` holds it. One statement where `immediate` runs three
    (BEGIN, it, COMMIT): each gives the GIL up and waits for it back, up to a switch
    interval while another thread runs Python (the poller's writer beside its worker). Not
    inside a transaction (the caller checks `in_transaction`)."""
    conn = db.conn
    turnstile = _take_turnstile(db)
    level = conn.isolation_level
    try:
        conn.isolation_level = None  # no implicit BEGIN before a statement that writes
        yield conn
    finally:
        conn.isolation_level = level
        if turnstile is not None:
            turnstile.release()
    _tidy_wal(db)


def write(db: Database, sql: str, params: list | dict) -> sqlite3.Cursor:
    """One statement that writes, as a transaction of its own (so it waits its turn at the turnstile)."""
    with immediate(db):
        return db.execute(sql, params)


def _turnstile(db: Database) -> Turnstile | None:
    """The turnstile of db's file (None in memory), found once a connection."""
    if not hasattr(db, "papers_bot_turnstile"):
        path = _path(db)
        with _turnstiles_guard:
            db.papers_bot_turnstile = (  # type: ignore[attr-defined]
                None if path == ":memory:" else _turnstiles.setdefault(path, Turnstile()))
    found: Turnstile | None = db.papers_bot_turnstile  # type: ignore[attr-defined]
    return found


def _path(db: Database) -> str:
    row = db.conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row and row[2] else ":memory:"


def storage_error(exc: BaseException, path: str) -> StorageError:
    """The one-line StorageError for a failure of SQLite (or the file system) on `path`."""
    if isinstance(exc, StorageError):
        return exc
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return StorageBusy(f"the database {path} is busy (another papers-bot process is writing); try again", path)
    if name == "SQLITE_READONLY_DBMOVED":
        return StorageError(f"the database file {path} was deleted or moved while in use; "
                            "put it back (or restore a backup) and start papers-bot again", path)
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return StorageError(f"the database file {path} is read-only: make it and its directory writable "
                            "by the user running papers-bot, or set [storage] path to a writable place", path)
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "malformed" in text or "not a database" in text:
        return StorageError(f"the database file {path} is damaged or not a papers-bot database ({text}): "
                            "move it aside and restore a backup (without it, papers-bot starts a new, empty one)", path)
    if name == "SQLITE_FULL":
        return StorageError(f"the disk holding the database {path} is full: free some space", path)
    if name.startswith("SQLITE_CANTOPEN") or isinstance(exc, OSError):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else text
        return StorageError(f"cannot open the database file {path} ({reason}): check that it and its directory "
                            "exist and are readable and writable by the user running papers-bot", path)
    return StorageError(f"the database {path} failed: {text}", path)


def iso(moment: datetime) -> str:
    """UTC ISO-8601, sortable as text."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def parse_day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None
