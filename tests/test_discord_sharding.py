"""Discord at scale: the gateway front-end in several shards ([discord] shards, shard_ids) against
the fake gateway, which routes each interaction to the shard of its server, paces IDENTIFYs
as Discord does (op 9 when too soon) and closes a wrong shard count with 4011."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from discord.http import Route

from bot.adapters import discord_adapter
from bot.adapters.discord_adapter import DiscordAdapter, IdentifyPacer
from bot.errors import ConfigError
from bot.models import ChannelRef
from fakes.discord_gateway import TOKEN, FakeDiscordGateway, guild_on_shard

from . import test_discord_gateway
from .test_discord_gateway import NOWHERE, assert_no_leaks_or_tracebacks, close_within, start, until

urls = test_discord_gateway.urls  # the fixture: every URL an aiohttp session asked for


@pytest.fixture
def paced(monkeypatch):
    """The bot's identify spacing short for the tests (Discord's is 5 s): the fakes below take one
    IDENTIFY per bucket in any 0.4 s, and answer a sooner one with op 9."""
    monkeypatch.setattr(discord_adapter, "IDENTIFY_SPACING", 0.5)
    return 0.4


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(discord_adapter, "RETRY_FIRST", 0.05)
    monkeypatch.setattr(discord_adapter, "RETRY_MAX", 0.2)


def gateway(window: float, **kwargs) -> FakeDiscordGateway:
    return FakeDiscordGateway(identify_window=window, **kwargs)


def channel_on(shard: int) -> str:
    return str(500 + shard)


async def subscribe_on_every_shard(fake: FakeDiscordGateway, shards: range | list[int], count: int) -> dict[int, str]:
    """`/papers subscribe topicK` from a server on each shard K; their interaction tokens."""
    tokens = {}
    for shard in shards:
        tokens[shard] = fake.interact("subscribe", {"query": f"topic{shard}"}, guild_id=guild_on_shard(shard, count),
                                      channel_id=channel_on(shard))
    assert await until(lambda: len(fake.followups) >= len(tokens))
    return tokens


def ready(running) -> set[int]:
    """The shards of the front-end's current client that got READY."""
    client = running.frontend.client
    return set() if client is None else client.ready_shards


def answered(fake: FakeDiscordGateway, token: str) -> str:
    (followup,) = [f for f in fake.followups if f["token"] == token]
    return followup["body"]["content"]


@pytest.mark.parametrize("shards", ["auto", 3])
async def test_each_shard_connects_and_answers_papers_from_its_servers(shards, monkeypatch, store, clock, make_config,
                                                                      caplog, paced, urls):
    caplog.set_level(logging.INFO)
    with gateway(paced, shards=3) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)  # only the adapter's api_base may be used
        config = make_config(discord={"api_base": fake.api_base, "shards": shards})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: len(fake.sessions) == 3)
            assert await until(lambda: ready(running) == {0, 1, 2})
            tokens = await subscribe_on_every_shard(fake, range(3), 3)
        finally:
            await close_within(running)
            await adapter.close()

    assert sorted(i["shard"] for i in fake.identifies) == [[0, 3], [1, 3], [2, 3]]
    # Each interaction went to its own shard's session, and was answered (over REST) for its channel.
    assert sorted(shard for shard, _ in fake.interactions) == [0, 1, 2]
    for shard, token in tokens.items():
        assert f"topic{shard}" in answered(fake, token)
        assert [s.query for s in store.subscriptions(ChannelRef("discord", channel_on(shard)))] == [f"topic{shard}"]
    assert fake.too_soon == []  # max_concurrency 1: one IDENTIFY at a time, paced
    assert any("shard 2 of 3 connected" in r.getMessage() for r in caplog.records)
    # REST, the interaction callbacks and follow-ups, every shard's gateway: all at the configured addresses.
    assert sum(u.startswith("ws://") for u in urls) == 3
    assert any("/callback" in u for u in urls) and any("/webhooks/" in u for u in urls)
    assert all(u.startswith((fake.url, f"ws://127.0.0.1:{fake.port}/")) for u in urls), urls
    assert running.frontend.state == "stopped"
    assert_no_leaks_or_tracebacks(caplog)


async def test_buttons_and_the_subscribe_form_work_from_any_shard(monkeypatch, store, clock, make_config, caplog,
                                                                  paced):
    with gateway(paced, shards=2, max_concurrency=2) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base, "shards": 2})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: ready(running) == {0, 1})
            server = guild_on_shard(1, 2)
            # The subscribe form on shard 1: the modal, its submission, then Confirm on the preview.
            fake.interact("subscribe", guild_id=server, channel_id=channel_on(1))
            assert await until(lambda: any(c["body"].get("type") == 9 for c in fake.callbacks))
            fake.submit_modal({"Query": "diffusion"}, guild_id=server)
            assert await until(lambda: fake.followups)
            preview = fake.followups[-1]["message"]
            fake.click(preview, "Confirm", guild_id=server)
            assert await until(lambda: store.subscriptions(ChannelRef("discord", CHANNEL)))
            # A reply's button pressed on shard 1: /papers list's answer comes as a follow-up.
            before = len(fake.followups)
            fake.press('papers:run:["list",{}]', channel_id=CHANNEL, guild_id=server)
            assert await until(lambda: len(fake.followups) > before)
        finally:
            await close_within(running)
            await adapter.close()
    assert {shard for shard, _ in fake.interactions} == {1}
    assert [s.query for s in store.subscriptions(ChannelRef("discord", CHANNEL))] == ["diffusion"]
    assert "diffusion" in fake.followups[-1]["body"]["content"]
    assert_no_leaks_or_tracebacks(caplog)


