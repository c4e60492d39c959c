"""Discord's subscribe form over the protocol-level fake gateway: `/papers subscribe` without a query
answers with a modal (interaction response type 9), its submission (interaction type 5,
MODAL_SUBMIT) shows the preview ephemerally with Confirm / Edit / Cancel, and Confirm subscribes
the channel the form was opened from with the same checks as `/papers subscribe <query>`."""

from __future__ import annotations

import pytest
from discord.http import Route

from bot.adapters.discord_adapter import DiscordAdapter
from bot.models import ChannelRef
from fakes.discord_gateway import CHANNEL_ID, TOKEN, USER_ID, FakeDiscordGateway

from .fakes import paper
from .test_discord_gateway import NOWHERE, assert_no_leaks_or_tracebacks, close_within, start, until

CH = ChannelRef("discord", CHANNEL_ID)
MANAGE = 1 << 4


@pytest.fixture
def fake(monkeypatch):
    with FakeDiscordGateway() as server:
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        yield server


@pytest.fixture
async def bot(fake, store, clock, make_config):
    config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
    adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
    running = await start(store, config, adapter, clock)
    assert await until(lambda: running.frontend.state == "connected")
    yield running
    await close_within(running)
    await adapter.close()


def callbacks(fake, token: str) -> list[dict]:
    return [c["body"] for c in fake.callbacks if c["token"] == token]


def followups(fake, token: str) -> list[dict]:
    return [f for f in fake.followups if f["token"] == token]


def buttons(message: dict) -> dict[str, dict]:
    return {b["label"]: b for row in message["components"] for b in row["components"]}


async def open_and_submit(fake, query: str) -> dict:
    """Open the form, submit `query`: the ephemeral preview message the bot sent."""
    token = fake.interact("subscribe")
    assert await until(lambda: callbacks(fake, token))
    token = fake.submit_modal({"Query": query})
    assert await until(lambda: followups(fake, token))
    (sent,) = followups(fake, token)
    assert callbacks(fake, token) == [{"type": 5, "data": {"flags": 64}}]  # deferred, ephemeral
    assert sent["body"]["flags"] & 64
    return sent["message"]


async def test_subscribe_without_a_query_opens_a_modal(bot, fake, caplog):
    token = fake.interact("subscribe")
    assert await until(lambda: callbacks(fake, token))
    ((answer,),) = [callbacks(fake, token)]
    assert answer["type"] == 9  # MODAL: the first and only answer, nothing deferred
    modal = answer["data"]
    assert modal["title"] == "Subscribe to papers" and modal["custom_id"]
    ((text_input,),) = [row["components"] for row in modal["components"]]
    assert text_input["type"] == 4 and text_input["label"] == "Query" and text_input["max_length"] == 500
    assert text_input["required"] is True and "value" not in text_input
    assert fake.followups == []
    assert_no_leaks_or_tracebacks(caplog)


async def test_without_manage_channels_no_modal_opens_and_the_reply_says_why(bot, fake):
    token = fake.interact("subscribe", permissions=0)
    assert await until(lambda: callbacks(fake, token))
    (answer,) = callbacks(fake, token)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64
    assert "right to manage this channel" in answer["data"]["content"]
    assert not [c for c in fake.callbacks if c["body"]["type"] == 9]


