"""Wiring: build the store, HTTP client, sources, poller, dispatcher and adapters from a Config."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import sys
import tempfile
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Awaitable, Callable, TextIO, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import schedule

import handlers
from storage import StoreContract, open_store

from .adapters import Adapter, Running, build_adapters
from .clock import utcnow
from .config import Config
from .dispatch import Dispatcher, DispatchReport
from .enrich import CategoryFiller
from .errors import StorageError
from .lookup import PaperLookup
from .models import ChannelRef, CommandRequest, Reply
from .most_saved import dispatch_most_saved
from .poller import Poller, SourceReport
from .sources import ArxivSource, Source, connect, make_client
from .sources.arxiv import NAME as ARXIV
from .text import plural

log = logging.getLogger(__name__)

RETRY_FIRST = 30.0  # seconds before the first retry of a failing source
# Shutdown is bounded: SIGTERM must end the process within 5 s, whatever hangs.
TASKS_STOP_SECONDS = 1.0  # cancelled polls and sweeps
FRONTEND_STOP_SECONDS = 2.0  # each front-end's Running.close(), all at once
CLOSE_SECONDS = 0.5  # each adapter, the HTTP client
FRONTEND_START_SECONDS = 10.0  # start functions return at once; this only catches one that does not

T = TypeVar("T")
FILE_CHECK_SECONDS = 2  # how often `run` checks that its database file is still the one it opened

# `papers-bot run --role`: what one process does. `all` is everything (one process serves it all);
# the others split it over processes sharing one database (docs/architecture.md, "Roles").
ROLES = ("all", "poller", "deliverer", "frontend")
POLLS = {"all", "poller"}  # poll the sources, match, queue (a poller once elected)
SENDS = {"all", "deliverer"}  # sweep the outbox: cards, digests, follow-ups, most-saved
SERVES = {"all", "frontend"}  # the platforms' front-ends: commands, buttons, modals, unfurls
# The loop's worker threads (asyncio.to_thread: the rate limit's count, plans, searches...),
# all started before the first command: asyncio's default executor starts one on demand,
# on the loop, which then waits for the new thread to get a CPU and the GIL (a 1.2 s stall
# in bench.pipeline, on a busy machine, while the matcher held the GIL).
WORKER_THREADS = min(32, (os.cpu_count() or 1) + 4)  # as many as asyncio's default executor would start
WORKER_THREADS_START_SECONDS = 10.0
# The GIL's switch interval while `run` runs (Python's default: 5 ms). The loop gives the GIL
# up at every socket call and SQLite step, and while the poller's worker matches (pure
# Python) each one waits up to the interval to get it back: a command's step that makes 20
# such calls stood still up to 100 ms. At 1 ms the zipf pipeline's longest stall went from
# 55 to 31 ms (median of runs) for the same CPU (docs/benchmarks.md, branch `stall`).
SWITCH_INTERVAL = 0.001
ELECT_SECONDS = 5.0  # a standby poller asks for the poller's lease this often (at most its shortest interval)


def beside_database(config: Config) -> str | None:
    """The SQLite file's path, which the bot's own files beside it begin with; None for
    PostgreSQL (no file of the bot's own) and an in-memory database."""
    if config.storage_url or config.storage_path in ("", ":memory:") or config.storage_path.startswith("file:"):
        return None
    return config.storage_path


def pacing_files(config: Config) -> str | None:
    """Where the files that pace a source's requests across this machine's processes on this
    database begin (bot.sources.connect): beside the SQLite file; for PostgreSQL, in the
    temporary directory, named by this user and a digest of the database's URL (the
    processes of several roles on one machine: README, "Roles"); None for a database in
    memory (or SQLite's private temporary one, ""), which no other process opens."""
    path = beside_database(config)
    if path is not None:
        return path
    if not config.storage_url and (config.storage_path in ("", ":memory:") or "mode=memory" in config.storage_path):
        return None
    digest = hashlib.sha256(_without_password(config.storage_target).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"papers-bot-{os.getuid() if hasattr(os, 'getuid') else 0}-{digest}")


def _without_password(url: str) -> str:
    """A database URL without its password (in the user part or a `password=` parameter):
    what names its pacing file, in a directory every user lists."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, host = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}@{host}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL urllib reads: no name of its own (one file for all such)
        return ""


def index_cache_path(config: Config) -> Path | None:
    """Where the poller keeps its built index between runs (bot/index_cache.py): beside the
    SQLite file (`beside_database`)."""
    path = beside_database(config)
    return None if path is None else Path(path + ".index")


class App:
    def __init__(
        self,
        config: Config,
        *,
        stdout: TextIO | None = None,
        clock: Callable[[], datetime] = utcnow,
        adapters: dict[str, Adapter] | None = None,
        role: str = "all",
    ):
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        self.config = config
        self.clock = clock
        self.role = role
        # Whether this process polls: always for `all`; a poller once it holds the poller's lease.
        self.polling = role == "all"
        self.store: StoreContract = open_store(config.storage_target, busy_timeout=config.storage_busy_timeout)
        self.http = make_client(config.http_timeout)
        # One fetcher per registered source, shared by polls and lookups (so arXiv's one
        # request every 3 s holds for both, and with a pacing file beside the SQLite database,
        # for every process on it); the enabled ones are polled.
        fetchers = connect(self.http, config.sources, config.max_response_bytes, pacing_files(config))
        self.sources: list[Source] = [fetchers[name] for name, cfg in config.sources.items() if cfg.enabled]
        if adapters is None:
            adapters = build_adapters(config, stdout=stdout, complete=self.complete, installations=self.store)
        self.adapters: dict[str, Adapter] = adapters
        self._frontends: list[Running] = []  # what run started: servers, sockets, the gateway
        # arXiv's categories for papers listed without (Hugging Face's), while the arXiv source is
        # enabled: through its one fetcher, and so its one 3-second pacer.
        from .recommend import Recommender  # numpy and scipy: only for the running bot

        recommender = Recommender(per_day=config.recommend.per_day, refit_hours=config.recommend.refit_hours,
                                  fit_papers=config.recommend.fit_papers)
        arxiv = fetchers.get(ARXIV)
        filler = CategoryFiller(arxiv, self.store) if isinstance(arxiv, ArxivSource) and config.sources[ARXIV].enabled \
            else None
        self.poller = Poller(self.store, clock, max_age_days=config.delivery.max_age_days,
                             match_processes=config.match_processes, match_worker=config.match_worker,
                             open_store=lambda: open_store(config.storage_target,
                                                           busy_timeout=config.storage_busy_timeout, durable=False),
                             complete=filler.complete if filler else None, recommender=recommender,
                             index_cache=index_cache_path(config))
        self.dispatcher = Dispatcher(self.store, self.adapters, clock, cards_per_cycle=config.delivery.cards_per_cycle,
                                     max_concurrent_channels=config.delivery.max_concurrent_channels)
        self.lookup = PaperLookup(list(fetchers.values()))
        self.context = handlers.Context(self.store, config, clock, lookup=self.lookup, recommender=recommender)
        self._recovered = False
        # One sweep at a time in a process: the schedule's ticks, the sweep after each poll and
        # a command's sending all call deliver(); overlapping sweeps served more channels at once
        # than [delivery] max_concurrent_channels, and two sweeps could serve one channel (one
        # releasing its lease while the other still sent). A call while a sweep runs waits for
        # it and then sweeps; a third while one already waits returns at once (the waiting
        # sweep will see what it would have).
        self._sweeping = asyncio.Lock()
        self._most_saved_waits: dict[ChannelRef, datetime] = {}  # a most-saved post to retry: not before
        self._sweep_waiting = False

    async def start_threads(self) -> None:
        """The running loop's worker threads, all started now (`start_worker_threads`)."""
        await start_worker_threads()

    async def start_frontends(self) -> None:
        """Start the metrics server and each adapter's front-end (Adapter.start), only in `run`.

        Each start returns a Running at once (or None: nothing to start): connecting, reconnecting with backoff and
        giving up on a refused token happen in a background task it owns. One that fails or
        hangs anyway is logged and left off; the others still start. The loop's worker threads
        are started first (`start_threads`), before any command can come.
        """
        await self.start_threads()
        if self.config.metrics_port:
            from .health import start_metrics

            polling = (lambda: self.polling) if self.role == "poller" else None
            runner = await self._start("the metrics server",
                                       start_metrics(self.store, self.config, self.config.metrics_port,
                                                     faults=self.poller.faults, role=self.role, polling=polling))
            if runner is not None:
                self._frontends.append(Running(runner.cleanup))
                log.info("health and metrics on port %d: /healthz, /metrics", self.config.metrics_port)
        if self.role not in SERVES:
            return  # a poller or a deliverer: posting over the platforms' REST APIs only
        for adapter in self.adapters.values():
            frontend = await self._start(adapter.platform.capitalize(), adapter.start(self.handle_command))
            if frontend is not None:
                self._frontends.append(frontend)

    @staticmethod
    async def _start(name: str, start: Awaitable[T]) -> T | None:
        try:
            return await within(start, FRONTEND_START_SECONDS)
        except asyncio.TimeoutError:
            log.error("%s did not start within %gs: it is off; polling and posting go on", name,
                      FRONTEND_START_SECONDS)
        except Exception as exc:  # one front-end must never stop the others, or polling
            log.error("%s could not start (%s: %s): it is off; polling and posting go on", name,
                      type(exc).__name__, exc)
        return None

    async def stop_frontends(self) -> None:
        """Stop every front-end, all at once; none may take more than FRONTEND_STOP_SECONDS."""
        frontends, self._frontends = self._frontends, []
        results = await asyncio.gather(*(within(f.close(), FRONTEND_STOP_SECONDS) for f in frontends),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, asyncio.TimeoutError):
                log.warning("a front-end did not stop within %gs; leaving it", FRONTEND_STOP_SECONDS)
            elif isinstance(result, BaseException):  # shutting down: report, keep going
                log.error("stopping a front-end failed (%s: %s)", type(result).__name__, result)

    def interval(self, source: Source) -> float:
        return self.config.sources[source.name].interval_minutes * 60

    async def handle_command(self, request: CommandRequest) -> Reply:
        """Run a /papers command; what it queued (a backfill, a resume) is sent right away.

        The command is done once its reply is made: sending what it queued is a bonus, and
        when that fails (a busy database, a platform down) the next sweep sends it."""
        reply = await handlers.handle(self.context, request)
        if reply.queued and self.role in SENDS:  # a front-end leaves it to the deliverers' next sweep
            try:
                await self.deliver()
            except StorageError as exc:
                log.warning("sending what the command queued waits for the next sweep: %s", exc)
            except Exception:
                log.exception("sending what the command queued failed; the next sweep sends it")
        return reply

    def complete(self, channel: ChannelRef, verb: str, param: str, typed: str) -> list[tuple[str, str]]:
        """Suggestions while a command's parameter is typed (Discord's autocomplete)."""
        return handlers.complete(self.context, channel, verb, param, typed)

    async def deliver(self) -> DispatchReport:
        """Send what is due: instant cards, then digests (after settling a crash's leftovers).

        Leftovers are settled by the process holding the sender lease, once, and then by
        whoever delivers, as deliverers die (each one's claims name it; `Store.adopt_orphans`):
        rows another live process (`run`, a deliverer, a `papers-bot command`) is sending are its own.
        One sweep at a time (see __init__): a call while one runs waits for it and sweeps after;
        a call while another already waits returns an empty report at once."""
        if self._sweeping.locked():
            if self._sweep_waiting:
                return DispatchReport()
            self._sweep_waiting = True
            try:
                await self._sweeping.acquire()
            finally:
                self._sweep_waiting = False
        else:
            await self._sweeping.acquire()
        try:
            return await self._sweep()
        finally:
            self._sweeping.release()

    async def _sweep(self) -> DispatchReport:
        if not self._recovered and self.store.hold_sender_lease():
            self._recovered = True
            await self.dispatcher.recover()
        else:
            await self.dispatcher.recover_orphans()
        report = await self.dispatcher.dispatch()
        report.add(await self.dispatcher.dispatch_digests())
        report.add(await self.dispatcher.dispatch_followups())
        await dispatch_most_saved(self.store, self.adapters, self.clock(), self.config.feedback.most_saved_papers,
                                  self._most_saved_waits)
        return report

    async def index_preview_backlog(self) -> int:
        """Index, in the background, the papers stored before preview's word index existed
        (after an upgrade that rebuilt it: every stored paper), newest first, in short
        transactions in a worker thread with its own connection; how many it indexed.
        Meanwhile preview reads the papers not reached yet as they are (slower, still
        right); no user's command waits for this. Cancelled (the bot is stopping), it stops
        after the transaction under way, and the next start goes on from there."""
        if not self.store.reads_off_loop():  # an in-memory store: one connection, on the loop
            return self.store.index_paper_words(backlog=True)
        stop = threading.Event()
        try:
            done = await asyncio.to_thread(self.store.index_paper_words, stop.is_set, backlog=True)
        except StorageError as exc:  # previews read the rest as it is; the next start goes on
            log.warning("indexing stored papers for preview failed: %s", exc)
            return 0
        finally:
            stop.set()
        if done:
            log.info("indexed %s for preview", plural(done, "stored paper"))
        return done

    def may_poll(self) -> bool:
        """Whether this process polls now: `all` always; a poller once it holds the poller's
        lease (asked here until it does: the holder dies, this one takes over)."""
        if self.polling or self.role != "poller":
            return self.polling
        if self.store.hold_poller_lease():
            self.polling = True
            log.warning("this process (pid %d) is the poller now: it polls %s", os.getpid(),
                        ", ".join(s.name for s in self.sources) or "nothing (every source is disabled)")
        return self.polling

    async def poll_once(self) -> tuple[list[SourceReport], DispatchReport]:
        """One full cycle: every enabled source, then the outbox; then the index is kept if
        it is due (bot/index_cache.py: the next run loads it)."""
        reports = []
        for source in self.sources:
            report = await self.poller.poll(source)
            await self.notify(report)
            reports.append(report)
        delivered = await self.deliver()
        await self.poller.keep_index()
        return reports, delivered

    async def notify(self, report: SourceReport) -> None:
        """Tell the admin channel once when a source keeps failing, and once when it recovers."""
        cfg = self.config.delivery
        if not cfg.admin_channel:
            return
        if not report.ok and report.failures == cfg.source_failure_notice_after:
            text = (f"papers-bot: {report.source} has failed {plural(report.failures, 'time')} in a row "
                    f"(last error: {report.error}). Papers from it will arrive when it recovers.")
        elif report.ok and report.recovered_after >= cfg.source_failure_notice_after:
            text = f"papers-bot: {report.source} works again, after {plural(report.recovered_after, 'failed poll')}."
        else:
            return
        channel = ChannelRef.parse(cfg.admin_channel)
        adapter = self.adapters.get(channel.platform)
        if adapter is None:
            log.warning("no %s adapter for the admin channel %s: %s", channel.platform, channel, text)
            return
        try:
            result = await adapter.post_text(channel, text)
        except Exception:
            log.exception("the admin notice to %s failed", channel)
            return
        if not result.ok:
            log.warning("the admin notice to %s failed: %s", channel, result.error)

    async def aclose(self) -> None:
        """Close adapters, the HTTP client and the store; no step may hang (shutdown is bounded)."""
        try:  # all at once: CLOSE_SECONDS in total, whatever the number of adapters
            closing = [_bounded(adapter.close(), CLOSE_SECONDS, f"closing the {adapter.platform} adapter")
                       for adapter in self.adapters.values()]
            await asyncio.gather(*closing, _bounded(self.http.aclose(), CLOSE_SECONDS, "closing the HTTP client"))
        finally:
            self.poller.close()
            self.store.close()

    async def run(self, stop: asyncio.Event, tick: float = 1.0) -> None:
        """Poll each source on its interval and deliver, until `stop` is set.

        The front-ends start beside the polling, never before it: nothing waits for them.
        The loop's worker threads start before either (`start_threads`), and the GIL's switch
        interval is SWITCH_INTERVAL until it returns.
        """
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            await self.start_threads()
            await self._run(stop, tick)
        finally:
            sys.setswitchinterval(switch_interval)

    async def _run(self, stop: asyncio.Event, tick: float) -> None:
        starting = asyncio.get_running_loop().create_task(self.start_frontends())
        try:
            await _Runner(self).run(stop, tick)
        finally:
            starting.cancel()
            await asyncio.wait([starting], timeout=CLOSE_SECONDS)
            if starting.done() and not starting.cancelled() and starting.exception() is not None:
                log.error("starting the front-ends failed: %s", starting.exception())
            await self.stop_frontends()


_loops_with_threads: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


async def start_worker_threads() -> None:
    """Make the running loop's default executor (asyncio.to_thread's) WORKER_THREADS threads,
    all started now, so that no call on the loop ever starts one. Once per loop; asyncio.run
    shuts the executor down with the loop."""
    loop = asyncio.get_running_loop()
    if loop in _loops_with_threads:
        return
    _loops_with_threads.add(loop)
    threads = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="papers-bot-worker")
    loop.set_default_executor(threads)
    # Each waits for all the others: every one is on a thread of its own, so all start.
    together = threading.Barrier(WORKER_THREADS)
    try:
        await asyncio.gather(*(loop.run_in_executor(threads, together.wait, WORKER_THREADS_START_SECONDS)
                               for _ in range(WORKER_THREADS)))
    except threading.BrokenBarrierError:  # a very busy machine: the others start when first needed
        log.warning("not every worker thread started within %gs; the others start when needed",
                    WORKER_THREADS_START_SECONDS)


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """`awaitable`'s result, or TimeoutError after `seconds`; a hard bound.

    asyncio.wait_for is not one: on timeout it cancels and then waits for the cancellation to
    finish, forever if the awaited code swallows it. Here what ignores its cancel is left behind.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError
    return task.result()


async def _bounded(awaitable: Awaitable, seconds: float, what: str) -> None:
    try:
        await within(awaitable, seconds)
    except asyncio.TimeoutError:
        log.warning("%s took over %gs; going on without it", what, seconds)
    except Exception as exc:  # shutting down: report, keep going
        log.error("%s failed (%s: %s)", what, type(exc).__name__, exc)


class _Runner:
    """The long-running loop: `schedule` ticked from the event loop, one task per poll."""

    def __init__(self, app: App):
        self.app = app
        self.scheduler = schedule.Scheduler()
        self.running: dict[str, asyncio.Task] = {}
        self.retry_at: dict[str, datetime] = {}
        self.tasks: set[asyncio.Task] = set()
        self.fatal: StorageError | None = None  # why run stopped by itself

    async def run(self, stop: asyncio.Event, tick: float) -> None:
        role = self.app.role
        polls = role in POLLS
        if polls:
            # schedule's hints say every(int); it takes float seconds, as these intervals are.
            for source in self.app.sources:
                every = self.app.interval(source)
                self.scheduler.every(every).seconds.do(self._safe, self._start_poll, source)  # type: ignore[arg-type]  # float ok
            self.scheduler.every(5).seconds.do(self._safe, self._retry_due)
        if role == "poller":  # a standby asks for the lease at least once a poll interval
            elect = min([ELECT_SECONDS] + [self.app.interval(source) for source in self.app.sources])
            self.scheduler.every(max(elect, 1.0)).seconds.do(self._safe, self._elect)  # type: ignore[arg-type]  # float ok
        if role in SENDS:
            sweep = self.app.config.delivery.sweep_seconds
            self.scheduler.every(sweep).seconds.do(self._safe, self._start_dispatch)  # type: ignore[arg-type]  # float ok
        self.scheduler.every(FILE_CHECK_SECONDS).seconds.do(self._check_file, stop)
        if polls and not self.app.sources:
            log.warning("every source is disabled in the config: nothing will be polled")
        if polls:
            self._spawn(self.app.index_preview_backlog())  # after an upgrade: the stored papers, in slices
        if role == "poller" and not self.app.may_poll():
            log.warning("another process polls (it holds the poller's lease); this one stands by and takes over "
                        "when that one stops")
        for source in self.app.sources if polls else ():
            self._start_poll(source)
        if role in SENDS and not polls:
            self._start_dispatch()  # a deliverer starts with what is due
        while not stop.is_set():
            self.scheduler.run_pending()
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
            except asyncio.TimeoutError:
                pass
        await self._cancel_tasks()
        if self.fatal is not None:
            raise self.fatal

    async def _cancel_tasks(self) -> None:
        """Cancel the polls and sweeps still running; wait for them TASKS_STOP_SECONDS at most."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=TASKS_STOP_SECONDS)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed while stopping: %s", task.get_name(), task.exception())
        if pending:
            log.warning("%d polls or deliveries did not stop within %gs; leaving them", len(pending),
                        TASKS_STOP_SECONDS)

    def _check_file(self, stop: asyncio.Event) -> None:
        """Stop (with the reason) if the database file was deleted or replaced under the bot."""
        try:
            self.app.store.check_file()
        except StorageError as exc:  # raised by run() once stopped; the command line prints it
            self.fatal = exc
            stop.set()

    @staticmethod
    def _safe(job: Callable, *args) -> None:
        # A failing job must never stop schedule's run_pending() for the others.
        try:
            job(*args)
        except Exception:
            log.exception("scheduled job %s failed", getattr(job, "__name__", job))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _elect(self) -> None:
        """A standby poller: once it holds the poller's lease, it polls every source at once."""
        if self.app.polling:
            return
        if self.app.may_poll():
            for source in self.app.sources:
                self._start_poll(source)

    def _start_poll(self, source: Source) -> None:
        if not self.app.may_poll():
            return  # a standby poller
        if source.name in self.running and not self.running[source.name].done():
            return  # still polling: skip this tick rather than pile up requests
        if source.name in self.retry_at and self.retry_at[source.name] > self.app.clock():
            return  # backing off after a failure; _retry_due will start it
        self.running[source.name] = self._spawn(self._poll(source))

    def _retry_due(self) -> None:
        now = self.app.clock()
        for source in self.app.sources:
            due = self.retry_at.get(source.name)
            if due is not None and due <= now:
                del self.retry_at[source.name]
                self._start_poll(source)

    def _start_dispatch(self) -> None:
        self._spawn(self._dispatch())

    async def _poll(self, source: Source) -> None:
        report = await self.app.poller.poll(source)
        await self.app.notify(report)
        if report.ok:
            self.retry_at.pop(source.name, None)
            log.info(report.line())
            # The next scheduled run of this source (schedule counts in naive local time).
            job = next((j for j in self.scheduler.jobs if source in getattr(j.job_func, "args", ())), None)
            wait = ((job.next_run - datetime.now()).total_seconds() if job and job.next_run
                    else self.app.interval(source))
            next_poll = self.app.clock() + timedelta(seconds=max(wait, 0.0))
        else:
            delay = backoff_seconds(report.failures, self.app.interval(source))
            next_poll = self.retry_at[source.name] = self.app.clock() + timedelta(seconds=delay)
            log.warning("%s: poll failed (%d in a row); retrying in %.0fs", source.name, report.failures, delay)
        try:  # for `status`: the real next attempt, a retry after a failure being sooner than the interval
            self.app.store.set_source_next_poll(source.name, next_poll)
        except Exception as exc:  # the database may be what failed the poll
            log.warning("%s: could not record the next poll time (%s)", source.name, str(exc)[:200])
        if self.app.role in SENDS:  # a poller leaves the sending to the deliverers
            await self._dispatch()

    async def _dispatch(self) -> None:
        try:
            report = await self.app.deliver()
        except StorageError as exc:  # busy or broken database: one line; the next sweep tries again
            log.warning("delivery sweep: %s", exc)
            return
        except Exception:
            log.exception("delivery sweep failed")
            return
        if report.sent or report.failed or report.retrying:
            log.info(report.line())


def backoff_seconds(failures: int, interval: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter, never longer than the source's own interval."""
    base = min(RETRY_FIRST * 2 ** max(failures - 1, 0), interval)
    return base * (rng or random).uniform(0.8, 1.2)