CHANNEL = channel_on(1)


async def test_identify_pacing_keeps_to_max_concurrency(monkeypatch, store, clock, make_config, caplog, paced):
    with gateway(paced, shards=4, max_concurrency=2) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: ready(running) == {0, 1, 2, 3})
        finally:
            await close_within(running)
            await adapter.close()
    assert fake.too_soon == []  # no bucket (shard id % 2) identified twice within the fake's window
    assert sorted(shard for shard, _ in fake.identified_at) == [0, 1, 2, 3] and len(fake.identifies) == 4
    assert running.frontend.client.pacer.max_concurrency == 2  # GET /gateway/bot's
    assert_no_leaks_or_tracebacks(caplog)


async def test_waiting_for_an_identify_turn_is_not_a_connect_timeout(monkeypatch, store, clock, make_config, caplog,
                                                                     paced):
    # max_concurrency 1: the fourth shard waits three turns (1.5 s), five times CONNECT_TIMEOUT here.
    monkeypatch.setattr(discord_adapter, "CONNECT_TIMEOUT", 0.3)
    with gateway(paced, shards=4) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: ready(running) == {0, 1, 2, 3})
        finally:
            await close_within(running)
            await adapter.close()
    assert len(fake.identifies) == 4 and fake.too_soon == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("bot")]
    assert_no_leaks_or_tracebacks(caplog)


@pytest.mark.parametrize("max_concurrency", [1, 2, 4])
async def test_the_pacer_lets_one_identify_per_bucket_through_at_once(monkeypatch, max_concurrency):
    monkeypatch.setattr(discord_adapter, "IDENTIFY_SPACING", 0.2)
    pacer = IdentifyPacer(max_concurrency)
    loop = asyncio.get_running_loop()
    went: list[tuple[int, float]] = []
    slept: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        slept.append(delay)
        await sleep(delay)

    async def identify(shard: int) -> None:
        async with pacer.turn(shard):
            pacer.identified(shard)
            went.append((shard, loop.time()))

    monkeypatch.setattr(asyncio, "sleep", recorded)
    await asyncio.gather(*(identify(shard) for shard in range(4)))
    # The first shard of each bucket (shard id % max_concurrency) goes at once, the others wait their turn.
    assert len(slept) == 4 - max_concurrency
    assert sorted(shard for shard, _ in went[:max_concurrency]) == list(range(max_concurrency))
    for bucket in range(max_concurrency):
        times = [at for shard, at in went if shard % max_concurrency == bucket]
        assert all(later - earlier >= 0.2 - 1e-3 for earlier, later in itertools.pairwise(times))


async def test_a_dropped_shard_resumes_alone_and_the_others_keep_answering(monkeypatch, store, clock, make_config,
                                                                           caplog, paced, fast_retries):
    caplog.set_level(logging.INFO)
    with gateway(paced, shards=2, max_concurrency=2) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base, "shards": 2})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: ready(running) == {0, 1})
            sessions = {i["shard"][0]: s for i, s in zip(fake.identifies, fake.sessions, strict=True)}
            fake.drop(1)  # the TCP connection of shard 1 is cut
            assert await until(lambda: len(fake.resumes) == 1)
            assert fake.resumes[0]["session_id"] == sessions[1]
            # And again, while the gateway refuses shard 1's next two connections (an outage of its own).
            fake.refuse_connections = 2
            fake.drop(1)
            assert await until(lambda: len(fake.resumes) == 2, timeout=10)
            tokens = await subscribe_on_every_shard(fake, [0, 1], 2)
        finally:
            await close_within(running)
            await adapter.close()

    assert len(fake.identifies) == 2  # shard 1 resumed its session; shard 0 was never touched
    assert len(fake.paths) == 4 and fake.refused and len(fake.refused) == 2
    assert fake.resumes[1]["session_id"] == sessions[1]
    for shard, token in tokens.items():
        assert f"topic{shard}" in answered(fake, token)
    retries = [r.getMessage() for r in caplog.records if "connecting it again" in r.getMessage()]
    assert len(retries) == 2 and all(m.startswith("Discord gateway shard 1:") for m in retries), retries
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert running.frontend.state == "stopped"
    assert_no_leaks_or_tracebacks(caplog)


