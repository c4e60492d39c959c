"""The matching engine split over worker processes, each holding part of the index.

`IndexedMatcher` is pure Python: one process matches on one core. Forking it to match
papers side by side shares its pages only until they are touched, and in CPython every
object a worker reads has its reference count written, so the index ends up copied in
every worker (measured: 3.2 GB at a million subscriptions; docs/benchmarks.md). Here each
distinct query lives in exactly one of N worker processes (chosen by a checksum of its
text), which builds and keeps its own `IndexedMatcher` of those queries only: nothing is
shared, so nothing is copied, the index is in memory once in all, and its load runs on
every core. A paper is sent to every worker; each answers with the matches of its part,
sorted by subscription id, as four parallel columns (ids, channel numbers, query texts,
terms; marshalled), and this process makes the Matches from them without running a line
of Python per match (`map` and `zip`, in C), in `IndexedMatcher.match`'s order.

Workers are new interpreters (`python -m bot.sharded`, fork and exec by subprocess), not
forks of this process: the bot's process has threads (the event loop's, the poller's
worker thread, the HTTP server's), and a fork copies only the thread that forks, with
whatever locks the others held at that moment (the logging module's, the allocator's,
sqlite3's): a child can deadlock on its first use of one. Nor multiprocessing's "spawn":
it runs the parent's main script again in each child. A worker imports this module and
nothing of the parent's state; it ends when its socket to the parent closes.

Same interface as `IndexedMatcher` for its callers (add, remove, ids, len, match,
match_many, take_recompiled, close): `add` raises QueryError here, in the caller's process,
as `IndexedMatcher.add` does (a query without a current compiled form is parsed here, and
its compiled form sent). Changes are sent in batches before the next match. A worker that
dies makes every later match raise `ShardFailed`: the caller loads a new engine. A paper
that raises in a worker makes that call raise `PaperFailed` (the engine goes on): the
caller matches the papers one by one to find it.

Besides, `submit` sends papers and returns at once, and `result` takes their matches
later, in the order sent: the poller sends its next batch before it gathers the one before
(Poller.MATCH_AHEAD), so the workers match while it stores and queues. With one process
(`[matching] worker_process`) that worker holds the whole index: the bot's process then
only stores, queues and makes the Matches, and matching runs on another core.
"""

from __future__ import annotations

import gc
import logging
import marshal
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from array import array
from collections import deque
from datetime import datetime, timezone
from itertools import compress, repeat
from multiprocessing.connection import Connection, wait
from operator import itemgetter
from typing import Final, Iterable, NoReturn, Sequence, cast

from .errors import QueryError
from .matching import COMPILED_VERSION, IndexedMatcher, compile_query
from .models import ChannelRef, Match, Paper, Subscription

log = logging.getLogger(__name__)

# Changes are sent to a worker once this many are waiting (or before the next match): a
# big first load is then built by the workers while this process still reads it. Each
# message is pickled in one call that holds the GIL, and so the event loop: 20,000 changes
# took 14 to 26 ms (3.4 MB), and the loop stalled 58 to 130 ms in a first load at 100,000
# on a busy machine; 2,000 take a tenth of that.
SEND_EVERY = 2_000
# Papers per message: small enough that both workers get work early and that this process
# makes the Matches of one message while the workers match the next (the poller hands 50
# papers at a time), big enough that messages cost little per paper.
PAPERS_PER_MESSAGE = 10
# `match_many` sends its papers MANY_PART at a time, up to MANY_AHEAD parts ahead of the one
# whose Matches are made (as the poller sends its batches: Poller.MATCH_AHEAD).
MANY_PART = 5 * PAPERS_PER_MESSAGE
MANY_AHEAD = 2
# Seconds a caller waits for a worker's next answer before the worker is taken for hung (a
# SIGSTOP, a deadlock): the call fails with ShardFailed, the workers are ended, and the poller
# loads a new engine at its next poll, where it would have waited for ever. An answer takes
# well under a second, but the first after a load waits for the worker's build (~20 s at a
# million subscriptions on a busy machine).
ANSWER_TIMEOUT = 600.0
# Seconds `close` gives the workers, all together, to stop before the rest are killed.
CLOSE_TIMEOUT = 10.0
# The machine integer types of the answers' columns: subscription ids, channel numbers.
_ID: Final = "q"
_CHANNEL: Final = "i"
_SUBSCRIPTION_ID: Final = itemgetter(0)  # a Match's


