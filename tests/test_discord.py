"""Discord: embeds within limits, REST delivery through discord.py to a fake API, the /papers group."""

from dataclasses import replace
from types import SimpleNamespace

import discord
import pytest
from discord.http import Route

import handlers
from bot.adapters.discord_adapter import DiscordAdapter, answer_links, build_command_group, nonce_for
from bot.adapters.discord_render import card_buttons, card_embed, digest_embed, reply_content, reply_embeds
from bot.cards import card_for
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Digest, Match, OutboxCounts
from fakes.discord import FakeDiscord

from .fakes import due_now, paper

CH = ChannelRef("discord", "123")
NOWHERE = "http://127.0.0.1:9/api/v10"  # nothing listens on port 9
HOSTILE = paper("2411.00001", "@everyone **bold** <@123456789012345678> " + "t" * 400, "x *y* " * 2000,
                authors=("@here Mallory",), upvotes=7, source="huggingface",
                thumbnail="https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2411.00001.png",
                github="https://github.com/x/y")


@pytest.fixture
def fake(monkeypatch):
    with FakeDiscord() as server:
        # Every adapter gets the fake's address as its own api_base; discord.py's process-wide
        # default points nowhere, so a request that ignored the adapter's base would fail.
        monkeypatch.setattr(Route, "BASE", NOWHERE)
        yield server


# ---- rendering ----------------------------------------------------------------------------

def test_card_embed_escapes_and_respects_every_limit():
    embed = card_embed(card_for(HOSTILE, (Match(1, CH, "x", ("x in title",)),)))
    data = embed.to_dict()
    assert len(data["title"]) <= 256 and len(data["description"]) <= 4096 and len(embed) <= 6000
    assert len(data["fields"]) <= 25 and all(len(f["value"]) <= 1024 for f in data["fields"])
    assert "@everyone" not in data["title"] and "\\*\\*bold\\*\\*" in data["title"]
    assert "<@123456789012345678>" not in data["title"]
    assert data["author"]["name"].startswith("@\u200bhere")
    assert data["color"] == 0xFFD21E  # Hugging Face
    assert data["thumbnail"]["url"].endswith("2411.00001.png")
    assert data["url"] == "https://arxiv.org/abs/2411.00001"


def test_a_link_too_long_for_a_discord_button_is_left_out_not_the_card():
    # Discord refuses a message with a link button's URL over 512 characters (HTTP 400, not
    # retried): the card goes out without that button.
    long_page = "https://example.org/" + "p" * 600
    buttons = card_buttons(card_for(paper("2411.00001", project_page=long_page, github="https://github.com/x/y")))
    assert [label for label, _ in buttons] == ["arXiv", "PDF", "Code"]
    assert all(len(url) <= 512 for _, url in buttons)


def test_digest_is_one_embed_within_limits():
    cards = tuple(card_for(paper(f"2411.{i:05d}", f"Paper {i} *x*", upvotes=i)) for i in range(1, 500))
    embed = digest_embed(Digest(CH, "499 new papers for this channel", cards))
    data = embed.to_dict()
    assert len(data["description"]) <= 4096 and len(embed) <= 6000
    assert data["description"].startswith("• [Paper 1 \\*x\\*](https://arxiv.org/abs/2411.00001) · ▲ 1")
    assert data["footer"]["text"].startswith("and ") and "more" in data["footer"]["text"]


def test_reply_embeds_stay_within_ten_and_6000():
    embeds = reply_embeds(tuple(card_for(HOSTILE) for _ in range(15)))
    assert 1 <= len(embeds) <= 10 and sum(len(e) for e in embeds) <= 6000


def test_a_long_reply_is_cut_at_a_line_and_says_how_many_lines_are_left_out():
    # Discord's 2,000 characters: cut mid-line, `list` ended inside a code span.
    lines = [f"#{i} `diffusion model {i}` · since 2026-11-30 · 0 posted" for i in range(1, 81)]
    content = reply_content("\n".join(lines))
    assert len(content) <= 2000
    *shown, note = content.split("\n")
    assert shown == lines[:len(shown)] and note == f"… and {80 - len(shown)} more lines"
    assert reply_content("short\nreply") == "short\nreply"