async def test_submitting_shows_the_preview_and_confirm_subscribes(bot, fake, store, clock, caplog):
    store.add_papers([paper("2411.00001", "Latent diffusion @everyone **now**", upvotes=4),
                      paper("2411.00002", "Video diffusion"), paper("2411.00003", "Robots")], clock())
    message = await open_and_submit(fake, "Diffusion -video")
    (embed,) = message["embeds"]
    assert "**Understood as:** diffusion -video" in embed["description"]
    assert "would have matched 1 of 3 stored papers" in embed["description"]
    assert "Latent diffusion @\u200beveryone \\*\\*now\\*\\*" in embed["description"]  # escaped: pings nobody
    assert "Video diffusion" not in embed["description"]
    assert set(buttons(message)) == {"Confirm", "Edit", "Cancel"} and not buttons(message)["Confirm"].get("disabled")
    assert store.subscriptions() == []  # nothing until Confirm
    token = fake.click(message, "Confirm")
    assert await until(lambda: followups(fake, token))
    assert callbacks(fake, token) == [{"type": 6}]  # DEFERRED_UPDATE_MESSAGE: the preview message is edited
    (edited,) = followups(fake, token)
    assert edited["method"] == "PATCH"
    assert edited["body"]["content"].startswith("Subscribed this channel to `diffusion -video` (#1).")
    assert edited["body"]["components"] == [] and edited["body"]["embeds"] == []
    (sub,) = store.subscriptions(CH)
    assert sub.query == "diffusion -video" and sub.created_by == USER_ID
    assert_no_leaks_or_tracebacks(caplog)


async def test_a_bad_query_shows_why_and_cannot_be_confirmed(bot, fake, store):
    message = await open_and_submit(fake, '"large language')
    (embed,) = message["embeds"]
    assert "unclosed quote at column 1" in embed["description"] and "Usage" not in embed["description"]
    assert buttons(message)["Confirm"]["disabled"] is True
    token = fake.click(message, "Edit")  # reopens the modal with what was typed
    assert await until(lambda: callbacks(fake, token))
    (answer,) = callbacks(fake, token)
    assert answer["type"] == 9
    ((text_input,),) = [row["components"] for row in answer["data"]["components"]]
    assert text_input["value"] == '"large language'
    assert store.subscriptions() == []


async def test_cancel_subscribes_nothing(bot, fake, store):
    message = await open_and_submit(fake, "diffusion")
    token = fake.click(message, "Cancel")
    assert await until(lambda: callbacks(fake, token))
    (answer,) = callbacks(fake, token)
    assert answer["type"] == 7 and answer["data"]["content"] == "Cancelled: nothing was subscribed."
    assert answer["data"]["components"] == []
    assert store.subscriptions() == []


async def test_confirm_checks_the_right_to_manage_again(bot, fake, store):
    message = await open_and_submit(fake, "diffusion")
    token = fake.click(message, "Confirm", permissions=0)  # the role was taken away meanwhile
    assert await until(lambda: followups(fake, token))
    assert "right to manage this channel" in followups(fake, token)[0]["body"]["content"]
    assert store.subscriptions() == []


async def test_the_channel_limit_is_said_on_confirm(bot, fake, store, clock, make_config):
    limit = make_config().max_subscriptions_per_channel
    for n in range(limit):
        store.add_subscription(CH, f"word{n}", "U1", clock())
    message = await open_and_submit(fake, "diffusion")
    token = fake.click(message, "Confirm")
    assert await until(lambda: followups(fake, token))
    assert "the limit" in followups(fake, token)[0]["body"]["content"]
    assert len(store.subscriptions(CH)) == limit


def test_the_preview_embed_escapes_the_query_and_stays_within_discord_limits():
    import handlers
    from bot.adapters.discord_render import preview_embed
    from bot.cards import card_for
    from bot.models import QueryPreview

    hostile = '@everyone **"' + "x" * 600
    refused = QueryPreview(hostile, error="unclosed quote at column 12")
    embed = preview_embed(handlers.subscribe_form(CH, hostile, refused))
    assert "@\u200beveryone \\*\\*" in embed.description and "unclosed quote at column 12" in embed.description
    worst = tuple(card_for(paper(f"2411.0000{n}", "*_`|" * 100, upvotes=1)) for n in range(5))
    embed = preview_embed(handlers.subscribe_form(CH, "q", QueryPreview("q", normalized="*" * 500, estimate="_" * 600,
                                                                        examples=worst)))
    assert len(embed.description) <= 4096 and len(embed) <= 6000
    assert embed.description.count("](https://arxiv.org/abs/") == 5