class ShardFailed(RuntimeError):
    """A worker process of the sharded engine died or failed: its part of the index is gone."""


class PaperFailed(RuntimeError):
    """Matching one paper raised in a worker (the engine is fine: the other papers matched)."""

    def __init__(self, failed: list[str]):  # "paper id: why", one a paper and worker that raised
        self.failed = failed
        papers = len({reason.partition(": ")[0] for reason in failed})
        super().__init__(f"matching failed in a worker process for {papers} paper(s): {failed[0]}")


class ShardedMatcher:
    def __init__(self, subscriptions: Iterable[Subscription] = (), *, papers: Iterable[Paper] = (),
                 processes: int = 2):
        if not 1 <= processes <= 255:  # a worker's number + 1 is kept in a byte (`_ShardTable`)
            raise ValueError("processes must be from 1 to 255")
        history = list(papers)
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        for _ in range(processes):
            ours, theirs = socket.socketpair()
            # A new interpreter (fork and exec): not a fork of this one; see the module's docstring.
            proc = subprocess.Popen([sys.executable, "-m", "bot.sharded", str(theirs.fileno())],
                                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            theirs.close()
            self._conns.append(Connection(ours.detach()))
            self._procs.append(proc)
        # Every channel a subscription was added with, by number: a worker keeps each of its
        # subscriptions' channel numbers and answers with them (a list read is cheaper than a
        # lookup by subscription id among a million). Never shrinks: one entry a channel.
        self._channel_list: list[ChannelRef] = []
        self._channel_no: dict[ChannelRef, int] = {}
        self._shard_of = _ShardTable()  # subscription id -> the worker holding its query
        self._pending: list[list[tuple]] = [[] for _ in range(processes)]
        self._waiting = 0
        self._recompiled: dict[int, bytes] = {}
        self._failed: str | None = None
        # The calls sent and not yet read back, oldest first (`submit`): answers come in order.
        self._sent: deque[Submitted] = deque()
        # A thread of its own reads every answer as it comes (see `_Inbox`): a worker never
        # blocks writing one, so this process can send the next papers while it matches.
        self._inbox = _Inbox(self._conns)
        self._send_all(("history", history))
        for subscription in subscriptions:
            self.add(subscription)

    @property
    def failed(self) -> str | None:
        """Why the engine can no longer match (a worker died), or None."""
        return self._failed

    def __len__(self) -> int:
        return len(self._shard_of)

    def ids(self) -> set[int]:
        return self._shard_of.ids()

    def is_empty(self) -> bool:
        return not len(self._shard_of)

    def add(self, subscription: Subscription) -> None:
        stored = subscription.compiled
        blob = stored if stored is not None and stored[:8] == COMPILED_VERSION else None
        if blob is None:
            blob = compile_query(subscription.query)  # raises QueryError here, for the caller
        shard = zlib.crc32(subscription.query.encode()) % len(self._conns)
        held = self._shard_of.put(subscription.id, shard)
        if held is not None:  # its earlier query: taken out of that worker first
            self._recompiled.pop(subscription.id, None)
            self._queue(held, ("remove", subscription.id))
        if blob is not stored:  # parsed here: for storage to keep
            self._recompiled[subscription.id] = blob
        channel_no = self._channel_no.get(subscription.channel)
        if channel_no is None:
            channel_no = self._channel_no[subscription.channel] = len(self._channel_list)
            self._channel_list.append(subscription.channel)
        self._queue(shard, ("add", subscription.id, subscription.query, blob, channel_no))

    def remove(self, subscription_id: int) -> None:
        self._recompiled.pop(subscription_id, None)
        shard = self._shard_of.pop(subscription_id)
        if shard is None:
            return
        self._queue(shard, ("remove", subscription_id))

    def take_recompiled(self) -> dict[int, bytes]:
        found, self._recompiled = self._recompiled, {}
        return found

    def match(self, paper: Paper) -> list[Match]:
        return self.match_many([paper])[0]

    def match_many(self, papers: Sequence[Paper], processes: int = 1) -> list[list[Match]]:
        """Each paper's matches, as `IndexedMatcher.match` gives them, in order (`processes`
        is ignored: this engine always uses its workers). A paper whose matching raised in a
        worker makes this raise PaperFailed once every answer is read (the engine stays
        usable: `match` the papers one by one to find it); a dead worker, ShardFailed."""
        # Sent a part at a time, a few parts ahead of the one whose Matches this thread makes:
        # the workers match the next parts meanwhile (sending all first would leave every
        # Match to be made after the workers are done).
        found: list[list[Match]] = []
        failed: list[str] = []
        calls: deque[Submitted] = deque()

        def take() -> None:
            call = calls.popleft()
            try:
                found.extend(self.result(call))
            except PaperFailed as exc:  # the other papers' answers are read on
                failed.extend(exc.failed)
                found.extend([] for _ in call.papers)

        for start in range(0, len(papers), MANY_PART):
            calls.append(self.submit(papers[start:start + MANY_PART]))
            if len(calls) > MANY_AHEAD:
                take()
        while calls:
            take()
        if failed:
            raise PaperFailed(failed)
        return found

    def submit(self, papers: Sequence[Paper]) -> Submitted:
        """Send papers to be matched and return at once: `result` gives their matches. The
        workers match them after every change made before this call (and before the papers
        of any later call): what `result` gives is the index as it was now. Calls need not be
        read back: a later call's `result` reads the answers of those before it first.
        Raises ShardFailed (a dead worker), or what pickling a paper raised (nothing sent)."""
        self._flush()
        # Pickled once, the same bytes to every worker.
        messages = [pickle.dumps(("match", papers[i:i + PAPERS_PER_MESSAGE]), pickle.HIGHEST_PROTOCOL)
                    for i in range(0, len(papers), PAPERS_PER_MESSAGE)]
        call = Submitted(papers, len(messages))
        self._sent.append(call)
        try:
            # This thread writes while the workers answer: their answers are read by the
            # inbox's thread, so a worker reads on, and a write waits at most for its matching.
            for message in messages:
                for conn in self._conns:
                    conn.send_bytes(message)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        return call

    def result(self, call: Submitted) -> list[list[Match]]:
        """The matches of a `submit`'s papers, each as `IndexedMatcher.match` gives them, in
        order (waits for them). PaperFailed when matching a paper raised in a worker (the
        engine goes on); ShardFailed when a worker died or failed."""
        if call.taken:
            raise ValueError("the result of this call was already taken")
        call.taken = True
        try:
            raws: Iterable[list[bytes | str]]
            if call.answers is None:
                # The calls sent before it are read first (kept in theirs: answers come in order);
                # its own are decoded as they come.
                while self._sent[0] is not call:
                    self._read(self._sent[0])
                self._sent.popleft()
                take, workers = self._inbox.take, range(len(self._conns))
                raws = ([take(i) for i in workers] for _ in range(call.messages))
            else:
                raws = call.answers
            found: list[list[Match]] = []
            failed: list[str] = []
            for start, raw in zip(range(0, len(call.papers), PAPERS_PER_MESSAGE), raws, strict=True):
                answers = [self._decode(data) for data in raw]
                found += self._matches(answers, call.papers[start:start + PAPERS_PER_MESSAGE], failed)
        except BaseException as exc:
            # The workers' streams are out of step, or a worker is gone: the engine cannot go
            # on. The workers are ended (a live one would go on answering calls nobody reads).
            if self._failed is None:
                self._failed = _lost(f"{type(exc).__name__}: {exc}")
            self._end_workers()
            if isinstance(exc, (OSError, EOFError)):
                raise ShardFailed(self._failed) from exc
            raise
        finally:
            call.answers = None  # read once: the bytes are not kept
        if failed:
            raise PaperFailed(failed)
        return found

    def ready(self, call: Submitted) -> bool:
        """Whether `result(call)` would not wait for the workers: their answers to it, and to
        every call sent before it, are in (or a worker has ended: it would fail at once)."""
        needed = 0
        for sent in self._sent:
            needed += sent.messages
            if sent is call:
                return self._inbox.holds(needed)
        return True  # read already

    def _read(self, call: Submitted) -> None:
        """Take the oldest call's answers off the inbox (undecoded), into the call."""
        assert self._sent and self._sent[0] is call
        call.answers = [[self._inbox.take(i) for i in range(len(self._conns))] for _ in range(call.messages)]
        self._sent.popleft()

    def _drain(self) -> None:
        """Read every call's answers still on their way (before a request whose answer is not a call's)."""
        while self._sent:
            self._read(self._sent[0])

    def _matches(self, answers: list[list], papers: Sequence[Paper], failed: list[str]) -> list[list[Match]]:
        """Each paper's Matches from the workers' columns (see `_answer`): made and merged in C."""
        new = tuple.__new__  # as IndexedMatcher._matches: the same tuples, made in C
        channel = self._channel_list.__getitem__
        found = []
        for i, paper in enumerate(papers):
            matches: list[Match] = []
            runs = 0
            for answer in answers:
                part = answer[i]
                if part.__class__ is str:  # that paper raised in that worker
                    failed.append(f"{paper.id}: {part}")
                elif part:
                    ids, channels, queries, terms = part
                    matches += map(new, repeat(Match), zip(memoryview(ids).cast(_ID),
                                                           map(channel, memoryview(channels).cast(_CHANNEL)),
                                                           queries, terms, strict=True))
                    runs += 1
            if runs > 1:
                # Runs sorted by subscription id in each worker: merged in one pass, comparing
                # the ids as ints (a Match, a tuple subclass, would be compared a tuple at a time).
                matches.sort(key=_SUBSCRIPTION_ID)
            found.append(matches)
        return found

    def worker_usage(self) -> list[tuple[float, float]]:
        """Each worker's peak resident set size in MB and CPU time so far in seconds, once it
        has applied every change sent (for the benchmarks)."""
        self._flush()
        self._drain()
        for conn in self._conns:
            conn.send(("usage",))
        return [self._decode(self._inbox.take(i)) for i in range(len(self._conns))]

    def close(self) -> None:
        """End the worker processes."""
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        # One deadline for all (told to stop together, they stop side by side): a hung
        # worker is killed after CLOSE_TIMEOUT in all, not that much for each in turn.
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for proc in self._procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Their sockets' ends are closed with them: the inbox's thread reads to their end and
        # stops, and only then are ours closed (never under a thread waiting on them).
        self._inbox.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        self._sent.clear()
        # Matching with no worker would answer every paper with no matches: a poll racing the
        # close would settle its papers unposted. Every later call fails instead.
        if self._failed is None:
            self._failed = "the matching engine was closed"

    def _end_workers(self) -> None:
        for proc in self._procs:
            proc.kill()

    def _queue(self, shard: int, change: tuple) -> None:
        self._pending[shard].append(change)
        self._waiting += 1
        if self._waiting >= SEND_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self._failed is not None:
            raise ShardFailed(self._failed)
        if not self._waiting:
            return
        try:
            for conn, changes in zip(self._conns, self._pending, strict=True):
                if changes:
                    conn.send(("changes", changes))
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        self._pending = [[] for _ in self._conns]
        self._waiting = 0

    def _send_all(self, message: tuple) -> None:
        try:
            for conn in self._conns:
                conn.send(message)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")

    def _decode(self, data: bytes | str):
        if isinstance(data, str):  # the worker's socket ended (the inbox's reason)
            self._fail(data)
        answer = marshal.loads(data)  # plain values: marshal reads them faster than pickle
        if isinstance(answer, tuple) and answer and answer[0] == "failed":
            self._fail(answer[1])
        return answer

    def _fail(self, reason: str) -> NoReturn:
        self._failed = _lost(reason)
        raise ShardFailed(self._failed)

    def __del__(self) -> None:
        if self._procs:  # not closed: the workers would end with this process anyway (their socket closes)
            try:
                self.close()
            except Exception:  # at interpreter shutdown, anything may already be gone
                pass


class Submitted:
    """Papers sent to the workers by `ShardedMatcher.submit`: `result` gives their matches."""

    __slots__ = ("papers", "messages", "answers", "taken")

    def __init__(self, papers: Sequence[Paper], messages: int):
        self.papers = papers
        self.messages = messages
        self.answers: list[list[bytes | str]] | None = None  # a message's answers, a worker's each
        self.taken = False


class _Inbox:
    """Every worker's answers, read by a thread of its own as they come and kept in order.

    A worker writing an answer nobody reads would block, and stop reading what this process
    sends it: with the answers read at once, this process can send a call's papers while the
    workers still answer earlier ones, from the caller's thread, without a deadlock. The
    thread holds the connections, not the engine (whose `__del__` ends the workers). It ends
    when every worker's socket has ended."""

    def __init__(self, conns: list[Connection]):
        self._boxes: list[deque[bytes | str]] = [deque() for _ in conns]
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(list(conns),), name="papers-bot-match-inbox",
                                        daemon=True)
        self._thread.start()

    def _run(self, conns: list[Connection]) -> None:
        live = {id(conn): i for i, conn in enumerate(conns)}
        try:
            self._read(conns, live)
        except BaseException as exc:  # (a bug, memory): every caller waiting is told, none hangs
            with self._ready:
                for number in live.values():
                    self._boxes[number].append(f"the answers' reader failed: {type(exc).__name__}: {exc}")
                self._ready.notify_all()
            raise

    def _read(self, conns: list[Connection], live: dict[int, int]) -> None:
        while live:
            for ready in wait([conn for conn in conns if id(conn) in live]):
                conn = cast(Connection, ready)
                data: bytes | str
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError) as exc:  # the worker is gone: the reason, in place of an answer
                    data = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__}: the worker ended"
                    number = live.pop(id(conn))
                else:
                    number = live[id(conn)]
                with self._ready:
                    self._boxes[number].append(data)
                    self._ready.notify_all()

    def take(self, worker: int) -> bytes | str:
        """That worker's next answer (waits for it); once its socket has ended, or when it
        has answered nothing for ANSWER_TIMEOUT seconds, why, as a str."""
        box = self._boxes[worker]
        timeout = ANSWER_TIMEOUT
        deadline = time.monotonic() + timeout
        with self._ready:
            while not box:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"worker {worker} answered nothing in {timeout:g} s (hung?)"
                self._ready.wait(left)
            data = box[0]
            if data.__class__ is bytes:
                box.popleft()  # the reason of an end stays: every later take gets it too
            return data

    def holds(self, answers: int) -> bool:
        """Whether every worker's next `answers` answers are in (or it has ended)."""
        return all(len(box) >= answers or (box and box[-1].__class__ is str) for box in self._boxes)

    def join(self) -> None:
        self._thread.join()


