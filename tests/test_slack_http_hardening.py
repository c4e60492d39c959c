"""The Slack HTTP endpoint and the metrics server under hostile clients, with real sockets on loopback.

Slow and stalled connections are closed after the read timeout, the connection cap holds,
every malformed request gets 400/401 without a traceback, a flood of them costs a bounded
number of log lines, a replayed signed request is refused, and the bind addresses are settings.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import re
import socket
import time
from urllib.parse import urlencode

import aiohttp
import pytest

import handlers
from bot.adapters.slack_adapter import build_bolt_app, make_web_client, start_http, start_slack
from bot.config import Secrets, parse_config
from bot.errors import ConfigError
from bot.health import start_metrics
from bot.models import ChannelRef

from .test_slack import SECRET, command_body, post, sign, wait_for

C123 = ChannelRef("slack", "C123")
URL = "/slack/events"


@pytest.fixture
def endpoint(store, make_config, clock, slack, unused_tcp_port):
    """`await endpoint(**limits)` starts the real endpoint: (url, served)."""

    async def start(**options):
        ctx = handlers.Context(store, make_config(), clock)

        async def on_command(request):
            return await handlers.handle(ctx, request)

        app = build_bolt_app(make_web_client("xoxb-test-token", slack.api_url), signing_secret=SECRET,
                             on_command=on_command, admins=("UADMIN",))
        server = await start_http(app, unused_tcp_port, signing_secret=SECRET, host="127.0.0.1", **options)
        return f"http://127.0.0.1:{unused_tcp_port}{URL}", server

    return start  # each test cleans up what it started


def sign_bytes(raw: bytes, timestamp: int, secret: str = SECRET) -> dict:
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={mac}"}


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes the connection (EOF or reset) within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
        return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


async def a_command_is_answered(url, slack, text="subscribe diffusion", channel="C123"):
    body = command_body(slack, text, channel=channel)
    status, _ = await post(url, body, sign(body, int(time.time())))
    assert status == 200
    await wait_for(lambda: slack.called("1"), timeout=3)


def no_tracebacks(caplog):
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert bad == [], [r.getMessage() for r in bad]


# ---- slow and stalled connections -----------------------------------------------------------

async def test_slow_partial_connections_are_closed_after_the_read_timeout(endpoint, slack, store, unused_tcp_port):
    url, served = await endpoint(read_timeout=0.6, max_connections=500)
    port = unused_tcp_port
    try:
        held = []
        for i in range(120):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if i % 3 == 0:  # headers never finished
                writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nX-Slack-")
            elif i % 3 == 1:  # headers done, body never finished
                writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\npayload=")
            held.append((reader, writer))
        dribblers = []
        for _ in range(5):  # a byte at a time, forever: still closed
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            dribblers.append((reader, writer))

        async def dribble(writer):
            for byte in b"POST /slack/events HTTP/1.1\r\nHost: x\r\n" * 100:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(dribble(w)) for _, w in dribblers]
        # While all of them are held, a real command still gets through.
        await a_command_is_answered(url, slack)
        assert [s.query for s in store.subscriptions(C123)] == ["diffusion"]
        results = await asyncio.gather(*(closed_within(r, 3.0) for r, _ in held + dribblers))
        assert all(results), f"{results.count(False)} connections still open"
        assert len(served.guard.connections) == 0
        for task in tasks:
            task.cancel()
        for _, writer in held + dribblers:
            writer.close()
    finally:
        await served.cleanup()


async def test_a_kept_alive_connection_may_idle_between_requests_but_not_dawdle_within_one(endpoint, unused_tcp_port):
    url, served = await endpoint(read_timeout=0.2, idle_timeout=0.8)
    request = b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nx=1"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        for _ in range(2):  # idle longer than read_timeout between requests: still open
            writer.write(request)
            assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 401")
            await asyncio.wait_for(reader.readuntil(b"invalid request\"}"), 2)
            await asyncio.sleep(0.35)
        writer.write(request[:20])  # a request begun: read_timeout again
        started = time.monotonic()
        assert await closed_within(reader, 1.0) and time.monotonic() - started < 0.6
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(request)
        await asyncio.wait_for(reader.readuntil(b"invalid request\"}"), 2)
        assert await closed_within(reader, 1.5)  # idle past idle_timeout: closed
    finally:
        await served.cleanup()


async def test_the_connection_cap_holds_and_idle_connections_make_room(endpoint, slack, store, caplog,
                                                                        unused_tcp_port):
    caplog.set_level(logging.INFO)
    url, served = await endpoint(read_timeout=5, max_connections=30)
    port = unused_tcp_port
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
        for _, writer in held[:10]:  # headers done, body never finished: waiting too
            writer.write(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\npayload=")
        await wait_for(lambda: len(served.guard.connections) == 30)
        extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        # The 20 oldest waiting connections made room, at once; never more than 30.
        assert all(await asyncio.gather(*(closed_within(r, 1.0) for r, _ in held[:20])))
        await wait_for(lambda: len(served.guard.connections) == 30)
        assert served.guard.accepted == 30
        # With the cap full of idle connections, Slack still gets through.
        await a_command_is_answered(url, slack)
        assert [s.query for s in store.subscriptions(C123)] == ["diffusion"]
        for _, writer in held + extra:
            writer.close()
        await wait_for(lambda: served.guard.accepted == 0)
    finally:
        await served.cleanup()
    no_tracebacks(caplog)


async def test_when_every_connection_is_busy_a_new_one_is_closed_at_once(endpoint, slack, unused_tcp_port):
    url, served = await endpoint(read_timeout=5, max_connections=5)
    try:
        held = [await asyncio.open_connection("127.0.0.1", unused_tcp_port) for _ in range(5)]
        await wait_for(lambda: len(served.guard.connections) == 5)
        for connection in served.guard.connections.values():
            connection.stop_clock()  # as while a handler runs
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        assert await closed_within(reader, 1.0)
        assert len(served.guard.connections) == 5 and served.guard.accepted == 5
        for _, w in held + [(reader, writer)]:
            w.close()
    finally:
        await served.cleanup()


LOW_LIMIT_BOT = r"""
import asyncio, json, logging, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
import httpx
from bot.adapters.slack_adapter import build_bolt_app, make_web_client, start_http

