"""End to end: a poll through the real poller, store and outbox, while slash commands arrive.

    python -m bench.pipeline --subscriptions 100000 --papers 2000 --workload real --seed 1

Builds the bot as `papers-bot run` does (bot.app.App: its SQLite store in a temporary
directory, its poller, its Slack adapter in HTTP mode with a signing secret, the Web API
pointed at fakes.slack.FakeSlack), with --subscriptions subscriptions spread over Slack
channels (20 each) and 1,000 stored papers, all from the chosen workload (bench/workloads.py:
`zipf` or `real`). Then, on the bot's event loop as `run` would:

1. the first index load (Poller.sync_subscriptions: in the bot, part of its first poll),
   timed as `index_load_s`;
2. one poll of a source whose fetch returns the workload's --papers papers at once (fetch
   excluded): stored, matched and queued in the outbox, timed as `poll_s`;
   `papers_per_s` is papers / poll_s.

All along, a thread of its own sends a signed `/papers list` to the bot's Slack HTTP
endpoint every 200 ms (each to its own response_url), from before step 1 to a second
after step 2, and times the HTTP answer (the ack Slack waits at most 3 s for:
`ack_p50_ms`, `ack_max_ms`, `acks_over_3s`) and the arrival of the reply at the
response_url (`reply_p50_ms`, `reply_max_ms`). A 10 ms heartbeat on the loop
(bot.loopwatch) gives `loop_stall_max_ms` and `loop_stall_p99_ms` (percentiles over
heartbeats); stalls over 250 ms are logged with the stack that held the loop.
With --sweep, delivery sweeps (App.deliver, as `run` starts one after a poll) run one
after another from the poll's start until it ends, sending what the poll has queued so far
to the fake Slack (`sweeps`, `sweep_sent`): their writes meet the poller's at the write lock.
With --kept-index, the index is built and kept (bot/index_cache.py) before the bot starts,
as an earlier run of the bot would have left it (untimed: `kept_index_s`), and the first
load reads it: `index_load_s`. Either way, the poller keeps its index after the poll (in its
worker thread, the loop and commands going on): `index_save_s`, waited for before the end.
With --match-worker (`[matching] worker_process`) or --match-processes N > 1, matching runs
in worker processes (bot/sharded.py), pipelined with the poll (--match-ahead batches ahead):
`worker_peak_rss_mb` and `worker_poll_cpu_s` are theirs, and `index_load_s` ends once they
have built their parts.
Last line: one JSON object. Figures, not assertions: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import json
import logging
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import aiohttp

from bot import index_cache
from bot.app import App, index_cache_path
from bot.config import Secrets, parse_config
from bot.loopwatch import LoopWatch
from bot.matching import IndexedMatcher, PaperView, compile_query
from bot.models import Listing, MatchedBatch, Paper, Validators
from bot.poller import Poller
from bot.sharded import ShardedMatcher
from fakes.slack import FakeSlack
from storage import Store

from .workloads import WORKLOADS, Workload, make_workload

SECRET = "bench-signing-secret"
PING_EVERY = 0.2
SLACK_ACK_LIMIT = 3.0
STALL_LOG_MS = 250
CANDIDATE_SAMPLE = 200

log = logging.getLogger("bench.pipeline")


class BenchSource:
    """A source whose fetch returns the workload's papers at once: the fetch is not measured."""

    name = "bench"

    def __init__(self, papers: list[Paper]):
        self.papers = papers

    async def fetch(self, validators: Validators) -> Listing:
        return Listing(tuple(self.papers), validators)