def test_nonces_are_stable_and_short():
    assert nonce_for(CH, "2411.00001") == nonce_for(CH, "2411.00001")
    assert nonce_for(CH, "2411.00001") != nonce_for(ChannelRef("discord", "124"), "2411.00001")
    assert len(nonce_for(CH, "2411.00001")) <= 25


# ---- REST delivery ----------------------------------------------------------------------------

def queue(store, clock, paper_id="2411.00001", title="Latent @everyone diffusion"):
    store.add_papers([paper(paper_id, title, authors=("Ada",), github="https://github.com/x/y")], clock())
    sub = store.add_subscription(CH, "diffusion", "42", clock()).subscription
    store.enqueue(paper_id, [Match(sub.id, CH, sub.query, ("diffusion in title",))], clock())


async def test_poll_posts_embeds_with_buttons_nonce_and_no_mentions(store, clock, fake):
    queue(store, clock)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    report = await Dispatcher(store, {"discord": adapter}, clock).dispatch()
    await adapter.close()
    assert report.sent == 1
    ((channel, body),) = fake.posts
    assert channel == "123"
    assert body["allowed_mentions"] == {"parse": []}
    assert body["nonce"] == nonce_for(CH, "2411.00001") and body["enforce_nonce"] is True
    (embed,) = body["embeds"]
    assert embed["title"] == "Latent @\u200beveryone diffusion"
    buttons = body["components"][0]["components"]
    assert [(b["label"], b["url"], b["style"]) for b in buttons] == [
        ("arXiv", "https://arxiv.org/abs/2411.00001", 5), ("PDF", "https://arxiv.org/pdf/2411.00001", 5),
        ("Code", "https://github.com/x/y", 5)]
    assert store.db.execute("SELECT message_id FROM deliveries").fetchone()[0] == fake.messages["123"][0]["id"]


async def test_a_429_is_retried_by_discord_py_with_nothing_lost(store, clock, fake):
    fake.script("123", (429, {"message": "You are being rate limited.", "retry_after": 0.2, "global": False},
                        {"Via": "1.1 google", "Retry-After": "1"}))
    queue(store, clock)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    report = await Dispatcher(store, {"discord": adapter}, clock).dispatch()
    await adapter.close()
    assert report.sent == 1 and len(fake.posts) == 2
    assert fake.posts[0][1]["nonce"] == fake.posts[1][1]["nonce"]  # a retry can never duplicate
    assert store.delivery_counts() == OutboxCounts(sent=1)


@pytest.mark.parametrize("status, code, reason", [(404, 10003, "unknown channel"), (403, 50013, "missing permissions")])
async def test_a_deleted_or_forbidden_channel_is_paused(store, clock, fake, status, code, reason, make_config):
    fake.script("123", (status, {"message": "nope", "code": code}, {}))
    queue(store, clock)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    dispatcher = Dispatcher(store, {"discord": adapter}, clock)
    await dispatcher.dispatch()
    clock.advance(hours=3)
    await dispatcher.dispatch()
    await adapter.close()
    assert len(fake.posts) == 1
    assert store.channel_settings(CH).paused_reason == reason
    ctx = handlers.Context(store, make_config(), clock)
    assert f"paused ({reason})" in (await handlers.handle(ctx, handlers.request_from_text(CH, "42", "status"))).text


async def test_digest_goes_out_as_one_message(store, clock, fake):
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    cards = tuple(card_for(paper(f"2411.0000{i}", f"P{i}")) for i in range(1, 4))
    result = await adapter.post_digest(Digest(CH, "3 new papers for this channel", cards))
    await adapter.close()
    assert result.ok and len(fake.posts) == 1
    assert len(fake.posts[0][1]["embeds"]) == 1 and fake.posts[0][1]["allowed_mentions"] == {"parse": []}