async def main():
    loop = asyncio.get_running_loop()
    async def on_command(request):
        raise AssertionError
    app = build_bolt_app(make_web_client("xoxb-x", "http://127.0.0.1:9/"), signing_secret="s", on_command=on_command)
    served = await start_http(app, 0, signing_secret="s", host="127.0.0.1")
    print(served.port, served.guard.max_connections, flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # 1. the flood is on
    async with httpx.AsyncClient() as client:  # what the sources do
        answers = await asyncio.gather(*(client.get(sys.argv[1]) for _ in range(20)), return_exceptions=True)
    print(json.dumps({"held": len(served.guard.connections),
                      "ok": sum(getattr(a, "status_code", 0) == 200 for a in answers),
                      "errors": sorted({type(a).__name__ for a in answers if isinstance(a, Exception)})}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # 2. flood gone: now something else takes every descriptor
    await asyncio.sleep(0.2)
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    print("hogged", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # connections wait while accept() fails
    for fd in hog:
        os.close(fd)
    for _ in range(40):  # accept() works again after its pause
        if len(served.guard.connections) == 10:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"held": len(served.guard.connections)}), flush=True)
    await served.cleanup()

asyncio.run(main())
"""


def test_with_a_low_file_limit_a_flood_cannot_starve_the_bots_own_requests(server):
    """`ulimit -n 128`: 300 connections held open, the bot still reaches its sources; and when
    descriptors run out for another reason, accept() pauses quietly and resumes."""
    import subprocess
    import sys
    from pathlib import Path

    from fakes.http import Canned

    server.route("/api/daily_papers", Canned(200, b"[]"))
    bot = subprocess.Popen([sys.executable, "-c", LOW_LIMIT_BOT, f"{server.url}/api/daily_papers"],
                           cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flood = []

    def say(line):
        bot.stdin.write(line + "\n")
        bot.stdin.flush()

    try:
        port, cap = map(int, bot.stdout.readline().split())
        assert cap == 32  # a quarter of 128
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)  # let the bot accept (and close) what is over the cap
        say("go")
        flooded = json.loads(bot.stdout.readline())
        for sock in flood:
            sock.close()
        flood.clear()
        say("exhaust")
        assert bot.stdout.readline().strip() == "hogged"
        flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
        time.sleep(1.2)  # accept() fails with EMFILE at least once, then retries a second later
        say("release")
        recovered = json.loads(bot.stdout.readline())
        bot.stdin.close()
        stderr = bot.stderr.read()
        assert bot.wait(10) == 0, stderr
    finally:
        for sock in flood:
            sock.close()
        if bot.poll() is None:
            bot.kill()
    assert flooded == {"held": 32, "ok": 20, "errors": []}  # the newest 32 of the 300
    assert recovered == {"held": 10}
    assert "out of system resource" not in stderr and "Traceback" not in stderr
    assert stderr.count("\n") <= 2, stderr  # the refusals: summary lines
    assert "out of file descriptors" in stderr


# ---- malformed requests --------------------------------------------------------------------

def _signed(raw: bytes, content_type="application/x-www-form-urlencoded"):
    return raw, {**sign_bytes(raw, int(time.time())), "Content-Type": content_type}


def _block_action(**drop):
    payload = {"type": "block_actions", "user": {"id": "UADMIN"}, "channel": {"id": "C123"},
               "team": {"id": "T1"}, "response_url": "http://127.0.0.1:9/respond/2", "trigger_id": "1",
               "actions": [{"type": "overflow", "action_id": "papers_overflow", "block_id": "paper:2411.00001",
                            "selected_option": {"value": "unsub:1"}}]}
    for key in drop:
        payload.pop(key)
    return urlencode({"payload": json.dumps(payload)}).encode()


FORM = "application/x-www-form-urlencoded"
MALFORMED = {
    "timestamp abc": (b"command=/papers", {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=" + "0" * 64}),
    "timestamp abc, no signature": (b"x=1", {"X-Slack-Request-Timestamp": "abc"}),
    "no headers": (b"command=/papers&text=subscribe+x", {}),
    "signature not hex": (b"x=1", {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=zz"}),
    "huge timestamp": (b"x=1", {"X-Slack-Request-Timestamp": "9" * 40, "X-Slack-Signature": "v0=" + "0" * 64}),
    "non-UTF-8 body, unsigned": (b"\xff\xfe\x00payload", {"X-Slack-Request-Timestamp": "1"}),
    "non-UTF-8 body, signed": _signed(b"payload=\xff\xfe{\x80}"),
    "signed payload not JSON": _signed(b"payload=%7Bnot+json"),
    "signed form, malformed": _signed(b"%%%&&&=payload=&payload"),
    "signed JSON not an object": _signed(b"[1, 2, 3]", "application/json"),
    "signed JSON broken": _signed(b'{"type": "event_callback", "event": ', "application/json"),
    "signed event without type": _signed(b'{"type": "event_callback", "event": "x"}', "application/json"),
    "signed mention without channel": _signed(
        b'{"type": "event_callback", "event": {"type": "app_mention", "text": "hi", "ts": "1.2"}}', "application/json"),
    "signed unfurl, links not a list": _signed(
        b'{"type": "event_callback", "event": {"type": "link_shared", "channel": "C1", "message_ts": "1", '
        b'"links": "x"}}', "application/json"),
    "signed block action without user": _signed(_block_action(user=1)),
    "signed block action without actions": _signed(_block_action(actions=1)),
    "signed block action without channel": _signed(_block_action(channel=1)),
    "signed slash command without channel":
        _signed(b"command=%2Fpapers&user_id=U1&text=list&response_url=http%3A%2F%2Fx"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_requests_get_400_or_401_without_a_traceback(endpoint, slack, store, caplog, case):
    caplog.set_level(logging.DEBUG)
    url, served = await endpoint()
    raw, headers = MALFORMED[case]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=raw, headers={"Content-Type": FORM, **headers}) as response:
                assert response.status in (400, 401), await response.text()
                assert "Traceback" not in await response.text()
        await asyncio.sleep(0.1)  # anything the listeners would do after ack
    finally:
        await served.cleanup()
    no_tracebacks(caplog)
    assert store.subscriptions() == []
    assert [method for method, _, _ in slack.calls if method != "auth.test"] == []  # no listener ran


@pytest.mark.parametrize("raw", [
    b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /slack/events HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"POST /slack/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n" + b"x" * 100,
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,  # TLS to the plain-HTTP port
    b"GET /slack/events HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE / HTTP/1.1\r\n\r\n",  # a bad second request
])
async def test_malformed_http_is_refused_without_a_traceback(endpoint, caplog, unused_tcp_port, raw):
    caplog.set_level(logging.DEBUG)
    url, served = await endpoint()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(raw)
        status_line = await asyncio.wait_for(reader.readline(), 3)
        writer.close()
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), status_line
    finally:
        await served.cleanup()
    no_tracebacks(caplog)
    assert served.rejects.total >= 1  # counted, and summed up in one line
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING][0].startswith(
        "Slack HTTP endpoint: refused")


async def test_a_flood_of_bad_requests_costs_a_bounded_number_of_log_lines(endpoint, caplog):
    caplog.set_level(logging.INFO)
    url, served = await endpoint()
    headers = {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=" + "0" * 64, "Content-Type": FORM}
    statuses = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
            async def one(i):
                async with session.post(url, data=f"command=/papers&text={i}".encode(), headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)

            await asyncio.gather(*(one(i) for i in range(1000)))
    finally:
        await served.cleanup()  # flushes the last summary
    assert statuses == [401] * 1000
    no_tracebacks(caplog)
    assert len(caplog.records) <= 3, [r.getMessage() for r in caplog.records]
    counted = sum(int(m.group(1)) for r in caplog.records if (m := re.search(r"refused (\d+) \(", r.getMessage())))
    assert counted == 1000


# ---- replays -------------------------------------------------------------------------------

async def test_a_replayed_signed_unsubscribe_all_is_refused_and_runs_once(endpoint, slack, store, clock):
    url, served = await endpoint()
    try:
        for query in ("diffusion", "transformers"):
            store.add_subscription(C123, query, "U1", clock())
        body = command_body(slack, "unsubscribe all")
        headers = sign(body, int(time.time()))
        assert (await post(url, body, headers))[0] == 200
        await wait_for(lambda: slack.called("1"))
        assert store.subscriptions(C123) == []
        store.add_subscription(C123, "added after", "U1", clock())
        replays = await asyncio.gather(*(post(url, body, headers) for _ in range(5)))
        assert [status for status, _ in replays] == [401] * 5
        await asyncio.sleep(0.3)
        assert [s.query for s in store.subscriptions(C123)] == ["added after"]
        assert len(slack.called("1")) == 1  # one reply: it ran once
    finally:
        await served.cleanup()


def test_replay_memory_forgets_stale_signatures_and_is_bounded():
    from bot.adapters.slack_adapter import SeenSignatures

    seen = SeenSignatures(max_entries=3)
    assert seen.first_time("a", 1000, now=1000) is True
    assert seen.first_time("a", 1000, now=1200) is False  # within 5 minutes: a replay
    assert seen.first_time("b", 1000, now=1200) and seen.first_time("c", 1000, now=1200)
    assert seen.first_time("d", 1000, now=1200) is None  # full: refused, never forgotten early
    assert seen.first_time("d", 1400, now=1302) is True  # a, b, c could no longer pass the timestamp check
    assert len(seen) == 1


# ---- bind addresses --------------------------------------------------------------------------

def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


async def test_metrics_listen_on_loopback_by_default_and_the_host_is_honoured(store, make_config, unused_tcp_port):
    config = make_config(metrics={"port": unused_tcp_port})
    assert config.metrics_host == "127.0.0.1"
    served = await start_metrics(store, config, unused_tcp_port)
    try:
        assert [address[0] for address in served.addresses] == ["127.0.0.1"]
    finally:
        await served.cleanup()
    served = await start_metrics(store, make_config(metrics={"port": unused_tcp_port, "host": "127.0.0.2"}),
                                 unused_tcp_port)
    try:
        assert [address[0] for address in served.addresses] == ["127.0.0.2"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.2:{unused_tcp_port}/healthz") as response:
                assert response.status == 200
        assert _refused("127.0.0.1", unused_tcp_port)
    finally:
        await served.cleanup()


async def test_the_slack_host_setting_is_honoured(tmp_path, slack, unused_tcp_port):
    assert parse_config({}).slack.host == "0.0.0.0"  # Slack (or a proxy) must reach it
    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                           "slack": {"mode": "http", "port": unused_tcp_port, "host": "127.0.0.2",
                                     "api_url": slack.api_url}},
                          Secrets({"SLACK_SIGNING_SECRET": SECRET}))

    async def on_command(request):
        raise AssertionError("nothing signed is sent")

    running = await start_slack(make_web_client("xoxb-x", slack.api_url), config, on_command)
    try:
        assert _refused("127.0.0.1", unused_tcp_port)
        status, _ = await post(f"http://127.0.0.2:{unused_tcp_port}{URL}", "x=1", {"Content-Type": FORM})
        assert status == 401
    finally:
        await running.close()


@pytest.mark.parametrize("section", ["slack", "metrics"])
def test_a_bad_host_is_a_config_error(section):
    with pytest.raises(ConfigError, match=rf"\[{section}\] host"):
        parse_config({section: {"host": "not a host!"}})
    assert getattr(parse_config({section: {"host": "::"}}), "slack" if section == "slack" else "metrics_host")