def fill(path: Path, workload: Workload, now: datetime) -> int:
    """The store before the poll: the workload's history papers and its subscriptions."""
    store = Store(path)
    try:
        store.add_papers(workload.history, now - timedelta(days=1))
        # Indexed for preview, as the polls that stored them did: the measured poll indexes
        # its own new papers only (it indexed these 1,000 too, half again its real work).
        store.index_paper_words()
        created = (now - timedelta(days=2)).isoformat()
        # With their compiled form, as Store.add_subscription (or migration m021) stores it.
        forms: dict[str, bytes] = {}
        rows = [(sub.channel.key, sub.query, "bench", created, sub.id,
                 forms.get(sub.query) or forms.setdefault(sub.query, compile_query(sub.query)))
                for sub in workload.subscriptions()]
        with store.transaction():
            store.db.conn.executemany(
                "INSERT OR IGNORE INTO subscriptions (channel, query, created_by, created_at, version, compiled) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)
        return store.db.execute("SELECT count(*) FROM subscriptions").fetchone()[0]
    finally:
        store.close()


class Pinger:
    """Signed slash commands every PING_EVERY seconds from a thread and loop of its own."""

    def __init__(self, url: str, respond_base: str):
        self.url = url
        self.respond_base = respond_base
        self.acks: list[tuple[int, float, int]] = []  # (number, seconds, HTTP status)
        self.sent_at: dict[int, float] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="bench-pinger", daemon=True)

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def stop(self, wait: float = 120.0) -> None:
        self._stop.set()
        self._thread.join(wait)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = []
            n = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                tasks.append(asyncio.ensure_future(self._send(session, n)))
                n += 1
                next_at += PING_EVERY
                await asyncio.sleep(max(next_at - time.monotonic(), 0))
            await asyncio.gather(*tasks)

    async def _send(self, session: aiohttp.ClientSession, n: int) -> None:
        body = urlencode({"token": "x", "team_id": "T1", "channel_id": "C000000", "user_id": f"U{n % 50}",
                          "command": "/papers", "text": "list", "trigger_id": f"bench.{n}",
                          "response_url": f"{self.respond_base}/respond/r{n}"})
        stamp = str(int(time.time()))
        mac = hmac.new(SECRET.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
        headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={mac}",
                   "Content-Type": "application/x-www-form-urlencoded"}
        started = time.perf_counter()
        self.sent_at[n] = started
        try:
            async with session.post(self.url, data=body.encode(), headers=headers) as response:
                await response.read()
                self.acks.append((n, time.perf_counter() - started, response.status))
        except Exception as exc:  # counted: a command Slack would show as failed
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.acks.append((n, time.perf_counter() - started, 0))


def time_parts(app: App) -> tuple[dict[str, float], dict[str, float], Callable[[], None]]:
    """Seconds the poll spends in each of its parts, added up call by call (exact, unlike the
    stall profile's samples). The poller's worker thread: storing papers, the matcher, the
    preview word index, its other store calls ("bookkeeping"), making the writer's transactions
    (`MatchedBatch.split`: "split"), waiting for the writer thread, its own transactions' start
    ("write_turn": its turn at the write lock, behind the writer's) and end ("commit": with
    the WAL checkpoints), and the rest ("other": the executor's hop, the recommender's turn,
    gathering matches, the loop's own steps). The writer thread, at the same time
    (`write_split_s`): its transactions of deliveries, of which the outbox INSERTs, and when
    the first began (`first_at`, seconds into the poll: the writer idles before)."""
    spent = {"match_cpu": 0.0, "add_papers": 0.0, "match": 0.0, "sync_subscriptions": 0.0, "index_words": 0.0,
             "bookkeeping": 0.0, "split": 0.0, "wait_for_writer": 0.0, "write_turn": 0.0, "commit": 0.0}
    writer = {"transactions": 0.0, "enqueue": 0.0, "transactions_cpu": 0.0, "first_at": 0.0}
    worker = app.poller.worker_store or app.store
    owners: dict[str, object] = {"add_papers": worker, "match": app.poller.matcher,
                                 "sync_subscriptions": app.poller, "index_words": worker}
    methods = {"index_words": "index_paper_words"}
    # The worker's other store calls: the unmatched list, the snapshot, the newest subscription.
    for name in ("paper_snapshot", "mark_unmatched", "unmatched_papers", "newest_subscription_id",
                 "subscriptions_version"):
        owners[name] = worker
        methods[name] = name

    def timed_into(into: dict[str, float], key: str, func):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                into[key] += time.perf_counter() - started
        return wrapper

    from bot import poller as poller_module

    def cpu_into(into: dict[str, float], key: str, func):
        def wrapper(*args, **kwargs):
            started = time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                into[key] += time.thread_time() - started
        return wrapper

    # The worker's own transactions (storing a batch, the source's success): their start (its
    # turn to write, behind the writer thread's transactions: storage/db.py's turnstile, then
    # BEGIN IMMEDIATE) and their end (COMMIT, and a WAL checkpoint every CHECKPOINT_EVERY).
    transaction = worker.transaction

    @contextmanager
    def timed_transaction():
        started = time.perf_counter()
        manager = transaction()
        entered = manager.__enter__()
        spent["write_turn"] += time.perf_counter() - started
        try:
            yield entered
        except BaseException:
            if not manager.__exit__(*sys.exc_info()):
                raise
        else:
            started = time.perf_counter()
            manager.__exit__(None, None, None)
            spent["commit"] += time.perf_counter() - started

    worker.transaction = timed_transaction  # type: ignore[method-assign]
    # The writer thread's own CPU in its transactions (time.thread_time), and the matcher's.
    queue = timed_into(writer, "transactions", cpu_into(writer, "transactions_cpu", app.poller._queue))

    def first_noted(*args, **kwargs):  # when the writer's first transaction began (perf_counter)
        writer["first_at"] = writer["first_at"] or time.perf_counter()
        return queue(*args, **kwargs)

    app.poller._queue = first_noted  # type: ignore[method-assign]
    # Class attributes (the writer's Store opens in the poll): put back by `undo`.
    patched = [(Store, "queue_matched", writer, "enqueue"), (poller_module._Writes, "_finish_oldest", spent,
                                                          "wait_for_writer"), (MatchedBatch, "split", spent, "split")]
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _, _ in patched]
    for cls, name, into, key in patched:
        setattr(cls, name, timed_into(into, key, getattr(cls, name)))

    def undo() -> None:
        for cls, name, original in originals:
            setattr(cls, name, original)
        worker.transaction = transaction  # type: ignore[method-assign]

    def timed(name: str, func):
        key = name if name in spent else "bookkeeping"

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - started
        return wrapper

    # The matcher's CPU inside its wall time: wrapped outside, its clock reads (a system call,
    # where a loaded machine preempts the thread) went to "other" (~1 s of 1.5 on a busy machine).
    app.poller.matcher.match = cpu_into(spent, "match_cpu", app.poller.matcher.match)  # type: ignore[method-assign]
    if isinstance(app.poller.matcher, ShardedMatcher):
        # Matched in the worker processes: this thread sends the papers (`submit`), then waits
        # for their answers and makes the Matches (`result`), both counted as "match".
        for method in ("submit", "result"):
            setattr(app.poller.matcher, method, timed("match", cpu_into(spent, "match_cpu",
                                                                         getattr(app.poller.matcher, method))))
    for name, owner in owners.items():
        method = methods.get(name, name)
        setattr(owner, method, timed(name, getattr(owner, method)))
    return spent, writer, undo