_IDS_SLICE: Final = 1 << 16


class _ShardTable:
    """Each subscription's worker, by subscription id: a byte a subscription (the worker's
    number + 1, 0 for none) at the id's offset, for the dense ids storage hands out; a dict
    for the few ids too far out for that (negative, or far beyond the ones held). At a
    million subscriptions a dict of them was ~55 MB of this process's memory (its table and
    an int object a key); the bytes are 1 MB."""

    __slots__ = ("_dense", "_sparse", "_count")

    def __init__(self) -> None:
        self._dense = bytearray()
        self._sparse: dict[int, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, sub_id: int, shard: int) -> int | None:
        """Holds `sub_id` on `shard` (below 255); returns the shard it was held on, or None."""
        dense = self._dense
        if 0 <= sub_id < len(dense):
            byte = dense[sub_id]
            dense[sub_id] = shard + 1
            if byte:
                return byte - 1
        elif 0 <= sub_id < 16 * self._count + 65536:  # grown, never past 16 bytes a subscription
            dense += bytes(max(sub_id + 1 - len(dense), len(dense)))
            dense[sub_id] = shard + 1
        else:
            held = self._sparse.get(sub_id)
            self._sparse[sub_id] = shard
            if held is None:
                self._count += 1
            return held
        if self._sparse and sub_id in self._sparse:  # held out there before the bytes reached it
            return self._sparse.pop(sub_id)
        self._count += 1
        return None

    def pop(self, sub_id: int) -> int | None:
        dense = self._dense
        shard: int | None
        if 0 <= sub_id < len(dense) and dense[sub_id]:
            shard = dense[sub_id] - 1
            dense[sub_id] = 0
        else:
            shard = self._sparse.pop(sub_id, None)
            if shard is None:
                return None
        self._count -= 1
        return shard

    def ids(self) -> set[int]:
        found = set(self._sparse)
        dense = self._dense
        # The held offsets, in C, a slice at a time: each slice is one call holding the GIL
        # (~10 ms), where the whole of a million would hold it (and the event loop) ~170 ms.
        for start in range(0, len(dense), _IDS_SLICE):
            found.update(compress(range(start, start + _IDS_SLICE), dense[start:start + _IDS_SLICE]))
        return found


