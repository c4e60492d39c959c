"""Poller: fetch a source, store what is new, match it, queue deliveries. Never raises.

Whatever goes wrong in a poll ends as a failed SourceReport and a recorded source failure
(so `run` backs off, the admin hears after N failures, `/healthz` and `status` show it):
the source's own failures (network, HTTP, an unreadable listing) and the bot's own (its
storage full or read-only, a bug in matching). One malformed item is skipped and logged;
the rest of its listing is stored and matched.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Literal, Sequence, TypeVar

from storage import StoreContract, reopen

from . import index_cache
from .clock import utcnow
from .collection import no_collection
from .errors import QueryError, SourceError, StorageError
from .matching import IndexedMatcher
from .models import Match, MatchedBatch, Paper, Subscription, UnmatchedPaper
from .sharded import ShardedMatcher, ShardFailed, Submitted
from .sources import Source
from .sources.base import bounded_repr, check_paper

if TYPE_CHECKING:
    from .recommend import Recommender

log = logging.getLogger(__name__)

T = TypeVar("T")

HISTORY_FOR_ANCHORS = 1000
# `[matching] worker_process = "auto"` holds the index in a worker process from this many
# subscriptions at a first load (docs/benchmarks.md, "auto": from about here the worker's
# poll is the shorter on two cores, and fewer build in well under a second in-process).
AUTO_WORKER_FROM = 20_000

# How the reason of a failure that is the bot's own, not the source's, begins.
STORAGE_ERROR = "storage error: "
INTERNAL_ERROR = "internal error: "


class PollStopped(Exception):
    """The poller is closing: the poll under way stops between two batches."""


@dataclass
class SourceReport:
    source: str
    ok: bool
    listed: int = 0
    new: int = 0
    queued: int = 0
    error: str | None = None
    failures: int = 0  # consecutive failures, this one included
    not_modified: bool = False  # HTTP 304: nothing new since the last poll
    recovered_after: int = 0  # failures in a row that this success ended
    skipped: int = 0  # malformed items of the listing, skipped (each logged with its reason)

    def line(self) -> str:
        if not self.ok:
            return f"{self.source}: FAILED: {self.error}"
        if self.not_modified:
            return f"{self.source}: not modified since the last poll"
        skipped = f" ({self.skipped} malformed skipped, see the log)" if self.skipped else ""
        return f"{self.source}: {self.listed} listed{skipped}, {self.new} new, {self.queued} queued for delivery"


class Poller:
    """Polls sources; everything after the fetch runs in one worker thread of its own.

    Storing, matching and queueing a listing is seconds of work at scale: on the event loop it
    would keep every command waiting. The worker thread has its own Store on the same
    database (a SQLite connection belongs to the thread that opened it), and writes in short
    transactions (BATCH papers, or about ENQUEUE_ROWS matches of a range of channels) so that
    a command's own write, which waits for the write lock on the loop's thread, never waits
    long. Instead of one transaction's all-or-nothing, the papers each batch stores are
    written down as unmatched in the same transaction, and taken off in the last of those
    that queue their group's deliveries: a poll interrupted in between (a crash, a kill, a
    full disk, a bug) leaves them written down, and the next poll matches them before
    anything else. Deliveries are unique per paper and channel, so matching a paper again
    never posts it twice.

    The deliveries' transactions run in a second thread, the writer, with a Store of its own,
    while the worker stores and matches the next papers (SQLite does its work without the GIL).
    A paper the poll stores for the first time goes to the subscriptions committed before it
    was stored (`UnmatchedPaper.upto`); the worker loads any subscription added since its last
    look before it matches a batch, so a subscribe during a poll misses nothing: its --backfill
    reads the papers stored before it, the poll queues the ones stored after it.
    """

    BATCH = 50  # papers stored a transaction (~20 ms with the full-text index, on a busy machine)
    # Deliveries are handed to the writer a group at a time, cut into transactions by ranges of
    # channels: each rewrites a slice of the outbox's index by channel, not a page a row
    # (docs/benchmarks.md, "outbox": the writer's CPU a third of what it was in 250-row
    # transactions in paper order).
    GROUP_ROWS = 15_000  # matches gathered (~150 papers) before they are split and handed over
    # The poll's first group is handed over sooner: the writer thread, the poll's bound, starts
    # after ~30 papers matched, not ~150 (it idled meanwhile).
    FIRST_GROUP_ROWS = 3000
    ENQUEUE_ROWS = 1000  # matches a transaction, about (~10-15 ms of CPU)
    WRITES_AHEAD = 2  # groups handed to the writer thread and not yet committed
    # Batches sent to the matching worker processes (`ShardedMatcher`) and not gathered yet:
    # they match while this thread stores the next papers and gathers the earlier matches.
    MATCH_AHEAD = 2
    # The built index is kept in `index_cache` (bot/index_cache.py) once it has this many
    # subscriptions (fewer build in a tenth of a second), after a poll; again after a poll at
    # most every INDEX_SAVE_EVERY seconds, if subscriptions changed (the next start adds those
    # changed since anyway: a stale file only costs their adds).
    INDEX_SAVE_MIN = 10_000
    INDEX_SAVE_EVERY = 3600.0
    # Seconds after a poll before the index is written, when no poll is under way then (the
    # sources are polled one after another: the next one's would wait for the writing, 1.5 to
    # 3.5 s at 100,000 subscriptions). 0: handed to the worker thread at once.
    INDEX_SAVE_DELAY = 30.0

    def __init__(self, store: StoreContract, clock: Callable[[], datetime] = utcnow, *, max_age_days: int = 7,
                 open_store: Callable[[], StoreContract] | None = None,
                 complete: Callable[[list[Paper]], Awaitable[list[Paper]]] | None = None,
                 recommender: Recommender | None = None, match_processes: int = 1,
                 match_worker: bool | Literal["auto"] = False,
                 index_cache: Path | None = None):
        self.store = store
        # Before the worker stores and matches a listing: missing metadata filled in, on the
        # loop (bot.enrich.CategoryFiller: arXiv categories for Hugging Face papers).
        self.complete = complete
        self.clock = clock
        self.max_age = timedelta(days=max_age_days)
        # >1: the index is split over worker processes (bot/sharded.py), from the first load on.
        self.match_processes = match_processes
        # Or, with 1, held whole by one worker process (`[matching] worker_process`): either way
        # the poll sends a batch to be matched there and goes on storing and queueing meanwhile.
        # "auto": chosen at each first load (`_choose_auto`), by the subscriptions found then.
        self.match_worker = match_worker
        self.match_in_workers = match_processes > 1 or match_worker is True
        self._auto_told = False  # "auto"'s choice said in the log (`_choose_auto`)
        self.matcher: IndexedMatcher | ShardedMatcher = IndexedMatcher()
        if recommender is None:
            from .recommend import Recommender  # numpy and scipy: not for every import of the bot

            recommender = Recommender()
        self.recommender = recommender  # like: subscriptions (issue 13)
        self._version = 0  # the newest subscription version the engine has seen
        # The version the engine holds exactly (every subscription as it was then, and no
        # other), or None when that is not known: the writer thread inserts deliveries
        # made at it as they are while it is still the newest (`MatchedBatch.split`).
        self._exact: int | None = None
        # Where the built index is kept between runs (bot/index_cache.py); None: it is not.
        self.index_cache = index_cache
        self._index_saved: tuple[int, float] | None = None  # (version, time.monotonic()) of the last kept
        self.index_saving: Future[None] | None = None  # the latest save handed to the worker thread
        self.index_from_file = False  # whether the first load read the kept index
        self._save_timer: asyncio.TimerHandle | None = None  # the save waiting for INDEX_SAVE_DELAY
        self._polls = 0  # polls under way
        self._failures: dict[str, int] = {}  # failures in a row, for when storage cannot count them
        self._match_failed: set[str] = set()  # papers the matcher raised on once (retried once, then settled)
        # Sources whose last poll failed on the bot's own side (its database full or read-only,
        # a bug), even when that could not be written down: /healthz answers 503 while any is here.
        self.faults: dict[str, str] = {}
        # The worker's Store, opened in the worker thread (by default on the loop's database file).
        self.open_store = open_store or (lambda: reopen(store, durable=False))
        self._worker_store: StoreContract | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller")
        # Deliveries are queued by a second thread, with a Store of its own, while the worker
        # matches the next papers: SQLite releases the GIL, so writing and matching overlap.
        self._writer_store: StoreContract | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller-writer")
        self._stopping = threading.Event()
        # Tests: called in the writer thread after each committed transaction of deliveries.
        self.between_batches: Callable[[], None] | None = None

    def sync_subscriptions(self, store: StoreContract | None = None) -> None:
        """Bring the engine in step with storage: add new subscriptions, drop removed ones.

        Commands may run in another process (`papers-bot command`), so storage is the
        truth; the engine is updated by difference, never rebuilt. In the bot this runs in
        the worker thread (`load_index`, and each poll), with the worker's `store`.
        """
        store = store or self.store
        if isinstance(self.matcher, ShardedMatcher) and self.matcher.failed:
            # A worker process died with its part of the index: load it all again. Chosen by
            # "auto", in this process from now on: a worker that cannot start, or is killed
            # (out of memory, say), would otherwise fail every poll after it.
            auto = self.match_worker == "auto" and self.match_processes == 1
            log.error("%s; loading the index again%s", self.matcher.failed,
                      ' in this process ([matching] worker_process = "auto")' if auto else "")
            if auto:
                self.match_worker, self.match_in_workers = False, False
            self.matcher.close()
            self.matcher, self._version = IndexedMatcher(), 0
        current = store.subscription_ids()
        known = self.matcher.ids()
        if not known and current and self.match_processes == 1 and self.match_worker == "auto":
            self._choose_auto(len(current))
        kept: list[Subscription] = []  # like: subscriptions of a kept index's, for the recommender
        since = self._version  # the changes after it are read below
        # The first load; or the first subscription after none, the engine still the empty one
        # made in this process (a database whose subscriptions were all removed has a version).
        if not known and current and (not self._version or (
                self.match_in_workers and not isinstance(self.matcher, ShardedMatcher))):
            cached = self._kept_index(store)
            if cached is not None:  # brought up to date below, as any later sync
                # Its version is the engine's only once the sync is done (below): one that
                # fails on the way reads every subscription again next time, and so gives
                # the recommender the file's like: subscriptions (`kept`, read only here).
                (self.matcher, since), kept = cached
                known = self.matcher.ids()
            else:
                # First load: recent papers' word counts let the index anchor on rare words.
                history = store.recent_papers(HISTORY_FOR_ANCHORS)
                if self.match_in_workers:
                    self.matcher = ShardedMatcher(papers=history, processes=self.match_processes)
                else:
                    self.matcher = IndexedMatcher(papers=history)
        for gone in known - current:
            self.matcher.remove(gone)
        changes = store.subscriptions_changed_since(since)
        changed = changes.subscriptions
        if kept:
            changed = [*kept, *changed]
        keyword = self.recommender.sync(store, current, changed)  # it takes the like: ones
        for sub in changed if len(keyword) < len(changed) else ():
            self.matcher.remove(sub.id)  # from an earlier query; re-added below if it is keywords
        changed = keyword
        bulk = len(changed) > 10_000
        # Building the index makes millions of long-lived objects: each full garbage
        # collection on the way would scan all built so far, holding the GIL, and so the
        # event loop, for up to 0.3 s (measured at 100k). None runs while it is built.
        with no_collection(bulk):
            try:
                for sub in changed:
                    try:
                        self.matcher.add(sub)  # replaces the old query of a changed subscription
                    except QueryError as exc:  # stored by an older version with other rules
                        self.matcher.remove(sub.id)
                        log.error("subscription #%s (%r) cannot be parsed, skipped: %s", sub.id, sub.query, exc)
            finally:
                if bulk:
                    # The index is rescanned by no later collection either (measured: matching
                    # about 2x faster), nor kept from being shared by forked workers.
                    gc.freeze()
        # Only now: a sync that failed on the way (a read, the recommender's, an add) leaves
        # the version where it was, and the next one reads those changes again.
        self._version = changes.version
        # Stored without a compiled form, or with an older version's: kept for next time, with
        # the query each was compiled from (one changed since it was read keeps its own form).
        # (The queries by id only when there are some: 100,000 of them at a first load, 10 ms.)
        fresh = self.matcher.take_recompiled()
        queries = {sub.id: sub.query for sub in changed} if fresh else {}
        recompiled = {sub_id: (queries[sub_id], blob) for sub_id, blob in fresh.items() if sub_id in queries}
        if recompiled:
            try:
                store.save_compiled_queries(recompiled)
            except (StorageError, sqlite3.Error) as exc:  # only the next load's speed depends on it
                log.warning("could not store %s compiled queries: %s", len(recompiled), exc)

    def _choose_auto(self, subscriptions: int) -> None:
        """`[matching] worker_process = "auto"`: whether an index of this many subscriptions is
        held by a worker process (matching on another core, pipelined with the poll) rather
        than in this one (docs/benchmarks.md, "auto"). Below AUTO_WORKER_FROM the poll is short
        either way, and the worker would cost a process and the kept index file; on one core
        the worker would only take turns with the poll. Said in the log from AUTO_WORKER_FROM
        on (a process more, and no kept index file: the user sees why), once: every sync asks
        while the index holds nothing (a database of like: subscriptions only, say)."""
        cores = _cores() if subscriptions >= AUTO_WORKER_FROM else 0.0
        wanted = cores >= 2
        if wanted != self.match_in_workers or not self._auto_told:
            self._auto_told = True
            if subscriptions >= AUTO_WORKER_FROM:
                log.info('[matching] worker_process = "auto": %d subscriptions, %g cores: the index is %s',
                         subscriptions, cores,
                         "in a worker process" if wanted else "in this process (a worker needs two cores)")
        self.match_in_workers = wanted

    def _sync(self, store: StoreContract) -> None:
        """`sync_subscriptions`, learning whether the engine then holds a version exactly: it
        does when the version read before the sync is the newest the sync saw (each change
        gives a new version, and the sync read every subscription after that one)."""
        version = store.subscriptions_version()
        self.sync_subscriptions(store)
        self._exact = version if self._version == version else None

    def _kept_index(self, store: StoreContract) -> tuple[tuple[IndexedMatcher, int], list[Subscription]] | None:
        """The index kept by an earlier run (`index_cache`), if it describes this database, and
        the like: subscriptions it was in step with (the recommender's, not in the index); None
        to build it. Any failure is logged and the index is built."""
        if self.index_cache is None:
            return None
        if self.match_in_workers:  # the index is in the workers, not here
            # A file kept before the switch to worker processes is never read, and would be
            # stale by the next switch back: deleted, not left behind (hundreds of MB at a million).
            try:
                self.index_cache.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not delete the kept index %s, unused with worker processes: %s",
                            self.index_cache, exc)
            else:
                log.info("the kept index %s deleted: the index is in worker processes now", self.index_cache)
            return None
        try:
            with no_collection():
                cached = index_cache.load(self.index_cache)
                if cached is None:
                    return None
                if cached.version > store.subscriptions_version():
                    # A database restored from before it: versions given since may be given
                    # again, and an engine past them would never load those subscriptions.
                    log.warning("the kept index %s is newer than the database: it is built anew", self.index_cache)
                    return None
                stored = store.subscription_queries(cached.version)
                if not index_cache.usable(cached, stored):
                    log.warning("the kept index %s describes another database: it is built anew", self.index_cache)
                    return None
                gc.freeze()  # as after a bulk load: never rescanned by a collection
            kept = [sub for sub_id, query, _ in stored if "like:" in query
                    and (sub := store.get_subscription(sub_id)) is not None]
        except (StorageError, sqlite3.Error):
            raise
        except Exception:
            log.exception("the kept index %s could not be used: it is built anew", self.index_cache)
            return None
        # Kept when the file was written, not now: an old file behind storage is written
        # again after the next poll (a one-shot `papers-bot poll` lives less than
        # INDEX_SAVE_EVERY, and its file would fall further behind at every run).
        try:
            age = max(0.0, time.time() - self.index_cache.stat().st_mtime)
        except OSError:
            age = 0.0
        self._index_saved = (cached.version, time.monotonic() - age)
        self.index_from_file = True
        log.info("index of %d subscriptions loaded from %s (version %d)", len(cached.matcher), self.index_cache,
                 cached.version)
        return (cached.matcher, cached.version), kept

    def _save_index_soon(self) -> None:
        """Keep the index (`index_cache`) in the worker thread, INDEX_SAVE_DELAY seconds after
        this poll if no poll is under way then (else after the next), when it is big enough
        and the kept one is missing or old (see INDEX_SAVE_MIN). Never fails: a failure is
        logged (only the next start's speed depends on it)."""
        if self.INDEX_SAVE_DELAY <= 0:
            self._save_index_now()
        elif self._save_timer is None and self._index_save_due():
            def due() -> None:
                self._save_timer = None
                if not self._polls:  # else the poll under way asks again when it ends
                    self._save_index_now()

            self._save_timer = asyncio.get_running_loop().call_later(self.INDEX_SAVE_DELAY, due)

    async def keep_index(self) -> None:
        """Keep the index now if it is due (see `_save_index_soon`), and wait for the writing:
        for a one-shot `papers-bot poll`, which would exit before INDEX_SAVE_DELAY is over
        (its next run would build the index again, every run)."""
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        self._save_index_now()
        saving = self.index_saving
        if saving is not None and not saving.done():
            await asyncio.wrap_future(saving)

    def _index_save_due(self) -> bool:
        matcher = self.matcher
        if (self.index_cache is None or not isinstance(matcher, IndexedMatcher) or len(matcher) < self.INDEX_SAVE_MIN
                or not self.store.reads_off_loop() or self._stopping.is_set()):
            return False
        saved = self._index_saved
        if saved is not None and (saved[0] == self._version or time.monotonic() - saved[1] < self.INDEX_SAVE_EVERY):
            return False
        return self.index_saving is None or self.index_saving.done()

    def _save_index_now(self) -> None:
        if not self._index_save_due():
            return
        path = self.index_cache
        assert path is not None

        def save() -> None:
            try:
                if self._worker_store is None:
                    self._worker_store = self.open_store()
                matcher, version = self.matcher, self._version
                if not isinstance(matcher, IndexedMatcher):
                    return
                started = time.monotonic()
                queries = self._worker_store.subscription_queries(version)
                with no_collection():  # full collections would rescan what pickling makes, holding the GIL
                    saved = index_cache.save(path, matcher, version, queries, stop=self._stopping.is_set)
                if saved:
                    self._index_saved = (version, time.monotonic())
                    log.info("index of %d subscriptions kept in %s (%.1f s)", len(matcher), path,
                             time.monotonic() - started)
            except Exception as exc:
                self._index_saved = (self._version, time.monotonic())  # not tried again before INDEX_SAVE_EVERY
                log.warning("could not keep the index in %s (%s: %s): the next start builds it from the database "
                            "(slower, nothing lost); tried again in %d minutes", path, type(exc).__name__, exc,
                            self.INDEX_SAVE_EVERY // 60)

        try:
            self.index_saving = self._executor.submit(save)
        except RuntimeError:  # closed
            pass

    def _sync_if_changed(self, store: StoreContract) -> None:
        """Sync when a subscription was added, changed or removed since the last sync (one
        indexed read), or when the version the engine holds is not known exactly."""
        version = store.subscriptions_version()
        if version != self._version or version != self._exact:
            self._sync(store)

    @property
    def worker_store(self) -> StoreContract | None:
        """The worker thread's Store, once opened (for the benchmarks: use it from that thread only)."""
        return self._worker_store

    async def load_index(self) -> None:
        """Bring the engine in step with storage, in the worker thread (the loop goes on).

        No garbage collection while it runs, as in a poll: the first load reads every
        subscription (100,000 rows and objects before the index is built), and full
        collections on the way held the GIL, and so the event loop, for 80 to 250 ms each."""
        def load(store: StoreContract) -> None:
            with no_collection():
                self._sync(store)

        await self._in_worker(load)

    async def _in_worker(self, work: Callable[[StoreContract], T]) -> T:
        if not self.store.reads_off_loop():
            # An in-memory database lives in its one connection: another Store would be
            # another, empty database. Its work is done here, with the loop's Store.
            return work(self.store)

        def run() -> T:
            if self._worker_store is None:
                self._worker_store = self.open_store()
            return work(self._worker_store)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def _write(self, job: Callable[[StoreContract], int]) -> Future[int]:
        """Run `job` in the writer thread with its Store (in order); in memory, here and now."""
        if not self.store.reads_off_loop():
            done: Future[int] = Future()
            try:
                done.set_result(job(self.store))
            except BaseException as exc:
                done.set_exception(exc)
            return done

        def run() -> int:
            if self._writer_store is None:
                writer = self.open_store()
                try:
                    writer.for_poll_writes()  # its only statements are `queue_matched`'s
                except BaseException:
                    writer.close()
                    raise
                self._writer_store = writer
            return job(self._writer_store)

        try:
            return self._writer.submit(run)
        except RuntimeError:  # closed (the writer takes no more work): what is left stays written down
            raise PollStopped("the bot is stopping: the rest of this poll is left to the next one") from None

    def close(self) -> None:
        """Stop after the batch under way (what is left is written down for the next poll);
        close the worker's and the writer's Stores in their threads. The threads end once
        that batch is done."""
        self._stopping.set()
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        def close_store() -> None:
            if self._worker_store is not None:
                self._worker_store.close()
                self._worker_store = None
            # The matching worker processes, if any (after the batch: it may use them). The
            # engine of now, not of when close() was called: a load under way then (the first,
            # or after a worker died) starts new ones.
            self.matcher.close()

        def close_writer_store() -> None:
            if self._writer_store is not None:
                self._writer_store.close()
                self._writer_store = None

        for executor, closing in ((self._writer, close_writer_store), (self._executor, close_store)):
            try:
                executor.submit(closing)
            except RuntimeError:  # already shut down
                continue
            executor.shutdown(wait=False)

    async def poll(self, source: Source) -> SourceReport:
        """Poll one source. Never raises: every failure is a failed, recorded SourceReport."""
        try:
            self._polls += 1
            try:
                return await self._poll(source)
            finally:
                self._polls -= 1
        except PollStopped as exc:  # not the source's fault, nor the bot's: nothing to record
            log.info("%s: %s", source.name, exc)
            return SourceReport(source.name, False, error=str(exc))
        except Exception as exc:
            # The response's validators are stored only after all of it is: the next poll
            # sends the stored ones, which describe what is stored, and gets it again; and
            # it first matches whatever this one stored without matching.
            if isinstance(exc, StorageError):  # the Store's own words: they name the file and what to do
                log.error("%s: poll failed on the bot's own database: %s", source.name, exc)
                reason = f"{STORAGE_ERROR}{exc}"
            elif isinstance(exc, sqlite3.Error):
                log.error("%s: poll failed on the bot's own database %s: %s", source.name, self.store.path, exc)
                reason = f"{STORAGE_ERROR}{type(exc).__name__}: {exc} (database {self.store.path})"
            else:
                log.exception("%s: poll failed after the fetch", source.name)
                reason = f"{INTERNAL_ERROR}{type(exc).__name__}: {exc}"
            return self._failed(source.name, reason, own=True)

    async def _poll(self, source: Source) -> SourceReport:
        validators = self.store.source_validators(source.name)
        try:
            listing = await source.fetch(validators)
        except SourceError as exc:
            return self._failed(source.name, exc.reason)
        except Exception as exc:  # a parser bug must not stop the bot or the other sources
            log.exception("%s: unexpected error while fetching", source.name)
            return self._failed(source.name, f"unexpected error: {type(exc).__name__}: {exc}")
        now = self.clock()
        if listing.papers is None:  # 304: the listing has not changed since the last poll
            recovered = self.store.record_source_success(source.name, now, 0)
            return self._succeeded(SourceReport(source.name, True, not_modified=True, recovered_after=recovered))
        papers = self._valid(source.name, listing.papers)
        skipped = len(listing.skipped) + len(listing.papers) - len(papers)
        if self.complete is not None and papers:
            papers = await self.complete(papers)

        def work(store: StoreContract) -> tuple[int, int, int]:
            # No collection during the poll: it makes hundreds of thousands of objects
            # (matches), and a full collection scanned them all with the GIL held (the loop
            # stood still up to ~80 ms). They are freed by reference counting as they are written.
            with no_collection():
                self._sync(store)
                if len(self.recommender):  # on its schedule (refit_hours), not per poll
                    self.recommender.ensure_fitted(store, now)
                writes = _Writes(self._write, self.WRITES_AHEAD)
                flights: deque[_Flight] = deque()  # batches sent to the matching worker processes
                try:
                    self._match_unmatched(store, now, writes, flights)  # what an interrupted poll left
                    new = 0
                    for start in range(0, len(papers), self.BATCH):
                        new += self._store_batch(store, papers[start:start + self.BATCH], now, writes, flights)
                        self._match_unmatched(store, now, writes, flights)
                    self._land_all(flights, store, now, writes)
                    self._submit(writes, now)  # the last group, however small
                    if new:
                        # Meanwhile the writer thread queues the last groups' deliveries (the
                        # SQL, without the GIL): this thread indexes the new papers' words for
                        # preview then, where it waited for the writer before (in short
                        # transactions that take their turn between the writer's).
                        self._index_words(store, source.name)
                    queued = writes.finish()
                except BaseException:
                    writes.abandon()  # wait for the transactions under way: none runs into the next poll
                    raise
                with store.transaction():
                    recovered = store.record_source_success(source.name, now, len(papers))
                    if listing.validators != validators:  # only once what they describe is stored
                        store.save_source_validators(source.name, listing.validators)
                return new, queued, recovered

        new, queued, recovered = await self._in_worker(work)
        self._save_index_soon()  # after the poll, in the worker thread
        if not papers:
            log.info("%s: empty listing (normal on weekends and holidays)", source.name)
        return self._succeeded(SourceReport(source.name, True, listed=len(papers), new=new, queued=queued,
                                            recovered_after=recovered, skipped=skipped))

    def _index_words(self, store: StoreContract, source: str, stop: Callable[[], bool] | None = None) -> None:
        """Preview's word index, kept up with by the poll so that no preview has a backlog to
        index (until then a preview reads the papers not indexed yet unnarrowed: none is
        missed). Stopped (the bot is closing), the rest is left for later: after an upgrade,
        the first catch-up indexes every stored paper (minutes). `stop`: also ends it early."""
        stopping = self._stopping.is_set
        try:
            store.index_paper_words(stop=stopping if stop is None else lambda: stopping() or stop())
        except StorageError as exc:  # the next preview indexes them itself
            log.warning("%s: indexing new papers for preview failed: %s", source, exc)

    def _store_batch(self, store: StoreContract, papers: list[Paper], now: datetime, writes: _Writes,
                     flights: deque[_Flight]) -> int:
        """Store papers and write down, in the same transaction, those to match: the new ones
        (but revisions and late listings) and known ones whose upvotes or organization changed,
        which may now match more queries (`upvotes>=50`): these once, within max_age_days, and
        only for subscriptions that existed when the paper was first stored.

        A paper of the batch may already be matched, from what was stored before, and not
        settled yet (left by an interrupted poll, in the group gathered or under way): written
        down again now, it would be taken off by that group, its new upvotes never matched. Its
        group is written first (after its batch's matches are in, if it is still being
        matched); the paper is then written down anew if it changed."""
        self._check_stopping()
        in_flight = writes.papers() | _flying(flights)
        if in_flight and any(p.id in in_flight for p in papers):
            self._land_all(flights, store, now, writes)
            self._submit(writes, now)
            writes.finish()
        with store.transaction():
            before = {s.id: s for s in store.paper_snapshot([p.id for p in papers])}
            new = store.add_papers(papers, now)
            # Under the write lock: the subscriptions up to this id are all committed, and
            # any committed later gets a higher one (and sees these papers in a --backfill).
            upto = store.newest_subscription_id()
            todo = [UnmatchedPaper(p, now, upto) for p in new if not p.is_update
                    and not (p.listed_on and now.date() - p.listed_on > self.max_age)]
            for listed in papers:
                snapshot = before.get(listed.id)
                if snapshot is None or now - snapshot.first_seen > self.max_age:
                    continue
                if (listed.upvotes is not None and listed.upvotes != snapshot.upvotes) or (
                        listed.organization is not None and snapshot.organization is None) or (
                        listed.categories and not snapshot.categories):  # filled in late (bot.enrich)
                    todo.append(UnmatchedPaper(listed, snapshot.first_seen))
            if todo:
                store.mark_unmatched(todo)
        return len(new)

    def _match_unmatched(self, store: StoreContract, now: datetime, writes: _Writes,
                         flights: deque[_Flight]) -> None:
        """Match the papers written down as unmatched and hand their deliveries to the writer
        thread, a group of about GROUP_ROWS matches at a time, in transactions of about
        ENQUEUE_ROWS matches each, by ranges of channels (the group's last takes its papers
        off the list). Papers whose group is under way or still gathering are not read again.

        With worker processes (`ShardedMatcher`), a batch is sent to them and this returns
        with up to MATCH_AHEAD batches still being matched (`flights`): they match while this
        thread stores the next papers and gathers and splits the earlier batches' matches. The
        batches are gathered in the order they were read, as in one process."""
        while True:
            self._check_stopping()
            writes.collect()  # a failed transaction fails the poll here
            todo = store.unmatched_papers(self.BATCH, skip=writes.papers() | _flying(flights))
            if not todo:
                return
            # A subscription committed since the last sync receives the papers stored after it.
            self._sync_if_changed(store)
            liked = self._recommended(todo, now)
            if not isinstance(self.matcher, ShardedMatcher):
                self._gather(todo, liked, None, self._exact, now, writes)
                continue
            # The papers that may be posted (`_may_post`) go in one call, not a round trip a
            # paper; matched after every change synced so far, so at the version known now.
            wanted = [u.paper for u in todo if self._may_post(u, now)]
            sent: Submitted | None = None
            try:
                sent = self.matcher.submit(wanted)
            except ShardFailed:  # the engine's fault, not the paper's: the next poll loads it again
                raise
            except Exception:  # (pickling a paper: nothing was sent) one by one when it lands
                log.warning("sending %d papers to be matched failed; matching them one by one", len(wanted))
            flights.append(_Flight(todo, liked, wanted, sent, self._exact))
            while len(flights) > self.MATCH_AHEAD:
                self._land(flights.popleft(), store, now, writes)

    def _land_all(self, flights: deque[_Flight], store: StoreContract, now: datetime, writes: _Writes) -> None:
        while flights:
            self._land(flights.popleft(), store, now, writes)

    def _land(self, flight: _Flight, store: StoreContract, now: datetime, writes: _Writes) -> None:
        """Gather a batch sent to the worker processes, once its matches are in. If the call
        raised anything but ShardFailed, its papers are matched one by one (`_gather`), to
        find the paper it fails on."""
        matched: dict[str, list[Match]] | None = None
        if flight.sent is not None:
            matcher = self.matcher
            assert isinstance(matcher, ShardedMatcher)
            sent = flight.sent
            if not matcher.ready(sent):
                # Until its matches are in, this thread would wait: it brings preview's word
                # index up to date meanwhile (a transaction of up to 200 papers at a time; the
                # poll's end indexes the rest), work it would do after the last batch otherwise.
                self._index_words(store, "poll", stop=lambda: matcher.ready(sent))
            try:
                found = matcher.result(sent)
                matched = dict(zip([p.id for p in flight.wanted], found, strict=True))
            except ShardFailed:  # the engine's fault, not the paper's: the next poll loads it again
                raise
            except Exception:
                log.warning("matching %d papers at once failed; matching them one by one", len(flight.wanted))
        if matched is not None:
            self._gather(flight.todo, flight.liked, matched, flight.version, now, writes)
            return
        # One by one, the papers are matched now: at the version the engine holds now, which
        # a later batch may have synced since this one was sent. Their like: matches are taken
        # at it too: the group claims that version, and rows made at the newest version are
        # inserted as they are (one of a like: subscription removed since would be).
        self._gather(flight.todo, self._recommended(flight.todo, now), None, self._exact, now, writes)

    def _gather(self, todo: list[UnmatchedPaper], liked: dict[str, list[Match]],
                matched: dict[str, list[Match]] | None, version: int | None, now: datetime, writes: _Writes) -> None:
        """Hand a batch's matches to the group being gathered (`matched`: those found for it at
        subscription `version`; None: each paper matched here, one at a time)."""
        for unmatched in todo:
            paper = unmatched.paper
            try:
                if not self._may_post(unmatched, now):
                    matches = []
                else:
                    matches = matched[paper.id] if matched is not None else self.matcher.match(paper)
            except ShardFailed:  # the engine's fault, not the paper's: the next poll loads it again
                raise
            except Exception:
                # The first time, the poll fails and the next one tries again (from any
                # source: leftovers go first). A paper the matcher raises on again is a
                # bug, not bad luck: it is stored, not posted, so that it never holds up
                # every later poll of every source.
                if paper.id not in self._match_failed:
                    self._match_failed.add(paper.id)
                    raise
                log.exception("%s: matching failed again; the paper is stored and will not be posted", paper.id)
                matches = []
            if paper.id in liked:
                matches = sorted([*matches, *liked[paper.id]])
            if writes.gather(unmatched, tuple(matches), version) >= (
                    self.GROUP_ROWS if writes.handed else min(self.GROUP_ROWS, self.FIRST_GROUP_ROWS)):
                self._submit(writes, now)

    def _may_post(self, unmatched: UnmatchedPaper, now: datetime) -> bool:
        """Whether a paper written down as unmatched is matched at all: not a revision, and not
        left by a poll interrupted longer ago than max_age_days (the bot was off): that one is
        stored, not posted, as a paper listed that long ago would be."""
        return not unmatched.paper.is_update and now - unmatched.since <= self.max_age

    def _submit(self, writes: _Writes, now: datetime) -> None:
        """Hand the gathered group to the writer thread as one job: its transactions, made
        and encoded here (the writer only runs SQL), one a range of channels; with their
        deliveries made here too when the store takes them and the group was matched at one
        known subscription version (`MatchedBatch.split`)."""
        done, found, version = writes.take()
        if not done:
            return
        if not self.store.takes_made_deliveries():  # (no database read: from any thread)
            version = None
        batches = MatchedBatch.split(done, found, self.ENQUEUE_ROWS, version)

        def job(store: StoreContract) -> int:
            return sum(self._queue(store, batch, now) for batch in batches)

        writes.submit(job, set(batches[0].paper_ids))

    def _recommended(self, todo: list[UnmatchedPaper], now: datetime) -> dict[str, list[Match]]:
        """The like: matches of a batch (bot/recommend.py), for the papers that may be posted:
        one sparse matrix product for the batch. A failure leaves the batch to keyword
        matches alone (logged): it never holds up the poll."""
        papers = [u.paper for u in todo if self._may_post(u, now)]
        if not papers or not len(self.recommender):
            return {}
        try:
            found = self.recommender.match_many(papers)
        except Exception:
            log.exception("recommendations failed for %d papers; they get keyword matches only", len(papers))
            return {}
        return {paper.id: matches for paper, matches in zip(papers, found, strict=True) if matches}

    def _queue(self, store: StoreContract, batch: MatchedBatch, now: datetime) -> int:
        """One transaction (in the writer thread): queue the deliveries, settle their papers.
        Only subscriptions that existed when a paper was stored receive it (`upto`, or created
        by `since` for a re-checked paper), and one removed since is gone: the store reads
        them under the write lock (`queue_matched`)."""
        queued = store.queue_matched(batch, now)
        if self.between_batches is not None:
            self.between_batches()
        return queued

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise PollStopped("the bot is stopping: the rest of this poll is left to the next one")

    def _valid(self, name: str, papers: Sequence[Paper]) -> list[Paper]:
        """The papers that can be stored as they are; each other one is logged once and skipped."""
        valid = []
        for paper in papers:
            try:
                check_paper(paper)
            except ValueError as exc:
                log.warning("%s: skipped paper %s: %s", name, bounded_repr(paper.id), str(exc)[:300])
                continue
            valid.append(paper)
        return valid

    def _succeeded(self, report: SourceReport) -> SourceReport:
        self._failures.pop(report.source, None)
        self.faults.pop(report.source, None)
        return report

    def _failed(self, name: str, reason: str, *, own: bool = False) -> SourceReport:
        """Record a failed poll; `own` when the bot failed (its storage or code), not the source."""
        reason = reason[:500]
        failures = self._failures[name] = self._failures.get(name, 0) + 1
        if own:
            self.faults[name] = reason  # /healthz reads it, even if recording fails below
        else:
            self.faults.pop(name, None)
        try:
            failures = self._failures[name] = self.store.record_source_failure(name, self.clock(), reason)
        except Exception as exc:  # the database that just failed may well refuse this too
            log.error("%s: could not record this failure in the database either (%s: %s)",
                      name, type(exc).__name__, str(exc)[:200])
        if not own:  # the bot's own failures were logged where they happened
            log.warning("%s: %s", name, reason)
        return SourceReport(name, False, error=reason, failures=failures)


class _Writes:
    """The delivery transactions handed to the writer thread: at most `ahead` under way, their
    results collected in order (the first failure is raised to the worker)."""

    def __init__(self, write: Callable[[Callable[[StoreContract], int]], Future[int]], ahead: int):
        self._write = write
        self._ahead = ahead
        self._jobs: deque[tuple[Future[int], set[str]]] = deque()
        self._failed = threading.Event()
        self.queued = 0
        self.handed = 0  # groups handed to the writer
        # The group being gathered (matched, not handed over yet): its papers and their matches.
        self._done: list[UnmatchedPaper] = []
        self._found: list[tuple[Match, ...]] = []
        self._rows = 0
        self._version: int | None = None  # the subscription version the group was matched at, if one

    def gather(self, unmatched: UnmatchedPaper, matches: tuple[Match, ...], version: int | None = None) -> int:
        """Add a paper matched at subscription `version` (None: not known exactly) to the
        group; how many matches the group has."""
        if not self._done:
            self._version = version
        elif version != self._version:
            self._version = None
        self._done.append(unmatched)
        self._found.append(matches)
        self._rows += len(matches)
        return self._rows

    def take(self) -> tuple[list[UnmatchedPaper], list[tuple[Match, ...]], int | None]:
        """The group gathered so far and its version (and a new one begins)."""
        taken = self._done, self._found, self._version
        self._done, self._found, self._rows, self._version = [], [], 0, None
        return taken

    def submit(self, job: Callable[[StoreContract], int], papers: set[str]) -> None:
        while len(self._jobs) >= self._ahead:
            self._finish_oldest()

        def once_none_failed(store: StoreContract) -> int:
            # After a failed transaction (a full disk, a bug) the ones behind it are not run,
            # as if the poll had stopped there: their papers stay written down for the next poll.
            if self._failed.is_set():
                raise PollStopped("an earlier transaction of this poll failed")
            try:
                return job(store)
            except BaseException:
                self._failed.set()
                raise

        self._jobs.append((self._write(once_none_failed), papers))
        self.handed += 1

    def _finish_oldest(self) -> None:
        done, _ = self._jobs[0]
        try:
            self.queued += done.result()
        finally:
            self._jobs.popleft()

    def collect(self) -> None:
        """Take in the transactions already done (raises the first that failed)."""
        while self._jobs and self._jobs[0][0].done():
            self._finish_oldest()

    def papers(self) -> set[str]:
        """The papers of the transactions not done yet, and of the group being gathered."""
        under_way: set[str] = {u.paper.id for u in self._done}
        for done, papers in self._jobs:
            if not done.done():
                under_way |= papers
        return under_way

    def finish(self) -> int:
        """Wait for every transaction; how many deliveries they queued (raises the first failure)."""
        while self._jobs:
            self._finish_oldest()
        return self.queued

    def abandon(self) -> None:
        """The poll failed: wait for what is under way, whatever its outcome (its papers stay
        written down if it failed: the next poll matches them). The group gathered is dropped
        (its papers are still written down)."""
        self.take()
        for done, _ in self._jobs:
            try:
                done.result()
            except BaseException as exc:
                log.debug("a delivery transaction failed after the poll did: %s", exc)
        self._jobs.clear()


@dataclass(frozen=True, eq=False)
class _Flight:
    """A batch of unmatched papers sent to the matching worker processes, not gathered yet."""

    todo: list[UnmatchedPaper]
    liked: dict[str, list[Match]]  # its like: matches (`Poller._recommended`)
    wanted: list[Paper]  # the papers sent (those that may be posted)
    sent: Submitted | None  # None: sending failed (each paper is matched alone when it lands)
    version: int | None  # the subscription version the engine held exactly when it was sent, if known


def _flying(flights: deque[_Flight]) -> set[str]:
    """The papers of the batches being matched."""
    return {u.paper.id for flight in flights for u in flight.todo}


def _cores(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float:
    """The cores this process may use: those it may run on (its affinity, where the system
    tells it), fewer under a CPU quota (`docker run --cpus 1` sees every core of the machine
    in its affinity; so does a systemd service with CPUQuota=). The quota is that of this
    process's cgroup (`own`) or of any above it, cgroup v2's cpu.max ("QUOTA PERIOD", or
    "max PERIOD" for none) or v1's cpu.cfs_quota_us (-1 for none) / cpu.cfs_period_us; a
    container sees its own cgroup as the root (and v1 names the host's path, missing there)."""
    try:
        cores: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every system
        cores = os.cpu_count() or 1
    try:
        lines = own.read_text().splitlines()
    except OSError:  # not Linux
        return cores
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        names = controllers.split(",")
        if controllers == "":  # v2: one hierarchy
            mounts = [root]
        elif "cpu" in names:  # v1: the cpu controller's, mounted under its names (or "cpu", a link)
            mounts = [root / controllers, root / "cpu"]
        else:
            continue
        parts = [part for part in path.strip().split("/") if part]
        for mount in mounts:
            for depth in range(len(parts), -1, -1):  # this cgroup, then each one above it
                quota = _quota(mount.joinpath(*parts[:depth]), v2=controllers == "")
                if quota is not None:
                    cores = min(cores, quota)
    return cores


def _quota(cgroup: Path, *, v2: bool) -> float | None:
    """The cores a cgroup's CPU quota allows, or None: none set, or none readable there."""
    try:
        if v2:
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = (cgroup / "cpu.cfs_quota_us").read_text().strip()
        return None if int(quota) < 0 else int(quota) / int((cgroup / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