# Frames that only pass the work on: a stall is put down to the first frame below them.
PASSING_ON = {"poller.poll", "poller._poll", "store.guarded"}


def stall_profile(seconds: dict[str, float]) -> dict:
    """Where the stalls' time went (sampled every 50 ms once a stall passed 250 ms).

    `stall_split_s`: by the first of the bot's functions below the poll (the enqueue, the
    matcher, add_papers, sync_subscriptions; `db.immediate` right under the poll is the
    commit of its transaction). `stall_top_s`: the innermost of the bot's functions and the
    innermost frame of all (SQLite calls show as sqlite_utils/db.py:execute). Samples lean
    towards calls that release the GIL (SQLite's), where the sampling thread gets it at once,
    less so with the switch interval LoopWatch sets: `poll_split_s` has exact figures.
    """
    split: dict[str, float] = {}
    top: dict[str, float] = {}
    for where, s in seconds.items():
        chain, _, inner = where.partition(" | ")
        ours = chain.split(" > ") if chain else []
        first = next((f for f in ours if f not in PASSING_ON), "other")
        split[first] = split.get(first, 0.0) + s
        leaf = f"{ours[-1] if ours else '?'} | {inner}"
        top[leaf] = top.get(leaf, 0.0) + s
    for where, s in seconds.items():  # the whole profile, for reading
        print(f"stall {s:7.2f}s  {where}", file=sys.stderr)
    ordered = sorted(split.items(), key=lambda kv: -kv[1])
    return {"stall_split_s": {k: round(v, 2) for k, v in ordered},
            "stall_top_s": [[k, round(v, 2)] for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:6]]}


def full_collections(into: list[float]):
    """A gc.callbacks entry: the length of each collection of the oldest generation, in seconds."""
    began: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            into.append(time.perf_counter() - began.pop())
    return callback


