"""The Discord front-end against a protocol-level fake gateway: commands answered, refused tokens,
unreachable gateways, bounded close, and no leaked aiohttp sessions on any failure path."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time

import aiohttp
import pytest
from discord.http import Route

import handlers
from bot.adapters import discord_adapter
from bot.adapters.discord_adapter import DiscordAdapter, start_discord
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Match
from fakes.discord_gateway import CHANNEL_ID, TOKEN, FakeDiscordGateway

from .fakes import RecordingAdapter, paper

CH = ChannelRef("discord", CHANNEL_ID)
NOWHERE = "http://127.0.0.1:9/api/v10"  # discord.py's default base, in tests: nothing listens there


@pytest.fixture
def fake(monkeypatch):
    with FakeDiscordGateway() as server:
        monkeypatch.setattr(Route, "BASE", NOWHERE)  # only the adapter's api_base may be used
        yield server


@pytest.fixture
def urls(monkeypatch):
    """Every URL any aiohttp session (discord.py's REST, webhooks and gateway) asked for."""
    seen: list[str] = []
    original = aiohttp.ClientSession._request

    async def recording(self, method, str_or_url, *args, **kwargs):
        seen.append(str(str_or_url))
        return await original(self, method, str_or_url, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", recording)
    return seen


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(discord_adapter, "RETRY_FIRST", 0.05, raising=False)
    monkeypatch.setattr(discord_adapter, "RETRY_MAX", 0.2, raising=False)


async def until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def assert_no_leaks_or_tracebacks(caplog) -> None:
    gc.collect()  # an unclosed aiohttp session reports itself when collected
    unclosed = [r for r in caplog.records if "Unclosed" in r.getMessage()]
    assert not unclosed, [r.getMessage() for r in unclosed]
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith(("bot", "discord"))]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


async def start(store, config, adapter, clock):
    ctx = handlers.Context(store, config, clock)

    async def on_command(request):
        return await handlers.handle(ctx, request)

    def on_complete(channel, verb, param, typed):
        return handlers.complete(ctx, channel, verb, param, typed)

    # Nothing waits for Discord: the coroutine finishes at its first step, never suspended
    # (checked without a clock, which a loaded machine or a long collection could beat).
    starting = start_discord(adapter, config, on_command, on_complete)
    try:
        starting.send(None)
    except StopIteration as started:
        return started.value
    starting.close()
    pytest.fail("start_discord waited for something before returning")


async def close_within(running, seconds: float = 2.0) -> None:
    began = time.monotonic()
    await running.close()
    assert time.monotonic() - began < seconds


@pytest.mark.parametrize("configured_gateway", [False, True], ids=["gateway-from-rest", "gateway-url-setting"])
async def test_a_slash_command_over_the_gateway_is_deferred_and_answered(fake, urls, store, clock, make_config,
                                                                         caplog, configured_gateway):
    config = make_config(discord={"api_base": fake.api_base,
                                  "gateway_url": fake.gateway_url if configured_gateway else ""})
    if configured_gateway:  # GET /gateway/bot names another address: the setting wins
        fake.gateway_bot_url = NOWHERE.replace("http://", "ws://")
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    try:
        assert await until(fake.ready.is_set)
        assert await until(lambda: running.frontend.state == "connected")
        token = fake.interact("subscribe", {"query": "diffusion"})
        assert await until(lambda: fake.followups)
    finally:
        await close_within(running)
        await adapter.close()

    ((callback,),) = [fake.callbacks]
    assert callback["token"] == token and callback["body"] == {"type": 5, "data": {"flags": 64}}  # deferred, ephemeral
    ((followup,),) = [fake.followups]
    assert followup["token"] == token and followup["body"]["flags"] & 64
    assert "diffusion" in followup["body"]["content"]
    assert [s.query for s in store.subscriptions(CH)] == ["diffusion"]
    assert [c["name"] for c in fake.synced[0]] == ["papers"]
    assert "v=10" in fake.connections[0] and "encoding=json" in fake.connections[0]
    # Asked either way: the shard count ([discord] shards = "auto") and the identify limits come from it.
    assert ("GET", "/api/v10/gateway/bot") in fake.requests
    assert fake.paths == ["/gateway"] and fake.identifies[0]["shard"] == [0, 1]
    # The fake's addresses are the only ones used: REST, interaction callbacks, follow-ups, the gateway.
    assert any(u.startswith("ws://") for u in urls)  # the gateway connection is among the URLs checked
    assert urls and all(u.startswith((fake.url, f"ws://127.0.0.1:{fake.port}/")) for u in urls), urls
    assert running.frontend.state == "stopped"
    assert_no_leaks_or_tracebacks(caplog)


async def test_help_longer_than_a_message_arrives_whole(fake, store, clock, make_config):
    # `/papers help` is about 2,300 characters, past a message's 2,000: the last commands were cut.
    config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    try:
        assert await until(lambda: running.frontend.state == "connected")
        fake.interact("help")
        assert await until(lambda: fake.followups)
    finally:
        await close_within(running)
        await adapter.close()
    ((followup,),) = [fake.followups]
    body = followup["body"]
    shown = (body.get("content") or "") + "".join(e.get("description", "") for e in body.get("embeds") or [])
    assert "`/papers most-saved weekly" in shown and "`/papers help [command]`" in shown


@pytest.mark.parametrize("configured_gateway", [False, True], ids=["resume-where-ready-says", "gateway-url-setting"])
async def test_after_a_reconnect_request_the_session_resumes_and_commands_still_arrive(fake, urls, store, clock,
                                                                                        make_config, caplog,
                                                                                        configured_gateway):
    config = make_config(discord={"api_base": fake.api_base,
                                  "gateway_url": fake.gateway_url if configured_gateway else ""})
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    try:
        assert await until(fake.ready.is_set)
        fake.reconnect()  # op 7
        assert await until(lambda: len(fake.resumes) == 1)
        await asyncio.sleep(0.05)
        fake.interact("list")
        assert await until(lambda: fake.followups)
    finally:
        await close_within(running)
        await adapter.close()
    assert len(fake.identifies) == 1  # resumed, not identified again
    assert fake.resumes[0]["session_id"] == fake.sessions[0] and fake.resumes[0]["seq"] == 1  # READY was event 1
    # READY's resume_gateway_url, unless the config names the one gateway to use.
    assert fake.paths == ["/gateway", "/gateway" if configured_gateway else "/resume"]
    assert fake.followups[0]["body"]["content"]  # the reply to /papers list, sent after the resume
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("bot")]
    assert_no_leaks_or_tracebacks(caplog)