async def test_pasted_links_get_a_card_reply(store, clock, fake, make_config):
    store.add_papers([paper("2411.00001", "Latent diffusion")], clock())
    ctx = handlers.Context(store, make_config(), clock)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)

    async def on_command(request):
        return await handlers.handle(ctx, request)

    text = "look: https://arxiv.org/abs/2411.00001v2 and https://example.com"
    assert handlers.paper_links(text) == ["2411.00001"]
    assert await answer_links(on_command, adapter, "123", "555", "42", text) == 1
    assert await answer_links(on_command, adapter, "123", "556", "42", "no links here") == 0
    await adapter.close()
    ((channel, body),) = fake.posts
    assert body["message_reference"]["message_id"] == 555 and body["embeds"][0]["title"] == "Latent diffusion"
    assert body["allowed_mentions"] == {"parse": []}


# ---- the /papers command group ------------------------------------------------------------------

class FakeInteraction:
    """What the group's callbacks use of a discord.Interaction."""

    def __init__(self, manage=True, channel_id=123, user_id=42, guild_id=7000):
        self.channel_id = channel_id
        self.guild_id = guild_id  # None: a direct message with the bot
        self.user = SimpleNamespace(id=user_id)
        self.permissions = discord.Permissions(manage_channels=manage)
        self.deferred = []
        self.sent = []
        self.response = SimpleNamespace(defer=self._defer)
        self.followup = SimpleNamespace(send=self._send)

    async def _defer(self, **kwargs):
        self.deferred.append(kwargs)

    async def _send(self, **kwargs):
        self.sent.append(kwargs)


@pytest.fixture
def group(store, make_config, clock):
    ctx = handlers.Context(store, make_config(), clock)

    async def on_command(request):
        return await handlers.handle(ctx, request)

    def on_complete(channel, verb, param, typed):
        return handlers.complete(ctx, channel, verb, param, typed)

    return build_command_group(on_command, on_complete)


def sub_command(group, name):
    return next(c for c in group.commands if c.name == name)


def test_one_subcommand_per_shared_command_with_docstring_descriptions(group):
    assert {c.name for c in group.commands} == set(handlers.COMMANDS)
    for command in group.commands:
        assert command.description == handlers.COMMANDS[command.name].summary[:100]
    params = {p.name: p for p in sub_command(group, "subscribe").parameters}
    assert not params["query"].required and not params["backfill"].required  # no query: the subscribe form
    assert params["backfill"].min_value == 1 and params["backfill"].max_value == 20
    trending = {p.name: p for p in sub_command(group, "trending").parameters}["period"]
    assert [c.value for c in trending.choices] == ["today", "week", "month"]


async def test_callbacks_defer_then_reach_the_shared_handlers(group, store):
    interaction = FakeInteraction()
    await sub_command(group, "subscribe").callback(interaction, query="Diffusion", backfill=None)
    assert interaction.deferred == [{"ephemeral": True, "thinking": True}]
    (sent,) = interaction.sent
    assert sent["ephemeral"] is True and sent["content"].startswith("Subscribed this channel to `diffusion` (#1).")
    assert sent["allowed_mentions"].everyone is False
    assert store.subscriptions(CH)[0].query == "diffusion"
    listing = FakeInteraction()
    await sub_command(group, "list").callback(listing)
    assert "#1 `diffusion`" in listing.sent[0]["content"]


async def test_changing_a_channel_needs_manage_channels(group, store):
    interaction = FakeInteraction(manage=False)
    await sub_command(group, "subscribe").callback(interaction, query="diffusion", backfill=None)
    assert "right to manage this channel" in interaction.sent[0]["content"] and store.subscriptions() == []
    lookup = FakeInteraction(manage=False)
    await sub_command(group, "search").callback(lookup, words="diffusion")
    assert "right to manage" not in lookup.sent[0]["content"]