def thread_cpu() -> dict[str, float]:
    """Each live thread's CPU seconds so far (user + system, /proc/self/task/<id>/stat), by
    its Python name (threads of one pool share a name's prefix: counted together); {} where
    /proc is not there."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except (OSError, TypeError):
            continue
        name = thread.name.rstrip("0123456789_").rstrip("-_") or thread.name
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def keep_index(path: Path, kept: Path) -> None:
    """The index an earlier run of the bot would have kept beside the database."""
    store = Store(path)
    poller = Poller(store)
    try:
        poller.sync_subscriptions(store)
        assert isinstance(poller.matcher, IndexedMatcher)
        index_cache.save(kept, poller.matcher, poller._version, store.subscription_queries(poller._version))
    finally:
        poller.close()
        store.close()


async def measure(workload: Workload, directory: Path, port: int, match_processes: int = 1,
                  switch_interval: float | None = None, enqueue_rows: int | None = None,
                  sweep: bool = False, kept_index: bool = False, match_worker: bool = False,
                  match_ahead: int | None = None) -> dict:
    now = datetime.now(timezone.utc)
    path = directory / "bench.db"
    started = time.perf_counter()
    subscriptions = fill(path, workload, now)
    fill_s = time.perf_counter() - started
    kept_index_s = None
    if kept_index:
        started = time.perf_counter()
        keep_index(path, directory / "bench.db.index")
        kept_index_s = round(time.perf_counter() - started, 2)
        gc.collect()

    replies: dict[int, float] = {}
    with FakeSlack() as slack:
        answer = slack._answer

        def timed_answer(method: str, body: dict):  # the response_url of command n is /respond/r<n>
            if method.startswith("r") and method[1:].isdigit():
                replies[int(method[1:])] = time.perf_counter()
            return answer(method, body)

        slack._answer = timed_answer  # type: ignore[method-assign]
        config = parse_config({
            "storage": {"path": str(path)},
            "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False}},
            "slack": {"mode": "http", "port": port, "host": "127.0.0.1", "api_url": slack.api_url},
            "limits": {"commands_per_minute": 10**9},
            "matching": {"processes": match_processes, "worker_process": match_worker},
        }, Secrets({"SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": SECRET}))
        app = App(config)
        assert index_cache_path(config) == directory / "bench.db.index"
        app.poller.INDEX_SAVE_DELAY = 0  # kept at once after the poll, to be measured (the bot waits 30 s)
        if match_ahead:  # batches sent to the matching worker process(es) ahead (Poller.MATCH_AHEAD)
            app.poller.MATCH_AHEAD = match_ahead
        if enqueue_rows:  # deliveries a transaction of the writer thread (Poller.ENQUEUE_ROWS)
            app.poller.ENQUEUE_ROWS = enqueue_rows
        try:
            await app.start_frontends()
            pinger = Pinger(f"http://127.0.0.1:{port}/slack/events", slack.url).start()
            while not pinger.acks:  # the endpoint answers: measuring starts
                await asyncio.sleep(0.05)
            watch = LoopWatch(STALL_LOG_MS, record=True, profile=True, logger=log).start()
            # The stall profile hands the GIL over every 0.1 ms (its samples land where they
            # should), which the bot's `run` does not: threads that share the GIL (the matcher,
            # the writer, the loop) then trade it 10 times as often. Given, the bot's setting
            # (bot.app.SWITCH_INTERVAL, 1 ms) is put back: the poll as it runs, the stalls' stacks sampled coarser.
            if switch_interval is not None:
                sys.setswitchinterval(switch_interval)
            await asyncio.sleep(1.0)  # the idle loop, for comparison

            started, beats = time.perf_counter(), len(watch.samples)
            await app.poller.load_index()  # in the poller's worker thread, as the bot's first poll does it
            cpu_before: list[float] = []
            if isinstance(app.poller.matcher, ShardedMatcher):
                # Loaded once its workers have built their parts (the last changes are sent by
                # the first poll, which would wait for them): asked from the poller's thread.
                usage = await asyncio.get_running_loop().run_in_executor(app.poller._executor,
                                                                         app.poller.matcher.worker_usage)
                cpu_before = [cpu for _, cpu in usage]
            index_load_s = time.perf_counter() - started
            index_from_file = app.poller.index_from_file
            await asyncio.sleep(0.05)  # the heartbeat that ends a stall at the load's end
            index_load_stall_ms = max(watch.samples[beats:], default=0.0) * 1000
            await asyncio.sleep(1.0)  # the commands that waited are answered: two stalls, not one

            split, write_split, undo = time_parts(app)
            collections: list[float] = []  # garbage collections of the oldest generation during the poll
            # What the setup (and, in the tests, earlier tests) left for the collector is not the poll's:
            # collected now, it cannot fall due on the loop before the poll's worker turns collection off.
            gc.collect()
            gc.callbacks.append(full_collections(collections))
            started, cpu_started, threads_before = time.perf_counter(), time.process_time(), thread_cpu()
            swept = {"sweeps": 0, "sweep_sent": 0}
            sweeper = asyncio.ensure_future(sweep_during(app, swept)) if sweep else None
            try:
                report = await app.poller.poll(BenchSource(workload.papers))
            finally:
                if sweeper is not None:  # the sweep under way is cut short: its rows stay 'sending'
                    sweeper.cancel()
                    await asyncio.gather(sweeper, return_exceptions=True)
                    swept["sweep_sent"] = sum(map(len, slack.messages.values()))  # cards and digests posted
                gc.callbacks.pop()
                undo()
            poll_s = time.perf_counter() - started
            # The poll's start to the writer's first transaction (the writer idles until then).
            write_split["first_at"] = write_split["first_at"] and write_split["first_at"] - started
            poll_cpu_s = time.process_time() - cpu_started  # all threads: on a busy machine, the steadier figure
            threads_after = thread_cpu()
            thread_cpu_s = {name: round(cpu - threads_before.get(name, 0.0), 2) for name, cpu in threads_after.items()}
            index_save_s = index_save_stall_ms = None
            if app.poller.index_saving is not None:  # kept after the poll: the loop goes on meanwhile
                started, beats = time.perf_counter(), len(watch.samples)
                await asyncio.wrap_future(app.poller.index_saving)
                index_save_s = round(time.perf_counter() - started, 2)
                await asyncio.sleep(0.05)
                index_save_stall_ms = round(max(watch.samples[beats:], default=0.0) * 1000, 1)
            match_cpu_s = split.pop("match_cpu")  # the worker thread's CPU in the matcher
            split["other"] = poll_s - sum(split.values())
            await asyncio.sleep(1.0)
            watch.stop()
            # The commands still waiting get their answers once the loop is free.
            await asyncio.get_running_loop().run_in_executor(None, pinger.stop)
            deadline = time.monotonic() + 30
            while len(replies) < sum(status == 200 for _, _, status in pinger.acks) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            matcher = app.poller.matcher
            sample = workload.papers[:CANDIDATE_SAMPLE]
            candidates: float | None = None
            workers_rss: list[float] = []
            workers_cpu: list[float] = []
            if isinstance(matcher, ShardedMatcher):  # its index is in its workers
                usage = matcher.worker_usage()
                workers_rss = [rss for rss, _ in usage]
                workers_cpu = [cpu for _, cpu in usage]
            else:
                candidates = sum(len(matcher.candidates(PaperView(p))) for p in sample) / max(len(sample), 1)
            matches = app.store.db.execute("SELECT coalesce(sum(json_array_length(matched)), 0) FROM deliveries"
                                           ).fetchone()[0]
        finally:
            await app.stop_frontends()
            await app.aclose()

    if not report.ok:
        raise SystemExit(f"the poll failed: {report.error}")
    acks = [seconds * 1000 for _, seconds, status in pinger.acks if status == 200]
    reply_ms = [(replies[n] - pinger.sent_at[n]) * 1000 for n in replies if n in pinger.sent_at]
    papers = len(workload.papers)
    return {
        "workload": workload.name,
        "subscriptions": subscriptions,
        "distinct_queries": len(set(workload.queries)),
        "papers": papers,
        "history_papers": len(workload.history),
        "new": report.new,
        "queued": report.queued,
        "matches": matches,
        "matches_per_paper": round(matches / papers, 1) if papers else 0.0,
        "match_rate": round(matches / papers / subscriptions, 6) if papers and subscriptions else 0.0,
        "candidates_per_paper": round(candidates, 1) if candidates is not None else None,
        "match_processes": match_processes,
        "match_worker": match_worker,
        "match_ahead": app.poller.MATCH_AHEAD if isinstance(matcher, ShardedMatcher) else None,
        "index_load_s": round(index_load_s, 3),
        "kept_index": kept_index,
        "index_from_file": index_from_file,
        "kept_index_s": kept_index_s,
        "index_load_stall_max_ms": round(index_load_stall_ms, 1),
        "index_save_s": index_save_s,
        "index_save_stall_max_ms": index_save_stall_ms,
        "poll_s": round(poll_s, 3),
        "papers_per_s": round(papers / poll_s, 1) if poll_s else 0.0,
        "poll_cpu_s": round(poll_cpu_s, 3),
        "match_cpu_s": round(match_cpu_s, 2),
        "thread_cpu_s": dict(sorted(thread_cpu_s.items(), key=lambda kv: -kv[1])),
        "loop_stall_max_ms": round(watch.max_ms(), 1),
        "loop_stall_p99_ms": round(watch.percentile_ms(0.99), 1),
        "stalls_over_250ms": len(watch.stalls),
        "commands": len(pinger.acks),
        "ack_p50_ms": round(statistics.median(acks), 1) if acks else None,
        "ack_max_ms": round(max(acks), 1) if acks else None,
        "acks_over_3s": sum(a > SLACK_ACK_LIMIT * 1000 for a in acks),
        "acks_failed": len(pinger.acks) - len(acks),
        "replies": len(reply_ms),
        "reply_p50_ms": round(statistics.median(reply_ms), 1) if reply_ms else None,
        "reply_max_ms": round(max(reply_ms), 1) if reply_ms else None,
        "poll_split_s": {k: round(v, 2) for k, v in split.items()},
        "write_split_s": {k: round(v, 2) for k, v in write_split.items()},
        "full_collections_during_poll": len(collections),
        "full_collection_max_ms": round(max(collections, default=0.0) * 1000, 1),
        **stall_profile(watch.profile_seconds()),
        "fill_s": round(fill_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_peak_rss_mb": [round(rss, 1) for rss in workers_rss],
        "worker_poll_cpu_s": [round(cpu - before, 2) for cpu, before in zip(workers_cpu, cpu_before, strict=True)],
        **{f"workload_{key}": value for key, value in workload.info.items() if not isinstance(value, dict)},
        **(swept if sweep else {}),
    }


async def sweep_during(app: App, swept: dict[str, int]) -> None:
    """Delivery sweeps one after another (a short pause between), until cancelled."""
    while True:
        swept["sweeps"] += 1
        await app.deliver()
        await asyncio.sleep(0.1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=1000)
    parser.add_argument("--workload", choices=WORKLOADS, default="real")
    parser.add_argument("--history", type=int, default=1000, help="papers stored before the poll")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="seconds; the GIL's switch interval during the run (the bot's `run`: 0.001, "
                             "bot.app.SWITCH_INTERVAL; Python's default: 0.005); unset: the stall profile's 0.0001")
    parser.add_argument("--enqueue-rows", type=int, default=None,
                        help="deliveries a transaction of the poller's writer thread (default: Poller.ENQUEUE_ROWS)")
    parser.add_argument("--match-processes", type=int, default=1,
                        help="[matching] processes: >1 splits the index over that many worker processes")
    parser.add_argument("--match-worker", action="store_true",
                        help="[matching] worker_process = true: the whole index in one worker process, "
                             "pipelined with the poll (with --match-processes 1)")
    parser.add_argument("--match-ahead", type=int, default=None,
                        help="batches sent to the matching worker process(es) before the oldest is gathered "
                             "(default: Poller.MATCH_AHEAD)")
    parser.add_argument("--kept-index", action="store_true",
                        help="the first load reads the index kept by an earlier run (made before the bot starts)")
    parser.add_argument("--sweep", action="store_true",
                        help="delivery sweeps to the fake Slack all through the poll (sweeps, sweep_sent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    workload = make_workload(args.workload, subscriptions=args.subscriptions, papers=args.papers, seed=args.seed,
                             history=args.history)
    print(f"workload {workload.name}: {len(workload.queries)} subscriptions, {len(workload.papers)} papers, "
          f"made in {time.perf_counter() - started:.1f}s; {workload.info}", file=sys.stderr)
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="papers-bot-bench-pipeline-") as directory:
        figures = asyncio.run(measure(workload, Path(directory), free_port(), args.match_processes,
                                     args.switch_interval, args.enqueue_rows, args.sweep, args.kept_index,
                                     args.match_worker, args.match_ahead))
    figures["switch_interval"] = args.switch_interval
    figures["enqueue_rows"] = args.enqueue_rows or Poller.ENQUEUE_ROWS
    figures["group_rows"] = Poller.GROUP_ROWS  # matches gathered, then split by channels (Poller._submit)
    figures["seed"] = args.seed
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