def _lost(reason: str) -> str:
    return f"a matching worker process failed ({reason}); its part of the index is lost"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _worker_main(conn: Connection) -> None:
    """A worker: keeps an IndexedMatcher of its part of the queries, answers match requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    engine = IndexedMatcher()
    huge = _HugePages()
    # Why a message that has no answer (history, changes) failed: every later request is
    # answered with it, in place of its answer (a message of its own would take the place of
    # the next call's answer, read by the parent as that call's).
    broken: str | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        kind = message[0]
        try:
            if broken is not None and kind in ("match", "usage"):
                conn.send_bytes(marshal.dumps(("failed", broken)))
            elif kind == "history":
                engine = IndexedMatcher(papers=message[1])
            elif kind == "changes":
                _apply(engine, message[1])
                huge.pending = True
                if not conn.poll(0):  # no more changes on the way now: a load is over
                    huge.settle()
            elif kind == "match":
                huge.settle()  # (a load whose changes came without a pause)
                # No collection while matching (as in the poller's poll): what a paper makes
                # is freed by reference counting when its answer is sent.
                gc.disable()
                try:
                    answer = [_answer(engine, paper) for paper in message[1]]
                finally:
                    gc.enable()
                conn.send_bytes(marshal.dumps(answer))
            elif kind == "usage":
                huge.settle()
                usage = resource.getrusage(resource.RUSAGE_SELF)
                conn.send_bytes(marshal.dumps((usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)))
            elif kind == "stop":
                return
        except Exception as exc:  # told to the parent, which stops using this engine
            log.exception("matching worker failed")
            if kind in ("history", "changes"):
                broken = f"{type(exc).__name__}: {exc}"
                continue
            try:
                conn.send_bytes(marshal.dumps(("failed", f"{type(exc).__name__}: {exc}")))
            except OSError:
                return


def _answer(engine: IndexedMatcher, paper: Paper) -> tuple | str:
    """A paper's matches in this worker's part, sorted by subscription id, as four columns:
    subscription ids and channel numbers (machine integers, as bytes: marshalled without a
    lookup each), query texts, terms; () for no match; or why matching it raised."""
    try:
        hits = engine._hits(paper)
    except Exception as exc:  # that paper's: told to the parent, the engine goes on
        log.exception("matching worker: paper %s failed", paper.id)
        return f"{type(exc).__name__}: {exc}"
    if not hits:
        return ()
    # The columns are filled an entry at a time (a query's subscriptions copied out of its
    # dict in C), not a row per match, then put in subscription id order by one permutation.
    ids: list[int] = []
    channels: list = []  # channel numbers (see `_apply`): the entries' annotations say ChannelRef
    queries: list[str] = []
    terms: list[tuple[str, ...]] = []
    # Bound once: `typing.cast` here was a Python call a match, and a method looked up an append.
    add_id, add_channel, add_query, add_terms = ids.append, channels.append, queries.append, terms.append
    for entry, found in hits:
        sole = entry.sole
        if sole is not None:  # most entries: one subscription
            add_id(sole)
            add_channel(entry.sole_channel)
            add_query(entry.query)
            add_terms(found)
        else:
            subs = entry.subs
            ids += subs
            channels += subs.values()
            queries += repeat(entry.query, len(subs))
            terms += repeat(found, len(subs))
    if len(ids) > 1:
        take = itemgetter(*sorted(range(len(ids)), key=ids.__getitem__))  # ids are unique
        return (array(_ID, take(ids)).tobytes(), array(_CHANNEL, take(channels)).tobytes(), take(queries),
                take(terms))
    return array(_ID, ids).tobytes(), array(_CHANNEL, channels).tobytes(), queries, terms


# Linux madvise(2) advice: mmap has MADV_HUGEPAGE, but not MADV_COLLAPSE (Linux 6.1) before Python 3.13.
_MADV_HUGEPAGE: Final = 14
_MADV_COLLAPSE: Final = 25
_PAGE_SIZE: Final = resource.getpagesize()
# A worker's memory is put in huge pages once its RSS is this, then each time it has
# grown by HUGE_PAGES_STEP_MB since (each MB costs ~2.5 ms of CPU to collapse, once, at the
# end of an index load). Not below: at 100,000 subscriptions (a ~160 MB worker) the collapse
# made the index load 0.3 to 0.4 s longer (1.6 -> 1.9 to 2.0 s, past the 2 s it is meant to
# take) for 0.08 s less a 2,000-paper poll; at a million (two ~460 MB workers), 1.25 s of a
# build of ~8 s for 4 to 8 % less CPU a paper (docs/benchmarks.md, "eighth session").
HUGE_PAGES_FROM_MB = 320
HUGE_PAGES_STEP_MB = 16


class _HugePages:
    """A worker's index in 2 MB pages (Linux transparent huge pages), once it has grown.

    Matching a paper visits a few thousand objects scattered over the index (hundreds of
    MB at a million subscriptions): with 4 kB pages nearly every visit is a TLB miss too,
    and a page walk. Once a load is over (no change waiting after one applied; or at the
    next match or usage request) and it has grown the process (see HUGE_PAGES_FROM_MB), its
    big anonymous mappings (pymalloc's arenas, malloc's heap) are marked MADV_HUGEPAGE and
    collapsed into huge pages with MADV_COLLAPSE (Linux 6.1), what is already in huge pages
    skipped. Measured at a million: a worker's CPU a paper -13 % in process, -9 to -20 %
    in the benchmark, for ~2.5 ms of CPU a MB collapsed once and a few MB more resident
    (docs/benchmarks.md, million6). Where the kernel cannot (THP off or set to never, an
    older kernel, not Linux), nothing happens."""

    def __init__(self) -> None:
        self.done_mb = 0.0
        self.madvise = _madvise()
        self.pending = False  # changes applied since the last look

    def settle(self) -> None:
        if not self.pending or self.madvise is None:
            return
        self.pending = False
        try:
            self._settle()
        except Exception:  # never the worker's failure: it only matches slower
            log.exception("matching worker: huge pages left off")
            self.madvise = None

    def _settle(self) -> None:
        rss_mb = _rss_mb()
        if rss_mb < max(HUGE_PAGES_FROM_MB, self.done_mb + HUGE_PAGES_STEP_MB):
            return
        self.done_mb = rss_mb
        for start, size in _anonymous_regions():
            assert self.madvise is not None
            if self.madvise(start, size, _MADV_HUGEPAGE) != 0:  # THP off, or unknown to the kernel
                self.madvise = None
                return
            self.madvise(start, size, _MADV_COLLAPSE)  # may fail (no memory for a huge page): left so


def _rss_mb() -> float:
    """This process's resident size now, in MB (not ru_maxrss: after fork and exec, a
    worker's starts at what its parent's was)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE / (1 << 20)


