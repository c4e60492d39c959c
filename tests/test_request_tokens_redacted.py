"""The credentials that come with a request are not logged, even at -v: a Slack command's
response_url (whoever has it can post to the channel for 30 minutes) and a Discord
interaction's token (whoever has it can answer, and follow up, as the bot for 15 minutes).
slack_sdk and discord.py name both in their debug lines; the log handler redacts them."""

from __future__ import annotations

import io
import logging
import time
from urllib.parse import urlencode

import pytest
from discord.http import Route

from bot import cli
from bot.adapters.discord_adapter import DiscordAdapter
from fakes.discord_gateway import TOKEN, FakeDiscordGateway

from .test_discord_gateway import NOWHERE, close_within, start, until
from .test_slack import post, sign, wait_for
from .test_slack_oauth import C_A, TOKEN_A, bot, install  # noqa: F401 (bot: the fixture)

RESPONSE_SECRET = "Zk3xQ9vR2mW8tY4uP6sL1nB7"


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


async def test_a_slack_commands_response_url_is_not_logged_at_v(bot, slack, store):  # noqa: F811
    logs = io.StringIO()
    cli.setup_logging(bot.config, True, logs)
    try:
        slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
        assert (await install(bot, "code-a"))[0] == 200
        # A response_url as Slack makes them: /commands/<team>/<id>/<secret>
        body = urlencode({"token": "x", "team_id": "TA", "channel_id": C_A.channel_id, "user_id": "U1",
                          "command": "/papers", "text": "help", "trigger_id": "1.2.3",
                          "response_url": f"{slack.url}/commands/TA/1234567890/{RESPONSE_SECRET}"})
        status, _ = await post(f"{bot.url}/slack/events", body, sign(body, int(time.time())))
        assert status == 200
        await wait_for(lambda: slack.called(RESPONSE_SECRET))  # the reply went to the response_url
    finally:
        logging.getLogger().handlers[:] = []  # the test's stream only while it runs
    text = logs.getvalue()
    assert "/commands/TA/1234567890/" in text  # slack_sdk's debug line was there
    assert RESPONSE_SECRET not in text and TOKEN_A not in text


async def test_a_discord_interactions_token_is_not_logged_at_v(monkeypatch, store, clock, make_config):
    logs = io.StringIO()
    with FakeDiscordGateway() as fake:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        config = make_config(discord={"api_base": fake.api_base})
        cli.setup_logging(config, True, logs)
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: running.frontend.state == "connected")
            token = fake.interact("list")
            assert await until(lambda: len(fake.followups) == 1)
        finally:
            await close_within(running)
            await adapter.close()
            logging.getLogger().handlers[:] = []
    text = logs.getvalue()
    assert "/callback has returned status code 200" in text  # discord.py's debug line was there
    assert token not in text and TOKEN not in text