async def test_digest_options_become_the_shared_syntax(group, store):
    interaction = FakeInteraction()
    await sub_command(group, "digest").callback(interaction, mode="weekly", time="18:30", day="fri")
    assert "a weekly digest on Fri at 18:30 (UTC)" in interaction.sent[0]["content"]
    off = FakeInteraction()
    await sub_command(group, "digest").callback(off, mode="off", time=None, day=None)
    assert off.sent[0]["content"].startswith("Digests are off")


async def test_autocomplete_of_subscription_ids_and_time_zones(group, store, clock):
    store.add_subscription(CH, "diffusion", "42", clock())
    store.add_subscription(CH, "agents", "42", clock())
    unsubscribe = sub_command(group, "unsubscribe")
    choices = await unsubscribe._params["subscription"].autocomplete(FakeInteraction(), "diff")
    assert [(c.name, c.value) for c in choices] == [("#1 diffusion", "1")]
    zones = await sub_command(group, "timezone")._params["zone"].autocomplete(FakeInteraction(), "berl")
    assert [c.value for c in zones] == ["Europe/Berlin"]


def test_cli_subscribe_then_poll_posts_to_the_discord_channel(tmp_path, capsys, fake, server, monkeypatch):
    from bot.cli import main

    from .fakes import hf_json

    server.route("/api/daily_papers", hf_json())
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "bot.db"}"\n[sources.huggingface]\nbase_url = "{server.url}"\n'
                      f'[sources.arxiv]\nenabled = false\n[delivery]\nmax_age_days = 100000\n'
                      f'[discord]\napi_base = "{fake.api_base}"\n')
    monkeypatch.setenv("DISCORD_TOKEN", "discord-cli-token-123456")
    assert main(["--config", str(config), "command", "--channel", "discord:123", "--user", "42",
                 "subscribe diffusion"]) == 0
    assert main(["--config", str(config), "poll"]) == 0
    out, err = capsys.readouterr()
    assert [channel for channel, _ in fake.posts] == ["123", "123"]
    titles = {body["embeds"][0]["title"] for _, body in fake.posts}
    assert titles == {"SMITE: Segment Me In TimE",
                      "MotionCLR: Motion Generation and Training-free Editing via Understanding Attention Mechanisms"}
    assert "delivered: 2 sent" in out and "discord-cli-token-123456" not in out + err


async def test_after_a_crash_a_discord_post_that_went_out_is_found(store, clock, fake):
    from datetime import datetime, timezone

    clock.now = datetime.now(timezone.utc)
    for paper_id in ("2411.00001", "2411.00002"):
        queue(store, clock, paper_id)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    first, second = due_now(store, clock())
    store.claim_delivery(first.id, clock())
    store.claim_delivery(second.id, clock())
    assert (await adapter.post(CH, card_for(store.get_paper(first.paper_id)))).ok  # then killed
    dispatcher = Dispatcher(store, {"discord": adapter}, clock)
    assert await dispatcher.recover() == (1, 1)
    await dispatcher.dispatch()
    await adapter.close()
    assert sorted(m["embeds"][0]["url"] for m in fake.messages["123"]) == [
        "https://arxiv.org/abs/2411.00001", "https://arxiv.org/abs/2411.00002"]


async def test_a_resend_with_the_same_nonce_returns_the_first_message(fake):
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    card = card_for(paper("2411.00001", "Once"))
    first = await adapter.post(CH, card)
    again = await adapter.post(CH, card)
    await adapter.close()
    assert first.message_id == again.message_id and len(fake.messages["123"]) == 1


# ---- rate limits: the channel's bucket and the global limit --------------------------------

def _card(i: int):
    return card_for(paper(f"2411.{i:05d}", f"Paper {i}"))