def _madvise():
    """libc's madvise, where transparent huge pages can be had (Linux, not turned off); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # MADV_COLLAPSE would collapse even with THP set to "never": what the machine's owner said holds.
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as setting:
            if "[never]" in setting.read():
                return None
    except OSError:  # a kernel without THP
        return None
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).madvise
    except (ImportError, OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


def _anonymous_regions(maps: Iterable[str] | None = None) -> list[tuple[int, int]]:
    """The private writable anonymous mappings (and the heap) of 2 MB or more among the
    lines of /proc/self/maps (or `maps`), as (start, size)."""
    if maps is None:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as lines:  # (paths may be any bytes)
            return _anonymous_regions(lines)
    found = []
    for line in maps:
        fields = line.split()
        if len(fields) < 5 or fields[1] != "rw-p" or fields[4] != "0":
            continue
        if len(fields) > 5 and fields[5] != "[heap]":  # a file's, the stack, vdso...
            continue
        start, _, end = fields[0].partition("-")
        size = int(end, 16) - int(start, 16)
        if size >= 2 << 20:
            found.append((int(start, 16), size))
    return found


# A worker's channel numbers, one int object each (each change unpickled makes its own).
_CHANNEL_NUMBERS: dict[int, int] = {}


def _apply(engine: IndexedMatcher, changes: list[tuple]) -> None:
    bulk = len(changes) > 1000
    if bulk:  # as Poller.sync_subscriptions: no collection scans the index while it is built
        gc.disable()
    try:
        for change in changes:
            if change[0] == "add":
                _, sub_id, query, blob, channel_no = change
                channel_no = _CHANNEL_NUMBERS.setdefault(channel_no, channel_no)
                try:
                    # The channel's number stands in for the channel (the parent keeps the
                    # channels): the worker's engine only hands it back, never reads it.
                    engine.add(Subscription(sub_id, cast(ChannelRef, channel_no), query, "", _EPOCH, 0, blob))
                except QueryError as exc:  # a damaged stored form of a query that no longer parses
                    log.error("subscription #%s (%r) cannot be parsed, skipped: %s", sub_id, query, exc)
            else:
                engine.remove(change[1])
        engine.take_recompiled()  # the parent keeps these
    finally:
        if bulk:
            gc.freeze()
            gc.enable()


if __name__ == "__main__":  # a worker: python -m bot.sharded FD
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _worker_main(Connection(int(sys.argv[1])))
