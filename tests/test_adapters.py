"""The adapter contract (bot.adapters.Adapter) and the factory that builds adapters from the config."""

from __future__ import annotations

import asyncio
import inspect
import io
import logging

import pytest
from discord.http import Route

from bot.adapters import Adapter, ConsoleAdapter, build_adapters
from bot.adapters.discord_adapter import DiscordAdapter
from bot.adapters.slack_adapter import SlackAdapter, make_web_client
from bot.config import DiscordConfig, Secrets, parse_config
from bot.models import ChannelRef
from fakes.discord import FakeDiscord
from fakes.slack import FakeSlack

from .fakes import RecordingAdapter

NOWHERE = "http://127.0.0.1:9/api/v10"  # nothing listens on port 9
METHODS = ["post", "post_digest", "post_text", "post_in_thread", "find_sent", "find_in_thread", "start", "close"]


async def until(predicate, attempts: int = 250) -> bool:
    for _ in range(attempts):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def config_with(tmp_path, secrets: dict[str, str], **sections):
    return parse_config({"storage": {"path": str(tmp_path / "bot.db")}, **sections}, Secrets(secrets))


def instances(tmp_path):
    return [ConsoleAdapter(io.StringIO()),
            SlackAdapter(make_web_client("xoxb-test", "http://127.0.0.1:9/api/")),
            DiscordAdapter("discord-test", api_base=DiscordConfig().api_base),
            RecordingAdapter()]


def test_the_protocol_lists_exactly_what_the_app_uses():
    members = {name for name in vars(Adapter) if not name.startswith("_")} | set(Adapter.__annotations__)
    assert members == {"platform", *METHODS}


@pytest.mark.parametrize("cls", [ConsoleAdapter, SlackAdapter, DiscordAdapter, RecordingAdapter])
def test_every_adapter_has_every_method_with_the_protocols_signature(cls):
    for name in METHODS:
        method, wanted = getattr(cls, name), getattr(Adapter, name)
        assert inspect.iscoroutinefunction(method), f"{cls.__name__}.{name} is not async"
        have, want = inspect.signature(method), inspect.signature(wanted)
        assert list(have.parameters) == list(want.parameters), f"{cls.__name__}.{name}{have} != {want}"
        assert have.return_annotation == want.return_annotation, f"{cls.__name__}.{name} returns {have}"


async def test_every_adapter_instance_is_an_adapter_and_posting_only_ones_start_nothing(tmp_path):
    async def on_command(request):
        raise AssertionError("no front-end was started")

    for adapter in instances(tmp_path):
        assert isinstance(adapter, Adapter)
        assert adapter.platform in ("console", "slack", "discord")
        assert await adapter.start(on_command) is None  # no front-end settings given: posting only
        await adapter.close()


async def test_the_console_cannot_find_sent_messages():
    from datetime import datetime, timezone

    console = ConsoleAdapter(io.StringIO())
    assert await console.find_sent(ChannelRef("console", "ml"), "2411.00001", datetime.now(timezone.utc)) is None


# ---- the factory --------------------------------------------------------------------------

def test_without_tokens_only_the_console(tmp_path):
    out = io.StringIO()
    adapters = build_adapters(config_with(tmp_path, {}), stdout=out)
    assert list(adapters) == ["console"]
    assert isinstance(adapters["console"], ConsoleAdapter) and adapters["console"].stream is out


async def test_a_slack_token_adds_slack_posting_to_the_configured_api_url(tmp_path, caplog):
    with FakeSlack() as slack:
        config = config_with(tmp_path, {"SLACK_BOT_TOKEN": "xoxb-factory"}, slack={"api_url": slack.api_url})
        adapters = build_adapters(config)
        assert sorted(adapters) == ["console", "slack"]
        result = await adapters["slack"].post_text(ChannelRef("slack", "C1"), "hello <!channel>")
        # The front-end has the config: Socket Mode without an app token says so and starts nothing.
        assert await adapters["slack"].start(lambda request: None) is None
        await adapters["slack"].close()
    assert result.ok
    (body,) = slack.called("chat.postMessage")
    assert body["channel"] == "C1" and "<!channel>" not in body["text"]
    assert "Socket Mode needs SLACK_APP_TOKEN" in caplog.text