async def test_a_post_that_empties_its_bucket_returns_without_sleeping_out_the_reset(fake):
    # discord.py alone sleeps a bucket's reset out before the request that emptied it returns;
    # the dispatcher's slot for that channel would be held for it after the channel's last post.
    import time

    fake.channel_limit = (1, 30.0)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    try:
        result = await adapter.post(CH, _card(1))
        assert result.ok
        start, used = fake.windows[CH.channel_id]
        assert used == 1 and time.monotonic() < start + 30.0  # back while the bucket is still empty
        other = ChannelRef("discord", "124")  # another channel's bucket is its own
        assert (await adapter.post(other, _card(2))).ok
    finally:
        await adapter.close()  # the refill left waiting is cancelled
    assert fake.rate_limited == 0


async def test_a_channel_past_its_bucket_waits_for_the_refill_without_a_429(fake):
    fake.channel_limit = (2, 0.3)
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    try:
        results = [await adapter.post(CH, _card(i)) for i in range(5)]
    finally:
        await adapter.close()
    assert all(r.ok for r in results) and len(fake.messages[CH.channel_id]) == 5
    assert fake.rate_limited == 0  # each post after the second of a window waited for the refill
    times = fake.post_times[CH.channel_id]  # windows of two: posts 0-1, 2-3, 4, each a refill after the last
    assert times[2] - times[0] >= 0.3 and times[4] - times[2] >= 0.3


async def test_the_adapter_keeps_within_the_global_limit_ahead_of_time(fake):
    import asyncio

    fake.global_limit = (5, 0.5)
    channels = [ChannelRef("discord", str(700 + n)) for n in range(12)]
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base, global_limit=(5, 0.5))
    try:
        results = await asyncio.gather(*(adapter.post(c, _card(i)) for i, c in enumerate(channels)))
    finally:
        await adapter.close()
    assert all(r.ok for r in results) and fake.global_limited == fake.rate_limited == 0
    assert sorted(fake.messages) == sorted(c.channel_id for c in channels)


async def test_a_global_429_stops_every_request_and_nothing_is_lost(fake):
    import asyncio

    fake.global_limit = (5, 0.5)
    channels = [ChannelRef("discord", str(700 + n)) for n in range(12)]
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base, global_limit=None)  # not kept
    try:
        results = await asyncio.gather(*(adapter.post(c, _card(i)) for i, c in enumerate(channels)))
    finally:
        await adapter.close()
    assert fake.global_limited > 0  # `global: true` 429s, which discord.py waited out
    assert all(r.ok for r in results) and sorted(fake.messages) == sorted(c.channel_id for c in channels)
    assert all(len(m) == 1 for m in fake.messages.values())


async def test_links_stored_before_the_link_rule_are_dropped_or_encoded_on_the_card(store, clock, fake):
    # Papers stored before Hugging Face's links were checked on the way in keep them as sent:
    # Discord refuses a whole message whose button URL has a space or no host (HTTP 400, never
    # retried), and `<`, `>`, quotes or accents are not a URL's. Cards apply the source's rule.
    old = paper("2411.00001", "Latent diffusion", source="huggingface", upvotes=3,
                github="https://github.com/a b", project_page='https://x.org/<p>"q"/café',
                thumbnail="https://")
    store.add_papers([old], clock())
    assert store.get_paper("2411.00001").github == "https://github.com/a b"  # as an old version stored it
    sub = store.add_subscription(CH, "diffusion", "42", clock()).subscription
    store.enqueue(old.id, [Match(sub.id, CH, sub.query, ("diffusion in title",))], clock())
    adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
    assert (await Dispatcher(store, {"discord": adapter}, clock).dispatch()).sent == 1
    await adapter.close()
    ((_, body),) = fake.posts
    buttons = {b["label"]: b["url"] for b in body["components"][0]["components"]}
    assert "Code" not in buttons and "thumbnail" not in body["embeds"][0]
    assert buttons["Project page"] == "https://x.org/%3Cp%3E%22q%22/caf%C3%A9"
    card = card_for(replace(old, github="github.com/x", project_page="https://github.com/x/y",
                            thumbnail="https://cdn.example/a b.png"))
    assert [link.label for link in card.links] == ["arXiv", "PDF", "Hugging Face", "Project page"]
    assert card.thumbnail is None and card.project_page == "https://github.com/x/y"
