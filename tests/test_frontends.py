"""Front-ends start in the background and never hold up polling, delivery or shutdown.

Slack Socket Mode runs against a protocol-level fake (fakes/socket_mode.py: hello, envelopes,
acks over a real WebSocket, the URL handed out by a fake apps.connections.open). The shutdown
tests run the real `papers-bot` in a subprocess and send it real signals.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import handlers
from bot.adapters import ConsoleAdapter
from bot.adapters.slack_adapter import SlackAdapter, make_web_client, start_slack
from bot.app import App
from bot.cli import main
from bot.config import Secrets, parse_config
from fakes.http import Canned, FakeHTTPServer
from fakes.socket_mode import TICKET, FakeSlackSocketMode, FakeSocketMode, HangingServer, closed_port

from .fakes import fixture, hf_json

ROOT = Path(__file__).resolve().parent.parent
APP_TOKEN = "xapp-1-fake-app-token"
BOT_TOKEN = "xoxb-fake-bot-token"


async def until(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)
    return value


@pytest.fixture
def socket_mode():
    with FakeSocketMode() as fake:
        yield fake


@pytest.fixture
def slack(socket_mode):
    with FakeSlackSocketMode(socket_mode.url) as fake:
        yield fake


def slack_config(tmp_path, slack, **sections):
    data = {"storage": {"path": str(tmp_path / "bot.db")},
            "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False}},
            "slack": {"api_url": slack.api_url}}
    data.update(sections)
    return parse_config(data, Secrets({"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}))


async def start(tmp_path, slack, **timing):
    config = slack_config(tmp_path, slack)
    client = make_web_client(BOT_TOKEN, config.slack.api_url)
    calls = []

    async def on_command(request):
        calls.append(request)
        from bot.models import Reply

        return Reply(f"got {request.text}")

    timing = {"retry_first": 0.05, "retry_max": 0.2, "connect_timeout": 1.0, "check_every": 0.05, **timing}
    running = await start_slack(client, config, on_command, **timing)
    return running, calls


# ---- Socket Mode over the protocol-level fake ---------------------------------------------

async def test_a_slash_command_over_socket_mode_is_acked_and_answered(tmp_path, socket_mode, slack):
    app = App(slack_config(tmp_path, slack), stdout=io.StringIO())
    await app.start_frontends()
    await until(lambda: socket_mode.open_connections == 1)
    opened = slack.called("apps.connections.open")
    assert len(opened) == 1
    assert [h["Authorization"] for m, _, h in slack.calls if m == "apps.connections.open"] == [f"Bearer {APP_TOKEN}"]

    envelope = socket_mode.slash_command("subscribe diffusion", response_url=f"{slack.url}/commands/T111/1/reply1")
    await until(lambda: envelope in socket_mode.acks)
    await until(lambda: slack.called("reply1"))
    reply = slack.called("reply1")[0]
    assert reply["text"].startswith("Subscribed this channel to `diffusion` (#1).")
    assert reply["response_type"] == "ephemeral"
    assert [s.query for s in app.store.subscriptions()] == ["diffusion"]
    assert socket_mode.acks[envelope] == {"envelope_id": envelope}  # the ack carries no payload

    began = time.monotonic()
    await app.stop_frontends()
    assert time.monotonic() - began < 2
    await until(lambda: socket_mode.open_connections == 0)
    await app.aclose()


async def test_a_dropped_connection_and_a_disconnect_request_both_get_a_new_connection(tmp_path, socket_mode, slack):
    running, calls = await start(tmp_path, slack)
    await until(lambda: socket_mode.open_connections == 1)

    socket_mode.drop()  # the server goes away: a fresh URL, a new connection, commands work again
    await until(lambda: socket_mode.connections == 2 and socket_mode.open_connections == 1)
    envelope = socket_mode.slash_command("list", response_url=f"{slack.url}/r/after-drop")
    # The ack and the reply travel separately (WebSocket, response_url): either may land first.
    await until(lambda: slack.called("after-drop") and envelope in socket_mode.acks)
    assert calls[-1].text == "list"

    socket_mode.ask_to_reconnect()  # Slack retiring a connection: move, and keep exactly one
    await until(lambda: socket_mode.connections == 3)
    await asyncio.sleep(0.2)
    assert socket_mode.open_connections == 1
    assert len(slack.called("apps.connections.open")) == 3  # a fresh URL each time
    await running.close()


async def test_while_the_websocket_is_refused_it_retries_with_backoff_and_logs_a_bounded_amount(
        tmp_path, slack, caplog):
    caplog.set_level(logging.DEBUG, logger="bot")
    slack.socket_url = f"ws://127.0.0.1:{closed_port()}/link/?ticket={TICKET}"
    running, _ = await start(tmp_path, slack, retry_first=0.01, retry_max=0.02)
    await until(lambda: len(slack.called("apps.connections.open")) >= 12)
    began = time.monotonic()
    await running.close()
    assert time.monotonic() - began < 1.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("bot")]
    # Once at the first failure, once more at the 10th: never a line per attempt, never a traceback.
    assert len(warnings) == 2, warnings
    assert re.match(r"Slack Socket Mode: cannot reach 127\.0\.0\.1:\d+ \(connection refused\); "
                    r"retrying in 0s \(/papers waits; posting goes on\)$", warnings[0])
    assert "; 10 failures in a row, retrying in" in warnings[1]
    assert "Traceback" not in caplog.text and TICKET not in caplog.text
    calls = len(slack.called("apps.connections.open"))
    await asyncio.sleep(0.1)
    assert len(slack.called("apps.connections.open")) == calls  # closed means stopped


def test_the_backoff_doubles_from_the_first_delay_up_to_the_cap():
    from bot.adapters.slack_adapter import _SocketModeSupervisor

    supervisor = _SocketModeSupervisor(client=None, retry_first=2.0, retry_max=60.0, rng=random.Random(7))
    delays = []
    for failures in range(1, 9):
        supervisor.failures = failures
        delays.append(supervisor.delay())
    for delay, base in zip(delays, [2, 4, 8, 16, 32, 60, 60, 60], strict=True):
        assert 0.8 * base <= delay <= 1.2 * base
    supervisor.failures = 1
    assert supervisor.delay(retry_after=30.0) == 30.0  # Slack's Retry-After wins when longer


@pytest.mark.parametrize("error", ["invalid_auth", "not_allowed_token_type"])
async def test_a_refused_app_token_is_one_error_and_socket_mode_stops(tmp_path, slack, caplog, error):
    slack.script("apps.connections.open", *[(200, {"ok": False, "error": error}, {})] * 5)
    running, _ = await start(tmp_path, slack)
    await until(lambda: "Slack refused the Socket Mode connection" in caplog.text)
    await asyncio.sleep(0.3)  # a few retry periods: none happens
    assert len(slack.called("apps.connections.open")) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"Slack refused the Socket Mode connection: {error} (SLACK_APP_TOKEN must be an app-level "
                      "xapp- token with connections:write). /papers commands are off; posting still works"]
    await running.close()


@pytest.mark.parametrize("server", ["accepts TCP, never answers", "opens the WebSocket, never says hello"])
async def test_a_hanging_socket_is_given_up_on_after_the_connect_timeout_and_close_is_prompt(
        tmp_path, slack, caplog, server):
    with HangingServer() as hanging, FakeSocketMode(hello=False) as silent:
        slack.socket_url = hanging.url if server.startswith("accepts") else silent.url
        running, _ = await start(tmp_path, slack, connect_timeout=0.3, retry_first=5.0)
        await until(lambda: "Slack Socket Mode: no connection and hello within 0.3s" in caplog.text, timeout=3)
        assert "retrying in" in caplog.text
        began = time.monotonic()
        await running.close()  # while waiting to retry
        assert time.monotonic() - began < 1

        running, _ = await start(tmp_path, slack, connect_timeout=30.0)
        await until(lambda: hanging.accepted + silent.connections >= 2)
        began = time.monotonic()
        await running.close()  # in the middle of an attempt
        assert time.monotonic() - began < 1.5


async def test_a_front_end_that_cannot_start_is_one_error_and_the_others_start(tmp_path, socket_mode, slack, caplog):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = slack_config(tmp_path, slack, metrics={"port": busy.getsockname()[1]})
        app = App(config, stdout=io.StringIO())
        await app.start_frontends()
        await until(lambda: socket_mode.open_connections == 1)  # Slack started all the same
        assert re.search(r"^the metrics server could not start \(OSError: .+\): it is off; polling and posting go on$",
                         "\n".join(r.getMessage() for r in caplog.records), re.MULTILINE)
        assert "Traceback" not in caplog.text
        await app.stop_frontends()
        await app.aclose()


async def test_polling_and_delivery_do_not_wait_for_a_front_end_that_never_starts(tmp_path, monkeypatch):
    """Even a start function that breaks the contract (awaits a connection) holds nothing up."""
    import bot.adapters.slack_adapter as slack_adapter

    started = asyncio.Event()

    async def start_slack_that_hangs(*args, **kwargs):
        started.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(slack_adapter, "start_slack", start_slack_that_hangs)
    with FakeHTTPServer() as server:
        server.route("/api/daily_papers", hf_json())
        config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                               "sources": {"huggingface": {"base_url": server.url}, "arxiv": {"enabled": False}},
                               "delivery": {"max_age_days": 100000}}, Secrets({"SLACK_BOT_TOKEN": BOT_TOKEN}))
        out = io.StringIO()
        unreachable = SlackAdapter(make_web_client(BOT_TOKEN, f"http://127.0.0.1:{closed_port()}/api/"), config=config)
        app = App(config, stdout=out, adapters={"console": ConsoleAdapter(out), "slack": unreachable})
        from bot.models import ChannelRef

        await app.handle_command(handlers.request_from_text(ChannelRef("console", "ml"), "u1", "subscribe diffusion"))
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop, tick=0.01))
        await until(lambda: "[console:ml] " in out.getvalue())
        assert started.is_set()
        stop.set()
        await asyncio.wait_for(task, 3)
        await app.aclose()


async def test_shutdown_waits_a_bounded_time_for_what_ignores_cancellation(tmp_path, monkeypatch, caplog):
    import bot.app
    from bot.adapters import Running

    monkeypatch.setattr(bot.app, "TASKS_STOP_SECONDS", 0.2)
    monkeypatch.setattr(bot.app, "FRONTEND_STOP_SECONDS", 0.2)
    fetching = asyncio.Event()

    class Stubborn:
        name = "huggingface"

        async def fetch(self, validators):
            fetching.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:  # swallows the first cancel; the test loop's last one ends it
                await asyncio.sleep(60)

    async def close_that_hangs():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)

    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")}}, Secrets({}))
    app = App(config, stdout=io.StringIO())
    app.sources = [Stubborn()]
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop, tick=0.01))
    await asyncio.wait_for(fetching.wait(), 3)
    app._frontends.append(Running(close_that_hangs))
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2)
    await app.aclose()
    assert time.monotonic() - began < 1.5
    assert "1 polls or deliveries did not stop within 0.2s; leaving them" in caplog.text
    assert "a front-end did not stop within 0.2s; leaving it" in caplog.text


def test_the_process_ends_after_the_grace_period_whatever_hangs():
    code = ("import time; from bot.cli import _exit_anyway_after; _exit_anyway_after(0.2); "
            "print('waiting', flush=True); time.sleep(30)")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=10)
    assert time.monotonic() - began < 5
    assert done.returncode == 1 and done.stdout == "waiting\n"
    assert "still not stopped 0.2s after the signal: exiting now" in done.stderr


async def test_a_request_cancelled_while_waiting_for_arxivs_pacing_does_not_block_the_next():
    from bot.sources.base import Pacer

    pacer = Pacer(0.3)
    async with pacer:
        pass
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.05):  # a shutdown, a deadline: cancelled inside the 0.3 s wait
            async with pacer:
                pass
    async with asyncio.timeout(1):  # before the fix the lock stayed taken: this waited forever
        async with pacer:
            pass


# ---- the real process and real signals ------------------------------------------------------

class Bot:
    """`python -m bot ...` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, tmp_path: Path, config: str, *args: str, env: dict | None = None):
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
        environment.update(env or {}, PAPERS_BOT_CONFIG=config, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=environment,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"not reached (exit {self.proc.returncode}); stderr:\n{self.stderr[-3000:]}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Send `sig`; seconds until the process ended (it is killed after 8)."""
        began = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.kill()
            return float("inf")
        for reader in self._readers:
            reader.join(2)
        return time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_config(tmp_path: Path, sources: FakeHTTPServer, *, hf: bool = True, arxiv: bool = False,
                 slack: FakeSlackSocketMode | None = None, timeout: float = 30.0) -> str:
    path = tmp_path / "config.toml"
    text = (f'[storage]\npath = "{tmp_path / "bot.db"}"\n'
            f'[sources.huggingface]\nenabled = {str(hf).lower()}\nbase_url = "{sources.url}"\n'
            f'[sources.arxiv]\nenabled = {str(arxiv).lower()}\nbase_url = "{sources.url}"\n'
            f'api_url = "{sources.url}/api/query"\ncategories = ["cs.LG"]\n'
            f"[http]\ntimeout_seconds = {timeout}\n"
            "[delivery]\nmax_age_days = 100000\n")
    if slack is not None:
        text += f'[slack]\napi_url = "{slack.api_url}"\n'
    path.write_text(text)
    return str(path)


def subscribe(config: str, channel: str, capsys) -> None:
    assert main(["--config", config, "command", "--channel", channel, "--user", "u1", "subscribe diffusion"]) == 0
    capsys.readouterr()


def cleanly_stopped(bot: Bot, seconds: float, code: int = 0, line: str = "stopped") -> None:
    assert seconds < 5, f"took {seconds:.1f}s to stop; stderr:\n{bot.stderr[-3000:]}"
    assert bot.proc.returncode == code, bot.stderr[-3000:]
    assert re.search(rf" INFO bot: {re.escape(line)}$", bot.stderr, re.MULTILINE), bot.stderr[-3000:]
    assert "Traceback" not in bot.stderr


@pytest.mark.parametrize("websocket, sig", [("hanging", signal.SIGTERM), ("refused", signal.SIGINT)])
def test_run_polls_and_delivers_while_socket_mode_cannot_connect_and_stops_on_a_signal(
        tmp_path, capsys, websocket, sig):
    with FakeHTTPServer() as sources, HangingServer() as hanging, FakeSlackSocketMode() as slack:
        sources.route("/api/daily_papers", hf_json())
        slack.socket_url = hanging.url if websocket == "hanging" else f"ws://127.0.0.1:{closed_port()}/link/?ticket={TICKET}"
        config = write_config(tmp_path, sources, slack=slack)
        subscribe(config, "console:ml", capsys)
        bot = Bot(tmp_path, config, "run", env={"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN})
        bot.wait_until(lambda: "delivered: 2 sent" in bot.stderr)
        assert "[console:ml] MotionCLR" in bot.stdout
        assert slack.called("apps.connections.open")
        if websocket == "refused":
            bot.wait_until(lambda: "Slack Socket Mode: cannot reach" in bot.stderr)
        else:
            bot.wait_until(lambda: hanging.accepted)
        cleanly_stopped(bot, bot.stop(sig))


def test_sigterm_while_a_source_hangs(tmp_path):
    with FakeHTTPServer() as sources:
        sources.route("/api/daily_papers", Canned(body=b"[]", delay=20))
        bot = Bot(tmp_path, write_config(tmp_path, sources), "run")
        bot.wait_until(lambda: sources.requests)
        cleanly_stopped(bot, bot.stop(signal.SIGTERM))


def test_sigterm_while_sending_to_a_slack_api_that_hangs(tmp_path, capsys):
    with FakeHTTPServer() as sources, FakeSlackSocketMode() as slack:
        sources.route("/api/daily_papers", hf_json())
        slack.hang.add("chat.postMessage")
        config = write_config(tmp_path, sources, slack=slack)
        subscribe(config, "slack:C123", capsys)
        bot = Bot(tmp_path, config, "run", env={"SLACK_BOT_TOKEN": BOT_TOKEN})  # no app token: posting only
        bot.wait_until(lambda: slack.called("chat.postMessage"))
        cleanly_stopped(bot, bot.stop(signal.SIGTERM))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_backfill_stops_it_keeping_what_was_stored(tmp_path, sig):
    with FakeHTTPServer() as sources:
        sources.route("/api/query", Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml"),
                                           content_type="application/atom+xml"))
        bot = Bot(tmp_path, write_config(tmp_path, sources, hf=False, arxiv=True), "backfill", "--days", "30")
        # The first day is stored; the next request waits out arXiv's 3 s.
        bot.wait_until(lambda: sources.requests and stored_papers(tmp_path) == 1)
        seconds = bot.stop(sig)
        cleanly_stopped(bot, seconds, code=128 + sig, line=f"stopped ({signal.Signals(sig).name})")
        assert len(sources.requests) == 1
        assert "backfill: stored" not in bot.stdout
    assert stored_papers(tmp_path) == 1


def stored_papers(tmp_path: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(tmp_path / "bot.db") as db:
            return db.execute("SELECT count(*) FROM papers").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_ctrl_c_during_poll_while_a_source_hangs(tmp_path):
    with FakeHTTPServer() as sources:
        sources.route("/api/daily_papers", Canned(body=b"[]", delay=20))
        bot = Bot(tmp_path, write_config(tmp_path, sources), "poll")
        bot.wait_until(lambda: sources.requests)
        cleanly_stopped(bot, bot.stop(signal.SIGINT), code=130, line="stopped (SIGINT)")


def test_sigterm_while_the_database_is_locked_by_another_process(tmp_path):
    # The bot's SQLite calls wait in C for another process's write lock (up to
    # [storage] busy_timeout_seconds): the event loop cannot run then, so the signal is
    # taken by a thread of its own, whose watchdog ends the process in time anyway.
    with FakeHTTPServer() as sources:
        sources.route("/api/daily_papers", Canned(body=fixture("hf_daily_papers_2024-10-25.json"), delay=1.0))
        config = write_config(tmp_path, sources)
        text = Path(config).read_text().replace("[storage]\n", "[storage]\nbusy_timeout_seconds = 60\n", 1)
        Path(config).write_text(text)
        bot = Bot(tmp_path, config, "run")
        bot.wait_until(lambda: "papers-bot running" in bot.stderr)
        holder = sqlite3.connect(tmp_path / "bot.db", timeout=5)
        holder.execute("BEGIN IMMEDIATE")  # another process writing for a long time
        try:
            bot.wait_until(lambda: sources.requests)
            time.sleep(1.5)  # the listing has arrived: the poll is now waiting for the lock
            assert bot.proc.poll() is None
            seconds = bot.stop(signal.SIGTERM)
        finally:
            holder.rollback()
            holder.close()
    assert seconds < 5, f"took {seconds:.1f}s to stop; stderr:\n{bot.stderr[-3000:]}"
    assert "still not stopped" in bot.stderr and bot.proc.returncode == 1