async def test_a_discord_token_adds_discord_at_its_own_api_base_two_in_one_process(tmp_path, monkeypatch,
                                                                                     caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(Route, "BASE", NOWHERE)  # discord.py's process-wide default is never used
    with FakeDiscord() as first, FakeDiscord() as second:
        made = [build_adapters(config_with(tmp_path, {"DISCORD_TOKEN": "discord-factory"},
                                           discord={"api_base": fake.api_base + "/"}))
                for fake in (first, second)]
        assert [sorted(adapters) for adapters in made] == [["console", "discord"]] * 2
        one, two = made[0]["discord"], made[1]["discord"]
        results = [await one.post_text(ChannelRef("discord", "111"), "to the first"),
                   await two.post_text(ChannelRef("discord", "222"), "to the second"),
                   await one.post_text(ChannelRef("discord", "111"), "the first again")]
        await one.close()
        await two.close()
    assert all(r.ok for r in results), results
    assert [(channel, body["content"]) for channel, body in first.posts] == [("111", "to the first"),
                                                                             ("111", "the first again")]
    assert [(channel, body["content"]) for channel, body in second.posts] == [("222", "to the second")]
    assert Route.BASE == NOWHERE  # nothing set it


# ---- the app uses nothing but the contract --------------------------------------------------

class Started(RecordingAdapter):
    """A RecordingAdapter with a front-end: start() hands back a Running and keeps on_command."""

    def __init__(self, platform: str):
        super().__init__(platform)
        self.on_command = None
        self.stopped = False

    async def start(self, on_command):
        from bot.adapters import Running

        self.on_command = on_command

        async def stop() -> None:
            self.stopped = True

        return Running(stop)


async def test_the_app_starts_stops_and_closes_every_adapter_through_the_protocol(make_config):
    from bot.app import App
    from bot.models import CommandRequest

    quiet, chatty = RecordingAdapter("console"), Started("chat")
    app = App(make_config(), adapters={"console": quiet, "chat": chatty})
    await app.start_frontends()
    reply = await chatty.on_command(CommandRequest(ChannelRef("chat", "c1"), "u1", "subscribe diffusion"))
    await app.stop_frontends()
    await app.aclose()
    assert "diffusion" in reply.text and chatty.stopped
    assert quiet.closed and chatty.closed


async def test_a_discord_adapter_from_the_factory_answers_slash_commands_at_its_api_base(tmp_path, monkeypatch):
    """Factory -> App.start_frontends -> gateway -> interaction reply: every request at [discord] api_base,
    while discord.py's own (process-wide) default base points nowhere."""
    from bot.app import App
    from fakes.discord_gateway import TOKEN, FakeDiscordGateway

    monkeypatch.setattr(Route, "BASE", NOWHERE)
    with FakeDiscordGateway() as fake:
        config = config_with(tmp_path, {"DISCORD_TOKEN": TOKEN},
                             discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
        app = App(config, stdout=io.StringIO())
        assert sorted(app.adapters) == ["console", "discord"]
        await app.start_frontends()
        try:
            frontend = app._frontends[0].frontend
            assert await until(lambda: frontend.state == "connected")
            fake.interact("subscribe", {"query": "diffusion"})
            assert await until(lambda: fake.followups)
        finally:
            await app.stop_frontends()
            await app.aclose()
    assert fake.callbacks and fake.followups, (fake.requests, fake.callbacks)
    assert "diffusion" in fake.followups[0]["body"]["content"]
    assert ("GET", "/api/v10/users/@me") in fake.requests