async def test_too_few_shards_is_one_clear_error_and_the_frontend_stops(monkeypatch, store, clock, make_config, caplog,
                                                                        paced, fast_retries):
    with gateway(paced, shards=2) as fake:  # the bot is in too many servers for one shard
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base, "shards": 1})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        assert await until(lambda: running.frontend.state == "failed")
        await asyncio.sleep(0.3)  # several retry delays: a permanent failure is not retried
        await close_within(running)
        await adapter.close()
    assert fake.closed_with == [4011] and [i["shard"] for i in fake.identifies] == [[0, 1]]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "4011" in errors[0] and 'set shards = "auto"' in errors[0] and "shard 0 of 1" in errors[0]
    assert "front-end (/papers) is off" in errors[0]
    assert_no_leaks_or_tracebacks(caplog)


async def test_with_auto_a_grown_shard_requirement_is_asked_for_again(monkeypatch, store, clock, make_config, caplog,
                                                                      paced, fast_retries):
    caplog.set_level(logging.INFO)
    # GET /gateway/bot still says 1, the gateway already wants 2 (its requirement grew since).
    with gateway(paced, shards=1, required_shards=2, max_concurrency=2) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: fake.closed_with == [4011])
            fake.shards = 2  # now GET /gateway/bot says so too
            assert await until(lambda: ready(running) == {0, 1})
        finally:
            await close_within(running)
            await adapter.close()
    assert [i["shard"] for i in fake.identifies][0] == [0, 1]
    assert sorted(i["shard"] for i in fake.identifies[1:]) == [[0, 2], [1, 2]]
    warnings = [r.getMessage() for r in caplog.records if "asking GET /gateway/bot" in r.getMessage()]
    assert warnings and "4011" in warnings[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert_no_leaks_or_tracebacks(caplog)


async def test_two_processes_split_the_shards_with_shard_ids(monkeypatch, store, clock, make_config, caplog, paced):
    # Two front-ends, as two processes would run them; each paces its own IDENTIFYs (max_concurrency 4 here).
    with gateway(paced, shards=4, max_concurrency=4) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        halves = [make_config(discord={"api_base": fake.api_base, "shards": 4, "shard_ids": ids})
                  for ids in ([0, 1], [3, 2])]
        adapters = [DiscordAdapter(TOKEN, api_base=c.discord.api_base) for c in halves]
        runs = [await start(store, config, adapter, clock) for config, adapter in zip(halves, adapters, strict=True)]
        try:
            assert await until(lambda: [ready(r) for r in runs]
                               == [{0, 1}, {2, 3}])
            tokens = await subscribe_on_every_shard(fake, range(4), 4)
        finally:
            for running, adapter in zip(runs, adapters, strict=True):
                await close_within(running)
                await adapter.close()
    assert sorted(i["shard"] for i in fake.identifies) == [[0, 4], [1, 4], [2, 4], [3, 4]]
    assert fake.too_soon == []
    for shard, token in tokens.items():
        assert f"topic{shard}" in answered(fake, token)
    assert_no_leaks_or_tracebacks(caplog)


async def test_fewer_session_starts_left_than_shards_waits_for_the_reset(monkeypatch, store, clock, make_config,
                                                                         caplog, paced):
    with gateway(paced, shards=2, max_concurrency=2, session_starts=(1, 1000)) as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: any("session starts" in r.getMessage() for r in caplog.records))
            waited = len(fake.identifies)
            assert await until(lambda: running.frontend.state == "connected")
        finally:
            await close_within(running)
            await adapter.close()
    assert waited == 0  # nothing identified while waiting
    (warning,) = [r.getMessage() for r in caplog.records if "session starts" in r.getMessage()]
    assert "1 more gateway session starts" in warning and "2 shard(s)" in warning
    assert_no_leaks_or_tracebacks(caplog)


def test_shards_settings_are_checked(make_config):
    assert make_config().discord.shards is None  # "auto" by default
    config = make_config(discord={"shards": 4, "shard_ids": [3, 1]})
    assert (config.discord.shards, config.discord.shard_ids) == (4, (1, 3))
    for bad, says in [({"shards": 0}, '"auto" or a number'), ({"shards": "many"}, '"auto" or a number'),
                      ({"shards": True}, '"auto" or a number'), ({"shards": 4, "shard_ids": [4]}, "does not exist"),
                      ({"shard_ids": [0]}, "needs a number of shards"),
                      ({"shards": 4, "shard_ids": [1, 1]}, "different shard ids")]:
        with pytest.raises(ConfigError, match="shard") as raised:
            make_config(discord=bad)
        assert says in str(raised.value)


async def test_the_shards_benchmark_runs_at_a_tiny_size(monkeypatch):
    from bench import discord_shards

    monkeypatch.setattr(discord_adapter, "IDENTIFY_SPACING", discord_adapter.IDENTIFY_SPACING)  # it sets it
    result = await discord_shards.run(2, 2, 4, 100.0, 0.5, False, idle_seconds=0.05)
    assert (result["shards"], result["commands"], result["too_soon"]) == (2, 4, 0)
    assert result["loop_max_ms"] >= result["loop_p99_ms"] >= 0