def queue_card(store, clock, channel: ChannelRef, paper_id: str = "2411.00001") -> None:
    store.add_papers([paper(paper_id, "Latent diffusion")], clock())
    sub = store.add_subscription(channel, "diffusion", "42", clock()).subscription
    store.enqueue(paper_id, [Match(sub.id, channel, sub.query, ("diffusion in title",))], clock())


@pytest.mark.parametrize("where", ["rest-401", "gateway-4004"])
async def test_a_refused_token_stops_the_frontend_with_one_error_and_posting_goes_on(
        where, monkeypatch, urls, store, clock, make_config, caplog, fast_retries):
    caplog.set_level(logging.INFO)
    # rest-401: the token is wrong everywhere; gateway-4004: REST takes it, the gateway closes with 4004.
    with FakeDiscordGateway(gateway_token="another" if where == "gateway-4004" else None) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        token = "wrong-token" if where == "rest-401" else TOKEN
        config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
        adapter = DiscordAdapter(token, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        assert await until(lambda: any(r.levelno >= logging.ERROR and r.name.startswith("bot.adapters")
                                       for r in caplog.records))
        await asyncio.sleep(0.3)  # several retry delays: a permanent failure must not be retried
        attempts = [p for m, p in fake.requests if p == "/api/v10/users/@me"]
        assert len(attempts) == 1 and len(fake.identifies) == (1 if where == "gateway-4004" else 0)

        # Delivery still runs: console cards go, and Discord cards go over REST when REST takes the token.
        console = RecordingAdapter("console")
        queue_card(store, clock, CH)
        queue_card(store, clock, ChannelRef("console", "ops"), "2411.00002")
        report = await Dispatcher(store, {"discord": adapter, "console": console}, clock).dispatch()
        await close_within(running)
        await adapter.close()

    assert len(console.posts) == 1
    if where == "gateway-4004":
        assert report.sent == 2 and [c for c, _ in fake.posts] == [CHANNEL_ID]
    else:
        assert report.sent == 1 and fake.posts == []
        assert store.db.execute("SELECT error FROM deliveries WHERE channel LIKE 'discord%'").fetchone()[0] == \
            "the Discord token was refused (HTTP 401): check DISCORD_TOKEN"
        # The paper waits for a fixed token (and a restart), it is not given up.
        assert store.delivery_counts().failed == 0
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith("bot.adapters")]
    frontend_errors = [e for e in errors if "front-end" in e]
    assert len(frontend_errors) == 1 and "refused the token" in frontend_errors[0], errors
    assert all(u.startswith((fake.url, f"ws://127.0.0.1:{fake.port}/")) for u in urls), urls
    assert_no_leaks_or_tracebacks(caplog)
    assert running.frontend.state == "failed" and running.frontend.task.done()


