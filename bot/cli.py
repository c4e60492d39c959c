"""The command line: `papers-bot run | poll | command`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Coroutine, Sequence, TextIO

import handlers
from storage import open_store

from .adapters.console import render_reply
from .app import ROLES, App, pacing_files
from .clock import utcnow
from .config import Config, ConfigError, load_config
from .errors import ImportFileError, StorageError
from .loopwatch import start_watchdog, watchdog_threshold_ms
from .models import ChannelRef, CommandRequest
from .sources import connect, make_client

log = logging.getLogger("bot")


class RedactSecrets(logging.Filter):
    """Defence in depth: a token that reaches a log line anyway is replaced by [redacted].

    The environment's secrets by value, and any Slack token by its shape (with Slack
    distribution the workspaces' tokens come from the database, and slack_sdk's debug lines
    show oauth.v2.access's answer); so are the credentials in the addresses a request
    brings, which slack_sdk and discord.py name in their debug lines: a Slack response_url's
    last part, a Discord interaction's (or webhook's) token, and any "token" field of a
    payload they log."""

    def __init__(self, secrets: Sequence[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        if self.secrets and any(s in redacted for s in self.secrets):
            for secret in self.secrets:
                redacted = redacted.replace(secret, "[redacted]")
        if "xox" in redacted:
            redacted = _SLACK_TOKEN.sub("[redacted]", redacted)
        if "/commands/" in redacted or "/actions/" in redacted or "/interactions/" in redacted \
                or "/webhooks/" in redacted:
            redacted = _URL_TOKEN.sub(r"\1[redacted]", redacted)
        if "token" in redacted:  # a payload's "token" field (discord.py logs each gateway event at debug)
            redacted = _TOKEN_FIELD.sub(r"\1[redacted]", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_SLACK_TOKEN = re.compile(r"xox[a-z]-[A-Za-z0-9-]+|xoxe\.xox[a-z]-[A-Za-z0-9-]+")
# .../commands/T123/456/SECRET and .../actions/T123/456/SECRET (Slack's response_url);
# .../interactions/ID/TOKEN/callback and .../webhooks/APP_ID/TOKEN (Discord's interaction replies).
_URL_TOKEN = re.compile(r"(/(?:commands|actions)/[A-Z0-9]+/[0-9]+/|/(?:interactions|webhooks)/[0-9]+/)"
                        r"[^/\s?#\"',]+")
_TOKEN_FIELD = re.compile(r"""(['"][a-z_]*token['"]\s*:\s*['"])[^'"]+""")


def setup_logging(config: Config, verbose: bool, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactSecrets(list(config.secrets.values.values())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("DEBUG" if verbose else config.log_level)
    # httpx logs every request at INFO; keep that for -v.
    logging.getLogger("httpx").setLevel("DEBUG" if verbose else "WARNING")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="papers-bot",
                                     description="New ML papers from Hugging Face and arXiv, in chat.")
    parser.add_argument("--config", metavar="PATH",
                        help="TOML config file (default: $PAPERS_BOT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="action", metavar="{run,poll,command,status,backfill,export,import}")
    run = sub.add_parser("run", help="poll every source on its interval and deliver, until Ctrl-C")
    run.add_argument("--role", choices=ROLES, default="all",
                     help="what this process does (default: all). poller: polls, matches and queues (one at a "
                          "time: the others stand by); deliverer: sends the outbox, digests and follow-ups "
                          "(any number); frontend: the Slack and Discord front-ends (commands, buttons, modals, "
                          "unfurls; any number)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve /healthz and /metrics on PORT instead of [metrics] port (0: none); "
                          "one port a process, when several run on one host")
    sub.add_parser("poll", help="one full cycle (every source, then deliveries), then exit")
    cmd = sub.add_parser("command", help="run one /papers command and print the reply")
    cmd.add_argument("--channel", required=True, help="console:NAME, slack:CHANNEL_ID or discord:CHANNEL_ID")
    cmd.add_argument("--user", required=True, help="the user id the command is run as")
    # The rest of the line, its own options included: `... --user me list --me` is the command
    # `list --me` (with nargs="+", argparse took --me for an option of its own and refused it).
    cmd.add_argument("text", nargs=argparse.REMAINDER, help='the command, e.g. "subscribe diffusion"')
    sub.add_parser("status", help="sources' health, the delivery queue, and every channel")
    fill = sub.add_parser("backfill",
                          help="store the past N days of listings (for search and estimates; nothing is posted)")
    fill.add_argument("--days", type=int, required=True, help="how many days back, 1 to 90")
    export = sub.add_parser("export", help="print every channel's settings and subscriptions as TOML")
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    load = sub.add_parser("import", help="load an export: adds missing subscriptions, updates settings")
    load.add_argument("file", metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except StorageError as exc:  # a database that cannot be used: one line naming the file, what to do
        print(f"papers-bot: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found once the database is open (Slack distribution's token key): one line
        print(f"papers-bot: config error: {exc}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.action:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"papers-bot: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config, args.verbose)
    if args.action == "command":
        try:
            channel = ChannelRef.parse(args.channel)
        except ValueError as exc:
            print(f"papers-bot: {exc}", file=sys.stderr)
            return 2
        text = args.text[1:] if args.text[:1] == ["--"] else args.text
        if not text:
            print('papers-bot: command: give the command after --channel and --user, e.g. "subscribe diffusion"',
                  file=sys.stderr)
            return 2
        request = handlers.request_from_text(channel, args.user, " ".join(text))
        return _interruptible(_command(config, request))
    if args.action == "poll":
        return _interruptible(_poll(config))
    if args.action == "status":
        return _status(config)
    if args.action == "backfill":
        if not 1 <= args.days <= 90:
            print("papers-bot: --days must be from 1 to 90", file=sys.stderr)
            return 2
        return _interruptible(_backfill(config, args.days))
    if args.action == "export":
        return _export(config, args.output)
    if args.action == "import":
        return _interruptible(_import(config, args.file))
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            print("papers-bot: --metrics-port must be from 0 to 65535", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, metrics_port=args.metrics_port)
    return _run(config, args.role, debug=args.verbose)


def console_main(argv: Sequence[str] | None = None) -> int:
    """The `papers-bot` entry point: `main`, quiet when the reader of its output goes away.

    `papers-bot command ... list | head -1` closes the pipe early; that is not an error
    worth a traceback. Python's recipe: stop writing to stdout (point it at /dev/null, so
    the flush at exit cannot fail again) and exit as a Unix tool killed by SIGPIPE does.
    """
    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows on the final flush as often as on a print
        return code
    except BrokenPipeError:
        log.debug("standard output was closed by its reader", exc_info=True)  # with -v, in case it was not stdout
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + getattr(signal, "SIGPIPE", 13)


async def _backfill(config: Config, days: int) -> int:
    from .admin import backfill

    store = open_store(config.storage_target, busy_timeout=config.storage_busy_timeout)
    try:
        async with make_client(config.http_timeout) as client:
            now = utcnow()
            fetchers = connect(client, config.sources, config.max_response_bytes, pacing_files(config))
            enabled = [fetchers[name] for name, cfg in config.sources.items() if cfg.enabled]
            report = await backfill(store, enabled, days=days, today=now.date(), now=now)
    finally:
        store.close()
    print("\n".join(report.lines()))
    return 1 if report.failed else 0  # a day that failed is a failed backfill (exit 1), each named above


def _status(config: Config) -> int:
    import handlers
    from handlers.channel import bot_status

    store = open_store(config.storage_target, busy_timeout=config.storage_busy_timeout)
    try:
        print(bot_status(handlers.Context(store, config)))
    finally:
        store.close()
    return 0


def _export(config: Config, output: str | None) -> int:
    from .admin import export_toml

    store = open_store(config.storage_target, busy_timeout=config.storage_busy_timeout)
    try:
        text = export_toml(store, utcnow())
    finally:
        store.close()
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


async def _import(config: Config, path: str) -> int:
    from .admin import import_toml, look_up_examples
    from .lookup import PaperLookup

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        print(f"papers-bot: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    store = open_store(config.storage_target, busy_timeout=config.storage_busy_timeout)
    try:
        # like: examples the store lacks are looked up (and stored) as `subscribe` does; one no
        # source knows stops the import, as it stops `subscribe`.
        async with make_client(config.http_timeout) as client:
            lookup = PaperLookup(list(connect(client, config.sources, config.max_response_bytes,
                                                 pacing_files(config)).values()))
            await look_up_examples(store, text, lookup, utcnow())
        report = import_toml(store, text, utcnow(), limit=config.max_subscriptions_per_channel)
    except ImportFileError as exc:
        print(f"papers-bot: {path}: {exc}; nothing was imported", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(report.line())
    return 0


async def _command(config: Config, request: CommandRequest) -> int:
    app = App(config)
    try:
        reply = await app.handle_command(request)
    finally:
        await app.aclose()
    print(render_reply(reply))
    return 0 if reply.ok else 1


async def _poll(config: Config) -> int:
    if config.match_worker == "auto":
        # One poll, then exit: the index is in this process, read from the kept file and kept
        # for the next run. In a worker process every run would build it anew (at 25,000
        # subscriptions and nothing new: about twice the CPU; docs/benchmarks.md, "review7").
        config = dataclasses.replace(config, match_worker=False)
    app = App(config)
    try:
        reports, delivered = await app.poll_once()
    finally:
        await app.aclose()
    for report in reports:
        print(report.line())
    print(delivered.line())
    # Exit 1 only when nothing could be fetched at all; one source down is a normal day.
    return 1 if reports and not any(r.ok for r in reports) else 0


def _run(config: Config, role: str = "all", *, debug: bool = False) -> int:
    async def run(signals: _Signals) -> None:
        app = App(config, role=role)
        stop = asyncio.Event()
        main_task = asyncio.current_task()
        assert main_task is not None  # inside asyncio.run

        def on_signal(signum: int) -> None:
            if stop.is_set():  # a second Ctrl-C: stop waiting for a clean shutdown
                main_task.cancel()
                return
            stop.set()

        signals.attach(asyncio.get_running_loop(), on_signal)
        # `all` polls whatever happens; it takes the poller's lease when it is free, so that a
        # second `run`, or a `--role poller` (which then stands by), can tell.
        if role == "all" and app.sources and not app.store.hold_poller_lease():
            log.warning("another process polls this database already (a `papers-bot run`, or a `run --role "
                        "poller`: it holds the poller's lease); this one polls too, doing the same work twice "
                        "(nothing is posted twice). Stop one of them (README: \"Cooperating processes\")")
        names = ", ".join(s.name for s in app.sources) or "none"
        if role == "all":
            log.info("papers-bot running: sources %s; adapters %s; database %s; Ctrl-C stops",
                     names, ", ".join(app.adapters), app.store.path)
        else:
            log.info("papers-bot running as %s (pid %d, sender %s): sources %s; adapters %s; database %s; "
                     "Ctrl-C stops", role, os.getpid(), app.store.sender_id, names, ", ".join(app.adapters),
                     app.store.path)
        watchdog = start_watchdog(watchdog_threshold_ms(config.loop_watchdog_ms, debug or config.log_level == "DEBUG"))
        try:
            await app.run(stop)
        finally:
            if watchdog is not None:
                watchdog.stop()
            await app.aclose()

    with _Signals() as signals:
        try:
            asyncio.run(run(signals))
        except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C during shutdown
            pass
    log.info("stopped")
    return 0


# After SIGTERM or Ctrl-C every wait is bounded (see App.run); should something hang anyway
# (a thread, a blocked call), the process still ends this many seconds after the signal.
SHUTDOWN_SECONDS = 4.5


def _exit_anyway_after(seconds: float) -> None:
    def expire() -> None:
        log.error("still not stopped %.1fs after the signal: exiting now", seconds)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # exiting regardless
                pass
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _interruptible(coro: Coroutine[Any, Any, int]) -> int:
    """Run a one-shot command (poll, backfill, command); SIGINT or SIGTERM cancels it.

    Its own cleanup runs (the store is closed; what was already stored stays), then one
    "stopped" line and the shell's exit code for the signal (130, 143), without a traceback.
    """
    received: list[int] = []

    async def main(signals: _Signals) -> int:
        task = asyncio.current_task()
        assert task is not None  # inside asyncio.run

        def on_signal(signum: int) -> None:
            received.append(signum)
            task.cancel()

        signals.attach(asyncio.get_running_loop(), on_signal)
        return await coro

    with _Signals() as signals:
        try:
            return asyncio.run(main(signals))
        except (asyncio.CancelledError, KeyboardInterrupt):
            signum = received[0] if received else signal.SIGINT
            log.info("stopped (%s)", signal.Signals(signum).name)
            return 128 + signum


class _Signals:
    """SIGINT and SIGTERM, taken by a thread of their own rather than by the event loop.

    The loop may be stuck for seconds in C (SQLite waiting for another process's write
    lock, up to [storage] busy_timeout_seconds), when neither a loop signal handler nor a
    Python one can run. Blocked in every thread and collected here with sigtimedwait, the
    first signal starts the SHUTDOWN_SECONDS watchdog at once, whatever the loop is doing,
    and each is handed to the loop's handler (or, before there is one, kept for it).
    Without POSIX signal masks (not Linux or macOS) Python's default handling stays.
    """

    SIGNALS = {signal.SIGINT, signal.SIGTERM}

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The loop and its handler, set together by attach().
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[int], object]] | None = None
        self._early: list[int] = []
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: set | None = None

    def __enter__(self) -> _Signals:
        if hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigtimedwait") \
                and threading.current_thread() is threading.main_thread():
            self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
            self._thread = threading.Thread(target=self._wait, name="papers-bot-signals", daemon=True)
            self._thread.start()
        return self

    def attach(self, loop: asyncio.AbstractEventLoop, handler: Callable[[int], object]) -> None:
        with self._lock:
            self._target = (loop, handler)
            early, self._early = self._early, []
        for signum in early:  # came while starting up (opening the database, say)
            loop.call_soon(handler, signum)

    def _wait(self) -> None:
        first = True
        while not self._done.is_set():
            info = signal.sigtimedwait(self.SIGNALS, 0.2)
            if info is None:
                continue
            if first:
                first = False
                _exit_anyway_after(SHUTDOWN_SECONDS)
            with self._lock:
                if self._target is None:
                    self._early.append(info.si_signo)
                    continue
                loop, handler = self._target
            try:
                loop.call_soon_threadsafe(handler, info.si_signo)
            except RuntimeError:  # the loop has closed: stopping already
                pass

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._previous)
