"""People and feedback, through the fake platforms: `subscribe --me` mentions (and nobody else),
personal feeds in direct messages, `list --me`, Save / Not relevant buttons (Slack block actions,
Discord component interactions), reading lists, the weekly most-saved digest, the Slack App Home."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from discord.http import Route

import handlers
from bot.adapters.discord_adapter import DiscordAdapter
from bot.adapters.discord_adapter import mentions as discord_mentions
from bot.adapters.slack_adapter import SlackAdapter, make_web_client
from bot.adapters.slack_render import card_blocks, card_text
from bot.cards import card_for
from bot.dispatch import Dispatcher
from bot.models import ChannelFeedback, ChannelRef, Match
from bot.most_saved import dispatch_most_saved
from fakes.discord import FakeDiscord
from fakes.discord_gateway import CHANNEL_ID, TOKEN, USER_ID, FakeDiscordGateway
from fakes.http import Canned
from storage import Store
from storage.migrations import migrations

from .fakes import paper
from .test_discord_gateway import close_within, start, until
from .test_slack import SECRET, bolt, command_body, post, sign, wait_for  # noqa: F401  (bolt: a fixture)

C123 = ChannelRef("slack", "C123")
PAPER = "2411.00001"


def _ported(store, *methods):
    """Skip on a PgStore that lacks these yet (areas of the PostgreSQL port not merged)."""
    missing = [m for m in methods if not hasattr(store, m)]
    if missing:
        pytest.skip(f"{type(store).__name__} has no {', '.join(missing)} yet")


@pytest.fixture
def ctx(store, make_config, clock):
    return handlers.Context(store, make_config(), clock)


async def run(ctx, channel, user, text, can_manage=True):
    return await handlers.handle(ctx, handlers.request_from_text(channel, user, text, can_manage))


def deliver(store, clock, channel, sub, title="Diffusion models", paper_id=PAPER, terms=("diffusion in title",),
            **kw):
    store.add_papers([paper(paper_id, title, **kw)], clock())
    store.enqueue(paper_id, [Match(sub.id, channel, sub.query, terms)], clock())


async def press(url, slack, action: dict, user="UADMIN", channel="C123", n=1):
    payload = {"type": "block_actions", "user": {"id": user}, "channel": {"id": channel}, "team": {"id": "T1"},
               "response_url": f"{slack.url}/respond/{n}", "trigger_id": "1",
               "container": {"type": "message", "channel_id": channel, "is_ephemeral": False},
               "actions": [{"type": "button", "block_id": f"feedback:{PAPER}", **action}]}
    body = urlencode({"payload": json.dumps(payload)})
    status, _ = await post(url, body, sign(body, int(time.time())))
    assert status == 200
    await wait_for(lambda: slack.called(str(n)))
    return slack.called(str(n))[0]


# ---- parsing and storage ------------------------------------------------------------------------

def test_me_is_a_flag_that_takes_no_value_wherever_it_is():
    assert handlers.parse_text("subscribe --me diffusion model --backfill 2") == (
        "subscribe", {"me": "", "backfill": "2", "query": "diffusion model"})
    assert handlers.parse_text('subscribe "world model" --me') == ("subscribe", {"me": "", "query": '"world model"'})
    assert handlers.parse_text("list --me") == ("list", {"me": ""})
    assert "me" not in handlers.parse_text("subscribe --message x")[1]  # not --me (handle() refuses --message)


async def test_an_unknown_option_near_me_is_still_refused(ctx):
    reply = await run(ctx, C123, "U1", "subscribe --message diffusion")
    assert not reply.ok and "has no option `--message`" in reply.text


def test_m018_upgrades_a_database_with_data_and_is_idempotent(tmp_path, clock):
    path = tmp_path / "old.db"
    old = Store(path)
    sub = old.add_subscription(C123, "diffusion", "U1", clock()).subscription
    old.add_papers([paper(PAPER, "Diffusion")], clock())
    old.db.executescript("DROP TABLE subscription_people; DROP TABLE feedback; DROP TABLE most_saved_digests;")
    old.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm018_people_and_feedback'")
    old.db.conn.commit()
    old.close()
    store = Store(path)  # migrates
    assert [s.query for s in store.subscriptions(C123)] == ["diffusion"]
    assert store.add_subscriber(sub.id, "U1", clock()) and not store.add_subscriber(sub.id, "U1", clock())
    store.record_feedback("U1", C123, PAPER, "save", clock())
    m018 = next(m for m in migrations._migrations if m.name == "m018_people_and_feedback")
    m018.fn(store.db)  # again: nothing changes, nothing fails
    assert store.subscribers([sub.id]) == ["U1"] and store.channel_feedback(C123).saved == (PAPER,)
    store.close()


@pytest.mark.backends
def test_feedback_is_stored_once_with_who_where_what_and_when(store, clock):
    _ported(store, "add_papers")
    store.add_papers([paper(PAPER, "A"), paper("2411.00002", "B")], clock())
    first = store.record_feedback("U1", C123, PAPER, "save", clock())
    clock.advance(minutes=5)
    again = store.record_feedback("U1", C123, PAPER, "save", clock())
    assert first.created and not again.created and again.at == first.at  # the first time is kept
    store.record_feedback("U2", C123, "2411.00002", "not_relevant", clock())
    clock.advance(minutes=5)
    store.record_feedback("U2", C123, "2411.00002", "save", clock())
    row = store.db.execute("SELECT user_id, channel, paper_id, kind, created_at FROM feedback ORDER BY id").fetchone()
    assert row[:4] == ("U1", "slack:C123", PAPER, "save")
    assert str(row[4]).replace(" ", "T") == "2026-11-27T12:00:00+00:00"  # SQLite's text, PostgreSQL's timestamptz
    assert store.channel_feedback(C123) == ChannelFeedback(saved=("2411.00002", PAPER), not_relevant=("2411.00002",))
    assert store.channel_feedback(ChannelRef("slack", "C999")) == ChannelFeedback()


# ---- --me: mentions, only of those people ---------------------------------------------------

async def test_cards_mention_exactly_the_people_who_subscribed_with_me_on_slack(ctx, store, clock, slack):
    first = await run(ctx, C123, "U1", "subscribe --me diffusion")
    assert first.text.startswith("Subscribed this channel to `diffusion` (#1).") and "mention you" in first.text
    second = await run(ctx, C123, "U2", "subscribe diffusion --me")
    assert second.text.startswith("This channel is already subscribed") and "Its cards mention you." in second.text
    await run(ctx, C123, "U3", "subscribe diffusion")  # subscribed, not --me: never mentioned
    await run(ctx, C123, "U4", "subscribe video --me")  # did not match this paper
    (sub, _) = store.subscriptions(C123)
    deliver(store, clock, C123, sub, title="Diffusion <@U3> <!here> <!channel>")
    adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), min_interval=0)
    assert (await Dispatcher(store, {"slack": adapter}, clock).dispatch()).sent == 1
    (body,) = slack.called("chat.postMessage")
    assert body["text"].startswith("<@U1> <@U2> ")
    whole = json.dumps(body)
    assert sorted(set(re.findall(r"<[@!]([^>]*)>", whole))) == ["U1", "U2"]  # no <@U3>, <!here>, <!channel>
    assert "For <@U1> <@U2>" in whole


def test_only_well_formed_user_ids_become_mentions():
    card = card_for(paper(PAPER, "T"))
    from dataclasses import replace

    hostile = replace(card, mentions=("U1", "<!channel>", "here", "U2> <!everyone", "555", "@everyone"))
    blocks = json.dumps([b.to_dict() for b in card_blocks(hostile)])
    assert re.findall(r"<[@!][^>]*>", blocks + card_text(hostile)) == ["<@U1>", "<@U1>"]
    content, users = discord_mentions(hostile)
    assert content == "<@555>" and [u.id for u in users] == [555]


async def test_discord_cards_allow_only_the_me_subscribers_as_mentions(ctx, store, clock, monkeypatch):
    here, other = ChannelRef("discord", "123"), ChannelRef("discord", "124")
    await run(ctx, here, "555", "subscribe --me diffusion")
    await run(ctx, other, "556", "subscribe diffusion")
    deliver(store, clock, here, store.subscriptions(here)[0], title="Diffusion @everyone <@556>")
    store.enqueue(PAPER, [Match(store.subscriptions(other)[0].id, other, "diffusion", ("diffusion in title",))],
                  clock())
    with FakeDiscord() as fake:
        monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")
        adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
        assert (await Dispatcher(store, {"discord": adapter}, clock).dispatch()).sent == 2
        await adapter.close()
    posts = dict(fake.posts)
    assert posts["123"]["content"] == "<@555>"
    allowed = posts["123"]["allowed_mentions"]
    assert allowed["parse"] == [] and [int(u) for u in allowed["users"]] == [555]  # nobody else, no roles
    assert posts["124"]["allowed_mentions"] == {"parse": []} and not posts["124"].get("content")
    feedback = [c["custom_id"] for c in posts["123"]["components"][1]["components"]]
    assert feedback == [f"papers:save:{PAPER}", f"papers:not-relevant:{PAPER}"]


async def test_a_bursts_digest_mentions_the_me_subscribers_of_its_papers_too(ctx, store, clock, slack, monkeypatch):
    await run(ctx, C123, "U1", "subscribe --me diffusion")
    await run(ctx, ChannelRef("discord", "123"), "555", "subscribe --me diffusion")
    for channel in (C123, ChannelRef("discord", "123")):
        sub = store.subscriptions(channel)[0]
        deliver(store, clock, channel, sub, paper_id="2411.00001")
        deliver(store, clock, channel, sub, paper_id="2411.00002")
    slack_adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), min_interval=0)
    with FakeDiscord() as fake:
        monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")
        discord_adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
        adapters = {"slack": slack_adapter, "discord": discord_adapter}
        assert (await Dispatcher(store, adapters, clock, cards_per_cycle=1).dispatch()).sent == 4
        await discord_adapter.close()
    card, digest = slack.called("chat.postMessage")
    assert card["text"].startswith("<@U1> ") and digest["text"].startswith("<@U1> ")
    assert digest["blocks"][-1]["elements"][0]["text"] == "For <@U1>"
    (_, card), (_, digest) = fake.posts
    assert card["content"] == digest["content"] == "<@555>" and digest["embeds"][0]["title"].startswith("1 more")
    assert [int(u) for u in digest["allowed_mentions"]["users"]] == [555] and digest["allowed_mentions"]["parse"] == []


@pytest.mark.backends
async def test_removing_a_subscription_removes_its_mentions(ctx, store, clock):
    _ported(store, "preview_candidates")  # subscribe previews
    await run(ctx, C123, "U1", "subscribe --me diffusion")
    (sub,) = store.subscriptions(C123)
    await run(ctx, C123, "U1", f"unsubscribe {sub.id}")
    assert store.subscribers([sub.id]) == []


@pytest.mark.backends
async def test_without_the_manage_right_me_joins_an_existing_subscription_and_leaves_it(ctx, store):
    _ported(store, "preview_candidates")  # subscribe previews
    await run(ctx, C123, "UADMIN", "subscribe diffusion")
    refused = await run(ctx, C123, "U1", "subscribe --me video", can_manage=False)
    assert not refused.ok and "with `--me` you can join one it has" in refused.text
    assert not (await run(ctx, C123, "U1", "subscribe diffusion", can_manage=False)).ok  # no --me: the right
    assert not (await run(ctx, C123, "U1", "subscribe --me diffusion --backfill 3", can_manage=False)).ok
    joined = await run(ctx, C123, "U1", "subscribe --me Diffusion", can_manage=False)
    assert joined.text == "#1 `diffusion`: its cards now mention you." and store.subscribers([1]) == ["U1"]
    assert not (await run(ctx, C123, "U1", "unsubscribe 1", can_manage=False)).ok
    left = await run(ctx, C123, "U1", "unsubscribe all --me", can_manage=False)
    assert left.text == "Stopped mentioning you on #1 `diffusion`. The subscriptions stay."
    assert store.subscribers([1]) == [] and [s.query for s in store.subscriptions(C123)] == ["diffusion"]
    again = await run(ctx, C123, "U1", "unsubscribe 1 --me", can_manage=False)
    assert again.text == "#1 `diffusion` did not mention you."


@pytest.mark.backends
async def test_list_me_lists_my_subscriptions_across_channels_of_the_platform(ctx, store):
    _ported(store, "preview_candidates")  # subscribe previews
    await run(ctx, C123, "U1", "subscribe --me diffusion")
    await run(ctx, ChannelRef("slack", "C999"), "U2", "subscribe agents")
    await run(ctx, ChannelRef("slack", "DU1"), "U1", "subscribe world model")  # U1's own feed
    await run(ctx, ChannelRef("discord", "1"), "U1", "subscribe video")  # another platform's "U1"
    reply = await run(ctx, ChannelRef("slack", "C555"), "U1", "list --me")
    assert reply.text.splitlines() == ["Your subscriptions (2):",
                                       "#1 `diffusion` · in slack:C123 · mentions you · 0 posted",
                                       "#3 `world model` · in slack:DU1 · 0 posted"]
    assert "no subscriptions" in (await run(ctx, C123, "U9", "list --me")).text


# ---- Slack: buttons, personal feeds, App Home ------------------------------------------------------

async def test_save_button_puts_the_paper_on_my_and_the_channels_reading_list(bolt, slack, store, clock):  # noqa: F811
    store.add_papers([paper(PAPER, "Latent diffusion <!channel>")], clock())
    reply = await press(bolt, slack, {"action_id": "papers_save", "value": PAPER})
    assert reply["response_type"] == "ephemeral" and reply["text"].startswith("Saved “Latent diffusion")
    assert [b["elements"][0]["text"]["text"] for b in reply["blocks"] if b["type"] == "actions"] == ["Unsave"]
    again = await press(bolt, slack, {"action_id": "papers_save", "value": PAPER}, n=2)
    assert "already" in again["text"]
    assert store.channel_feedback(C123).saved == (PAPER,)
    listing = await press(bolt, slack, {"action_id": "papers_run_0",
                                        "value": json.dumps(["saved", {"me": "yes"}])}, channel="C999", n=3)
    assert listing["text"].splitlines()[0] == "Your reading list:"
    shown = listing["blocks"][0]["text"]["text"]  # what Slack shows (`text` is the notification fallback)
    assert "https://arxiv.org/abs/2411.00001" in shown and "&lt;!channel&gt;" in shown
    body = command_body(slack, "saved", user="UOTHER")
    await post(bolt, body, sign(body, int(time.time())))
    await wait_for(lambda: slack.called("1") and len(slack.called("1")) > 1)
    assert slack.called("1")[-1]["text"].startswith("This channel's reading list:")


async def test_not_relevant_offers_to_mute_what_matched_and_the_offer_mutes(bolt, slack, store, clock):  # noqa: F811
    sub = store.add_subscription(C123, "diffusion OR video", "U1", clock()).subscription
    deliver(store, clock, C123, sub, title="Video", terms=("video in title",), categories=("cs.RO",))
    reply = await press(bolt, slack, {"action_id": "papers_not_relevant", "value": PAPER}, user="UOTHER")
    assert reply["text"].startswith("Noted: “Video” (arXiv:2411.00001) is not relevant here.")
    (actions,) = [b for b in reply["blocks"] if b["type"] == "actions"]
    offers = [(e["text"]["text"], json.loads(e["value"])) for e in actions["elements"]]
    assert offers == [("Mute video in #1", ["mute", {"subscription": "1", "term": "video"}]),
                      ("Mute cat:cs.RO in #1", ["mute", {"subscription": "1", "term": "cat:cs.RO"}])]
    assert store.channel_feedback(C123).not_relevant == (PAPER,)
    # Pressing an offer is a mute by whoever presses: a non-admin is refused, an admin mutes.
    value = actions["elements"][0]["value"]
    refused = await press(bolt, slack, {"action_id": "papers_run_0", "value": value}, user="UOTHER", n=2)
    assert "right to manage" in refused["text"] and store.subscriptions(C123)[0].query == "diffusion OR video"
    done = await press(bolt, slack, {"action_id": "papers_run_0", "value": value}, n=3)
    assert done["text"] == "#1 is now `(diffusion OR video) -video`."


async def test_not_relevant_never_offers_to_mute_what_the_query_requires(ctx, store, clock):
    sub = store.add_subscription(C123, "diffusion", "U1", clock()).subscription
    deliver(store, clock, C123, sub)
    reply = await run(ctx, C123, "U1", f"not-relevant {PAPER}")
    assert reply.actions == () and "nothing" not in reply.text and "could narrow" in reply.text
    # It says which subscription posted it, and what stops that one instead.
    assert "#1 `diffusion` posted it for what its query needs" in reply.text
    assert "`/papers unsubscribe 1`" in reply.text


async def test_not_relevant_of_a_paper_no_subscription_posted_says_so(ctx, store, clock):
    store.add_papers([paper(PAPER, "Found by search")], clock())
    reply = await run(ctx, C123, "U1", f"not-relevant {PAPER}")
    assert reply.actions == () and "No subscription of this channel posted it" in reply.text


async def test_a_direct_message_is_my_own_feed_even_when_only_admins_may_change_channels(bolt, slack, store):  # noqa: F811
    body = command_body(slack, "subscribe diffusion", user="UOTHER", channel="DUOTHER")
    await post(bolt, body, sign(body, int(time.time())))
    await wait_for(lambda: slack.called("1"))
    assert slack.called("1")[0]["text"].startswith("Subscribed this channel to `diffusion`")
    assert [(s.channel.key, s.created_by) for s in store.subscriptions()] == [("slack:DUOTHER", "UOTHER")]
    body = command_body(slack, "subscribe video", user="UOTHER", channel="C123")  # a channel: still refused
    await post(bolt, body, sign(body, int(time.time())))
    await wait_for(lambda: len(slack.called("1")) == 2)
    assert "right to manage" in slack.called("1")[1]["text"]


async def test_app_home_shows_my_subscriptions_and_reading_list(bolt, slack, store, clock):  # noqa: F811
    for channel, query, user in ((C123, "diffusion", "UADMIN"), (ChannelRef("slack", "DUADMIN"), "agents", "UADMIN"),
                                 (C123, "video", "USOMEONE")):
        store.add_subscription(channel, query, user, clock())
    store.add_papers([paper(PAPER, "Latent <b>diffusion</b>")], clock())
    store.record_feedback("UADMIN", C123, PAPER, "save", clock())
    event = json.dumps({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                        "event_id": "Ev9", "event_time": 1,
                        "event": {"type": "app_home_opened", "user": "UADMIN", "channel": "DUADMIN", "tab": "home"}})
    assert (await post(bolt, event, {**sign(event, int(time.time())), "Content-Type": "application/json"}))[0] == 200
    await wait_for(lambda: "UADMIN" in slack.home_views)
    view = slack.home_views["UADMIN"]
    texts = [b["text"]["text"] for b in view["blocks"] if b.get("text")]
    assert texts[0] == "Your subscriptions" and texts[2] == "Your reading list"
    assert "#1 `diffusion` · in slack:C123" in texts[1] and "#2 `agents` · in slack:DUADMIN" in texts[1]
    assert "video" not in texts[1]
    assert "Latent &lt;b&gt;diffusion&lt;/b&gt; · https://arxiv.org/abs/2411.00001" in texts[3]


# ---- Discord: component interactions and direct messages through the fake gateway ---------------

async def test_discord_buttons_and_a_direct_message_feed_through_the_gateway(store, clock, make_config, monkeypatch):
    with FakeDiscordGateway() as fake:
        monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")
        config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
        channel = ChannelRef("discord", CHANNEL_ID)
        sub = store.add_subscription(channel, "diffusion OR video", "1", clock()).subscription
        deliver(store, clock, channel, sub, title="Video", terms=("video in title",))
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: running.frontend.state == "connected")
            fake.press(f"papers:save:{PAPER}")
            assert await until(lambda: len(fake.followups) == 1)
            fake.press(f"papers:not-relevant:{PAPER}", permissions=1 << 4)
            assert await until(lambda: len(fake.followups) == 2)
            offers = [c["custom_id"] for row in fake.followups[1]["body"]["components"] for c in row["components"]]
            fake.press(offers[0], permissions=0)  # pressed by someone without Manage Channels
            assert await until(lambda: len(fake.followups) == 3)
            fake.press(offers[0])
            assert await until(lambda: len(fake.followups) == 4)
            # A direct message with the bot: no Manage Channels there, and yet it is theirs.
            fake.interact("subscribe", {"query": "agents"}, permissions=0, dm="900", user_id="777")
            assert await until(lambda: len(fake.followups) == 5)
            fake.interact("list", {"me": True}, dm="900", user_id="777")
            assert await until(lambda: len(fake.followups) == 6)
        finally:
            await close_within(running)
            await adapter.close()
    saved, noted, refused, muted, subscribed, listed = (f["body"] for f in fake.followups)
    assert saved["content"].startswith("Saved “Video”") and saved["flags"] & 64
    assert store.channel_feedback(channel) == ChannelFeedback(saved=(PAPER,), not_relevant=(PAPER,))
    who = store.db.execute("SELECT user_id, channel, kind FROM feedback ORDER BY id").fetchall()
    assert who == [(USER_ID, "discord:123", "save"), (USER_ID, "discord:123", "not_relevant")]
    assert noted["content"].startswith("Noted:")
    assert offers == ['papers:run:["mute",{"subscription":"1","term":"video"}]']
    assert "right to manage" in refused["content"]
    assert muted["content"] == "#1 is now `(diffusion OR video) -video`."
    assert subscribed["content"].startswith("Subscribed this channel to `agents`")
    assert [(s.channel.key, s.created_by) for s in store.subscriptions(ChannelRef("discord", "900"))] == [
        ("discord:900", "777")]
    assert listed["content"].splitlines()[1] == "#2 `agents` · here · 0 posted"
    assert all(f["body"]["allowed_mentions"] == {"parse": []} for f in fake.followups)


async def test_a_titles_masked_link_is_plain_text_in_discord_replies(store, clock, make_config, monkeypatch):
    # Cards escape a title's markdown; replies quote titles too (save, saved, not-relevant), and a
    # title holding [text](url) was a link in them, showing any text over any address.
    title = "Scaling laws [free GPU credits](https://phish.example/login) for everyone"
    with FakeDiscordGateway() as fake:
        monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")
        config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
        store.add_papers([paper(PAPER, title)], clock())
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: running.frontend.state == "connected")
            fake.press(f"papers:save:{PAPER}")
            assert await until(lambda: len(fake.followups) == 1)
            fake.interact("saved", {})
            assert await until(lambda: len(fake.followups) == 2)
            fake.interact("search", {"words": "[a](https://x.example) scaling"})
            assert await until(lambda: len(fake.followups) == 3)
        finally:
            await close_within(running)
            await adapter.close()
    saved, listed, searched = (f["body"]["content"] for f in fake.followups)
    escaped = r"\[free GPU credits](https://phish.example/login)"
    assert saved.startswith("Saved “Scaling laws ") and escaped in saved
    assert escaped in listed and "• Scaling laws" in listed
    assert "`[a](https://x.example) scaling`" in searched  # typed text in a code span: shown as typed
    assert not re.search(r"(?<!\\)\[[^\]]*\]\(", saved + listed)


# ---- the weekly most-saved digest --------------------------------------------------------------------

async def test_the_weekly_most_saved_digest_lists_the_weeks_most_saved_once(ctx, store, clock, slack):
    # Friday 2026-11-27 12:00 UTC
    assert (await run(ctx, C123, "U1", "most-saved weekly", can_manage=False)).ok is False
    # One word after weekly: the day, or the time (`weekly sun` said "`sun` is not a 24-hour time").
    reply = await run(ctx, C123, "U1", "most-saved weekly sun")
    assert reply.text == "This channel gets the week's most saved papers every Sun at 09:00 (UTC)."
    reply = await run(ctx, C123, "U1", "most-saved weekly 16:00")
    assert reply.text == "This channel gets the week's most saved papers every Mon at 16:00 (UTC)."
    reply = await run(ctx, C123, "U1", "most-saved weekly funday")
    assert not reply.ok and "`funday` is neither a weekday (mon, tue, ... sun) nor a 24-hour time" in reply.text
    reply = await run(ctx, C123, "U1", "most-saved weekly")
    assert reply.text == "This channel gets the week's most saved papers every Mon at 09:00 (UTC)."
    store.add_papers([paper(PAPER, "Once"), paper("2411.00002", "Twice"), paper("2411.00003", "Elsewhere")], clock())
    for user, paper_id in (("U1", PAPER), ("U1", "2411.00002"), ("U2", "2411.00002")):
        await run(ctx, C123, user, f"save {paper_id}")
    await run(ctx, ChannelRef("slack", "C999"), "U1", "save 2411.00003")
    adapters = {"slack": SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), min_interval=0)}
    assert await dispatch_most_saved(store, adapters, clock(), 10) == 0  # not Monday yet
    clock.advance(days=2, hours=21)  # Monday 09:00
    assert await dispatch_most_saved(store, adapters, clock(), 10) == 1
    assert await dispatch_most_saved(store, adapters, clock() + timedelta(hours=1), 10) == 0  # once per slot
    (body,) = slack.called("chat.postMessage")
    assert body["channel"] == "C123"
    lines = body["blocks"][1]["text"]["text"].splitlines()
    assert ["Twice" in lines[0], "Once" in lines[1], len(lines)] == [True, True, 2]
    assert "Most saved this week: 2 papers" in body["blocks"][0]["text"]["text"]
    clock.advance(days=7)  # a week with nothing saved: no message
    assert await dispatch_most_saved(store, adapters, clock(), 10) == 0
    assert (await run(ctx, C123, "U1", "most-saved off")).text == "The weekly most-saved digest is off."
    assert store.most_saved_schedules() == []


async def test_a_rate_limited_most_saved_digest_is_posted_after_the_wait_not_skipped_for_the_week(make_config, clock,
                                                                                                   slack):
    # Monday 09:00 is when a busy channel gets its cards too: Slack's 429 (or an outage) on the
    # weekly message lost that week's message; it is tried again after the wait, and posted once.
    from bot.app import App

    adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), min_interval=0)
    app = App(make_config(), clock=clock, adapters={"slack": adapter})

    async def sweep_at(**later) -> int:
        clock.advance(**later)
        await app.deliver()
        return len(slack.called("chat.postMessage"))

    try:
        await app.handle_command(handlers.request_from_text(C123, "U1", "most-saved weekly"))
        app.store.add_papers([paper(PAPER, "Worth keeping")], clock())
        await app.handle_command(handlers.request_from_text(C123, "U1", f"save {PAPER}"))
        slack.script("chat.postMessage", (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "90"}),
                     (500, {"ok": False, "error": "fatal_error"}, {}))
        assert await sweep_at(days=2, hours=21) == 1  # Monday 09:00: 429
        assert await sweep_at(seconds=60) == 1  # within its Retry-After
        assert await sweep_at(seconds=31) == 2  # 500
        assert await sweep_at(seconds=61) == 3  # posted
        assert await sweep_at(minutes=5) == 3  # once
        assert "Worth keeping" in json.dumps(slack.called("chat.postMessage")[-1]["blocks"])
        # What cannot go through later (a channel Slack says is gone) is not tried again that week.
        await app.handle_command(handlers.request_from_text(C123, "U2", f"save {PAPER}"))
        slack.script("chat.postMessage", (200, {"ok": False, "error": "channel_not_found"}, {}))
        assert await sweep_at(days=7) == 4
        assert await sweep_at(hours=1) == 4
    finally:
        await app.aclose()


async def test_save_of_a_paper_not_stored_yet_fetches_it_as_show_does(store, make_config, clock, server):
    from .test_commands import HF_PAPER, show  # `show` runs any command line with a real lookup

    server.route("/api/papers/2602.23229", Canned(body=json.dumps(HF_PAPER).encode()))
    reply = await show(store, make_config(), clock, server, "save https://huggingface.co/papers/2602.23229")
    assert reply.text.startswith("Saved “Large Multimodal Models")
    assert [s.paper.id for s in store.saved_papers(user_id="u1")] == ["2602.23229"]


async def test_the_app_sweep_posts_the_most_saved_digest_through_the_fake_slack(make_config, clock, slack):
    from bot.app import App

    config = make_config()
    adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), min_interval=0)
    app = App(config, clock=clock, adapters={"slack": adapter})
    try:
        await app.handle_command(handlers.request_from_text(C123, "U1", "most-saved weekly fri 13:00"))
        app.store.add_papers([paper(PAPER, "Worth keeping")], clock())
        await app.handle_command(handlers.request_from_text(C123, "U1", f"save {PAPER}"))
        await app.deliver()
        assert slack.called("chat.postMessage") == []  # Friday 12:00: not yet
        clock.advance(hours=1)
        await app.deliver()
        await app.deliver()
    finally:
        await app.aclose()
    (body,) = slack.called("chat.postMessage")
    assert "Worth keeping" in json.dumps(body["blocks"]) and body["channel"] == "C123"


async def test_discord_replies_of_several_cards_have_numbered_save_and_not_relevant(store, clock, make_config,
                                                                                     monkeypatch):
    # A search answers with several cards: each shown card gets its own Save and Not relevant,
    # numbered in the order of the cards, and a press saves that paper.
    store.add_papers([paper(f"2411.0000{n}", title=f"Synthetic diffusion paper {n}", listed_on=clock().date())
                      for n in (1, 2, 3)], clock())
    with FakeDiscordGateway() as fake:
        monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")
        config = make_config(discord={"api_base": fake.api_base, "gateway_url": fake.gateway_url})
        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        running = await start(store, config, adapter, clock)
        try:
            assert await until(lambda: running.frontend.state == "connected")
            fake.interact("search", {"words": "diffusion"})
            assert await until(lambda: len(fake.followups) == 1)
            body = fake.followups[0]["body"]
            shown = [embed["url"].rsplit("/", 1)[-1] for embed in body["embeds"]]
            rows = [[(c["label"], c["custom_id"]) for c in row["components"]] for row in body["components"]]
            fake.press(rows[0][1][1])  # "Save 2"
            assert await until(lambda: len(fake.followups) == 2)
        finally:
            await close_within(running)
            await adapter.close()
    assert sorted(shown) == ["2411.00001", "2411.00002", "2411.00003"]
    assert rows == [[(f"Save {n}", f"papers:save:{pid}") for n, pid in enumerate(shown, 1)],
                    [(f"Not relevant {n}", f"papers:not-relevant:{pid}") for n, pid in enumerate(shown, 1)]]
    assert store.channel_feedback(ChannelRef("discord", CHANNEL_ID)).saved == (shown[1],)