async def test_a_missing_intent_is_one_clear_error_not_a_retry_loop(monkeypatch, store, clock, make_config, caplog,
                                                                    fast_retries):
    with FakeDiscordGateway(identify_close=4014) as fake:  # 4014: disallowed intents
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url,
                                      "message_content": True})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        assert await until(lambda: running.frontend.state == "failed")
        await asyncio.sleep(0.3)
        await close_within(running)
        await adapter.close()
    assert len(fake.identifies) == 1 and fake.identifies[0]["intents"] & (1 << 15)  # MESSAGE_CONTENT asked for
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "message_content = false" in errors[0]
    assert_no_leaks_or_tracebacks(caplog)


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections (the kernel does) and never answers: a firewall's kind of silence."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


async def test_a_silent_gateway_does_not_block_start_and_close_is_bounded(fake, urls, black_hole, store, clock,
                                                                          make_config, caplog):
    port = black_hole.getsockname()[1]
    config = make_config(discord={"api_base": fake.api_base, "gateway_url": f"ws://127.0.0.1:{port}/gateway"})
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    assert await until(lambda: any(u.startswith(f"ws://127.0.0.1:{port}") for u in urls))
    await asyncio.sleep(0.1)  # inside the WebSocket handshake that never completes
    assert running.frontend.state == "connecting"
    await close_within(running, 2.0)
    await adapter.close()
    assert_no_leaks_or_tracebacks(caplog)
    assert running.frontend.state == "stopped" and running.frontend.task.done()


async def test_an_unreachable_gateway_is_retried_with_backoff_one_line_per_failure(fake, store, clock, make_config,
                                                                                  caplog, fast_retries):
    caplog.set_level(logging.INFO)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    config = make_config(discord={"api_base": fake.api_base, "gateway_url": f"ws://127.0.0.1:{port}/"})
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    assert await until(lambda: len([p for m, p in fake.requests if p == "/api/v10/users/@me"]) >= 3)
    await close_within(running)
    await adapter.close()

    logins = len([p for m, p in fake.requests if p == "/api/v10/users/@me"])
    retries = [r for r in caplog.records if "connecting again" in r.getMessage()]
    assert logins - 1 <= len(retries) <= logins  # one line per failed attempt
    assert len(fake.synced) == 1  # the commands are synced once, not on every attempt
    assert all(r.levelno == logging.WARNING and "cannot reach Discord" in r.getMessage() for r in retries)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert running.frontend.state == "stopped"
    assert_no_leaks_or_tracebacks(caplog)


async def test_close_while_logging_in_is_bounded(black_hole, store, clock, make_config, caplog, monkeypatch):
    port = black_hole.getsockname()[1]
    monkeypatch.setattr(Route, "BASE", NOWHERE)
    config = make_config(discord={"api_base": f"http://127.0.0.1:{port}/api/v10",
                                  "gateway_url": f"ws://127.0.0.1:{port}/"})
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    await asyncio.sleep(0.2)
    await close_within(running, 2.0)
    await adapter.close()
    assert_no_leaks_or_tracebacks(caplog)
    assert running.frontend.state == "stopped"


async def test_posting_while_discord_is_unreachable_fails_cleanly_without_leaking_sessions(monkeypatch, caplog):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(Route, "BASE", NOWHERE)
    adapter = DiscordAdapter(TOKEN, api_base=f"http://127.0.0.1:{port}/api/v10")
    results = [await adapter.post_text(CH, "hello") for _ in range(2)]  # each one tries to log in
    await adapter.close()
    assert all(not r.ok and r.retryable and "cannot reach Discord" in r.error for r in results)
    assert_no_leaks_or_tracebacks(caplog)


def test_the_fake_runs_by_hand_from_any_folder(tmp_path):
    # README: `python -m fakes.discord_gateway` to try `papers-bot run` against it. From outside
    # the repository it was "No module named 'fakes'": the package was not installed.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "fakes.discord_gateway"], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("api_base = 'http://127.0.0.1:") and "gateway_url = 'ws://127.0.0.1:" in done.stdout
