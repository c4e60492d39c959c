"""Follow-ups in the thread: a posted paper's news (code, a new arXiv version, upvotes
crossing 50/100/200) is found when a poll stores it and posted once as a reply in the
card's thread, through the real adapters against the fake Slack and Discord APIs."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from discord.http import Route
from sqlite_utils import Database

import handlers
from bot.adapters.discord_adapter import DiscordAdapter
from bot.adapters.discord_render import thread_reply_content
from bot.adapters.slack_adapter import SlackAdapter, make_web_client
from bot.adapters.slack_render import thread_reply_text
from bot.app import App
from bot.config import Secrets, parse_config
from bot.dispatch import Dispatcher
from bot.followups import reply_for
from bot.models import ChannelRef, FollowUp, Link, Match, ThreadRef, ThreadReply
from fakes.discord import FakeDiscord
from fakes.slack import FakeSlack
from storage import Store
from storage.followups import StoredState, paper_events
from storage.migrations import m019_followups, migrations

from .fakes import FakeSource, RecordingAdapter, paper

SLACK = ChannelRef("slack", "C123")
DISCORD = ChannelRef("discord", "123")
PAPER_ID = "2611.00042"
GITHUB = "https://github.com/acme/diffusion-x"


def listed(**kw) -> object:
    """The paper as Hugging Face lists it, with these changes."""
    fields = {"source": "huggingface", "upvotes": 10, "listed_on": None}
    fields.update(kw)
    return paper(PAPER_ID, "Diffusion for everything", "A synthetic abstract.", **fields)


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        fake.real_ts = True  # recovery looks for replies since the claim: timestamps from the clock
        yield fake


@pytest.fixture
def discord_api(monkeypatch):
    with FakeDiscord() as fake:
        monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")  # only the adapter's base works
        yield fake


@pytest.fixture
def now_clock(clock):
    clock.now = datetime.now(timezone.utc).replace(microsecond=0)  # the fakes' message times are real
    return clock


def make_app(tmp_path, clock, slack, discord_api, source) -> App:
    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                           "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False}}},
                          Secrets({}))
    adapters = {"slack": SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), min_interval=0.0),
                "discord": DiscordAdapter("discord-test-token", api_base=discord_api.api_base),
                "console": RecordingAdapter()}
    app = App(config, clock=clock, adapters=adapters)  # type: ignore[arg-type]
    app.sources = [source]
    return app


async def subscribe(app: App, channel: ChannelRef, query: str = "diffusion") -> None:
    reply = await app.handle_command(handlers.request_from_text(channel, "U1", f"subscribe {query}"))
    assert reply.ok, reply.text


def slack_thread(slack: FakeSlack) -> list[str]:
    (card,) = [m for m in slack.messages["C123"] if not m.get("thread_ts")]
    return [m["text"] for m in slack.thread_replies("C123", card["ts"])]


def discord_replies(discord_api: FakeDiscord) -> list[str]:
    (card,) = [m for m in discord_api.messages["123"] if not m.get("message_reference")]
    return [m["content"] for m in discord_api.replies("123", card["id"])]


# ---- end to end: polls, the outbox, the real adapters, the fake platforms ------------------

async def test_code_and_100_upvotes_reach_the_cards_threads_once(tmp_path, now_clock, slack, discord_api):
    source = FakeSource("huggingface", [listed()])
    app = make_app(tmp_path, now_clock, slack, discord_api, source)
    await subscribe(app, SLACK)
    await subscribe(app, DISCORD)
    await app.poll_once()  # the cards
    assert len(slack.messages["C123"]) == 1 and len(discord_api.messages["123"]) == 1

    now_clock.advance(hours=1)
    source.papers = [listed(github=GITHUB, upvotes=120)]
    _, delivered = await app.poll_once()
    assert delivered.sent == 4  # two replies in each of the two cards' threads
    assert slack_thread(slack) == ["Code released: <https://github.com/acme/diffusion-x|github.com/acme/diffusion-x>",
                                   "Crossed 100 upvotes on Hugging Face: "
                                   "<https://huggingface.co/papers/2611.00042|Hugging Face>"]
    assert discord_replies(discord_api) == ["Code released: <https://github.com/acme/diffusion-x>",
                                            "Crossed 100 upvotes on Hugging Face: "
                                            "<https://huggingface.co/papers/2611.00042>"]
    (body,) = [b for b in slack.called("chat.postMessage") if "Code released" in b["text"]]
    assert body["metadata"] == {"event_type": "papers_bot_followup",
                                "event_payload": {"key": f"{PAPER_ID}:code:0"}}
    assert "reply_broadcast" not in body  # in the thread only
    (post,) = [b for _, b in discord_api.posts if b.get("content", "").startswith("Code released")]
    assert post["allowed_mentions"] == {"parse": []} and post["enforce_nonce"] is True

    now_clock.advance(hours=1)
    _, delivered = await app.poll_once()  # the same data again: nothing new
    assert delivered.sent == 0
    assert len(slack.messages["C123"]) == 3 and len(discord_api.messages["123"]) == 3
    statuses = app.store.db.execute("SELECT kind, value, status FROM followups ORDER BY id").fetchall()
    assert sorted(statuses) == sorted([("code", 0, "sent"), ("upvotes", 50, "skipped"), ("upvotes", 100, "sent")] * 2)
    await app.aclose()


async def test_followups_off_means_no_replies(tmp_path, now_clock, slack, discord_api):
    source = FakeSource("huggingface", [listed()])
    app = make_app(tmp_path, now_clock, slack, discord_api, source)
    await subscribe(app, SLACK)
    await subscribe(app, DISCORD)
    await app.poll_once()
    reply = await app.handle_command(handlers.request_from_text(SLACK, "U1", "followups off"))
    assert reply.ok and reply.text.startswith("Follow-ups are off")
    source.papers = [listed(github=GITHUB, upvotes=120)]
    await app.poll_once()
    assert slack_thread(slack) == []  # off: nothing queued, nothing sent
    assert len(discord_replies(discord_api)) == 2  # the other channel has them on (the default)
    await app.handle_command(handlers.request_from_text(DISCORD, "U1", "followups off"))
    source.papers = [listed(github=GITHUB, upvotes=250)]
    await app.poll_once()
    assert len(discord_replies(discord_api)) == 2
    assert (await app.handle_command(handlers.request_from_text(SLACK, "U1", "followups"))).text.startswith(
        "Follow-ups are off in this channel")
    for wrong in ("followups maybe", "followups on extra"):  # neither turns anything on or off
        reply = await app.handle_command(handlers.request_from_text(DISCORD, "U1", wrong))
        assert not reply.ok and "Say `on` or `off`" in reply.text
    assert not app.store.followups_enabled(DISCORD)
    reply = await app.handle_command(handlers.request_from_text(SLACK, "U1", "followups ON"))
    assert reply.ok and app.store.followups_enabled(SLACK)
    await app.aclose()


async def test_a_kill_between_claim_and_send_or_send_and_mark_posts_once(tmp_path, now_clock, slack, discord_api):
    source = FakeSource("huggingface", [listed()])
    app = make_app(tmp_path, now_clock, slack, discord_api, source)
    await subscribe(app, SLACK)
    await subscribe(app, DISCORD)
    await app.poll_once()
    source.papers = [listed(github=GITHUB)]
    assert (await app.poller.poll(source)).ok  # stored and queued; not sent yet
    due = app.store.due_followups(now_clock(), 10)
    assert sorted(f.thread.channel.platform for f in due) == ["discord", "slack"]
    for followup in due:
        assert app.store.claim_followup(followup.id, now_clock())
    # Killed: the Slack reply after its claim, before sending; the Discord one after sending.
    discord = next(f for f in due if f.thread.channel == DISCORD)
    assert (await app.adapters["discord"].post_in_thread(discord.thread, reply_for(discord))).ok
    await app.aclose()

    again = make_app(tmp_path, now_clock, slack, discord_api, source)  # the restart
    report = await again.deliver()  # holds the sender lease: settles what was under way, then sends
    assert report.sent == 1
    assert slack_thread(slack) == ["Code released: <https://github.com/acme/diffusion-x|github.com/acme/diffusion-x>"]
    assert discord_replies(discord_api) == ["Code released: <https://github.com/acme/diffusion-x>"]
    assert slack.called("conversations.replies")
    # Found in the channel's messages and recorded, not sent again (Discord's nonce would hide that).
    assert len([b for _, b in discord_api.posts if b.get("content", "").startswith("Code released")]) == 1
    assert (await again.deliver()).sent == 0
    rows = again.store.db.execute("SELECT status, attempts FROM followups ORDER BY id").fetchall()
    assert rows == [("sent", 1), ("sent", 1)]
    await again.aclose()


# ---- detection ------------------------------------------------------------------------------

@pytest.mark.parametrize("before, after, events", [
    (StoredState(None, None, 10), dict(github=GITHUB, upvotes=120),
     [("code", 0, False), ("upvotes", 50, True), ("upvotes", 100, False)]),
    (StoredState(GITHUB, None, 49), dict(github="https://github.com/other/repo", upvotes=50), [("upvotes", 50, False)]),
    (StoredState(None, None, 120), dict(upvotes=99), []),  # down: nothing
    (StoredState(None, None, None), dict(upvotes=250),  # first seen on Hugging Face after the card
     [("upvotes", 50, True), ("upvotes", 100, True), ("upvotes", 200, False)]),
    (StoredState(None, 1, None), dict(version=2, is_update=True), [("version", 2, False)]),
    (StoredState(None, 2, None), dict(version=3), [("version", 3, False)]),  # a lookup's newer version
    (StoredState(None, 3, None), dict(version=2, is_update=True), []),  # never down
    (StoredState(None, None, None), dict(version=2, is_update=True), [("version", 2, False)]),  # a replacement
    (StoredState(None, None, None), dict(version=3), []),  # version unknown before: not news
])
def test_paper_events(before, after, events):
    found = paper_events(before, paper(PAPER_ID, **after))
    assert [(e.kind, e.value, e.superseded) for e in found] == events


def test_replies_are_worded_short_with_their_link():
    thread = ThreadRef(SLACK, "1.0")
    code = reply_for(FollowUp(1, PAPER_ID, thread, "code", 0, GITHUB))
    assert code == ThreadReply(f"{PAPER_ID}:code:0", "Code released", Link("github.com/acme/diffusion-x", GITHUB))
    assert reply_for(FollowUp(1, PAPER_ID, thread, "version", 3)).text == "New version v3 on arXiv"
    assert reply_for(FollowUp(1, PAPER_ID, thread, "version", 3)).link.url == f"https://arxiv.org/abs/{PAPER_ID}v3"
    assert reply_for(FollowUp(1, PAPER_ID, thread, "upvotes", 200)).text == "Crossed 200 upvotes on Hugging Face"
    long = reply_for(FollowUp(1, PAPER_ID, thread, "code", 0, "https://github.com/" + "a" * 400))
    assert long.link == Link("Hugging Face", f"https://huggingface.co/papers/{PAPER_ID}")
    # Queued before the source's link rule: a malformed address is not linked (Discord refuses
    # the whole reply for it); one it can encode is encoded, as on a card.
    spaced = reply_for(FollowUp(1, PAPER_ID, thread, "code", 0, "https://github.com/acme/diffusion x"))
    assert spaced.link == Link("Hugging Face", f"https://huggingface.co/papers/{PAPER_ID}")
    accented = reply_for(FollowUp(1, PAPER_ID, thread, "code", 0, "https://github.com/acme/difusión"))
    assert accented.link is not None and accented.link.url == "https://github.com/acme/difusi%C3%B3n"


def test_reply_texts_are_escaped_and_never_mention():
    hostile = ThreadReply("k", "<!channel> @everyone *x*", Link("<@U1>|x", "https://github.com/a|b>c <@U2>"))
    slack_text = thread_reply_text(hostile)
    assert "<!channel>" not in slack_text and "<@U" not in slack_text
    assert slack_text == "&lt;!channel&gt; @everyone *x*: <https://github.com/a%7Cb%3Ec %3C@U2%3E|&lt;@U1&gt;|x>"
    content = thread_reply_content(hostile)
    assert "@everyone" not in content.replace("@\u200beveryone", "")  # escape_mentions breaks it
    assert content.endswith(": <https://github.com/a|b%3Ec%20%3C@U2%3E>") and "\\*x\\*" in content


def test_version_is_read_from_the_arxiv_rss_and_api():
    from bot.sources.arxiv import parse_api_feed, parse_rss

    from .fakes import fixture

    rss = parse_rss(fixture("arxiv_rss_synthetic.xml"))
    assert rss and all(p.version is not None and p.version >= 1 for p in rss)
    (api,), _ = parse_api_feed(fixture("arxiv_api_id_list_1111.2011v2.xml"))
    assert api.id == "1111.2011" and api.version == 2


@pytest.mark.backends
def test_arxiv_versions_are_stored_and_only_go_up(store, clock):
    store.add_papers([paper(PAPER_ID, version=2)], clock())
    store.add_papers([paper(PAPER_ID, version=1), paper(PAPER_ID, source="huggingface")], clock())
    assert store.get_paper(PAPER_ID).version == 2
    store.add_papers([paper(PAPER_ID, version=3, is_update=True)], clock())
    assert store.get_paper(PAPER_ID).version == 3


# ---- which cards get follow-ups ------------------------------------------------------------

def card_sent(store, clock, channel: ChannelRef, message_id: str, paper_id: str = PAPER_ID) -> int:
    sub = store.add_subscription(channel, f"q{paper_id}", "U1", clock()).subscription
    store.enqueue(paper_id, [Match(sub.id, channel, sub.query, ())], clock())
    (delivery_id,) = store.db.execute("SELECT id FROM deliveries WHERE paper_id = ? AND channel = ?",
                                      [paper_id, channel.key]).fetchone()
    store.mark_sent(delivery_id, message_id, clock())
    return delivery_id


def test_only_cards_posted_alone_and_recently_get_followups(store, clock):
    store.add_papers([paper(PAPER_ID), paper("2611.00043")], clock())
    card_sent(store, clock, ChannelRef("console", "card"), "m1")
    # A digest: one message for two papers.
    card_sent(store, clock, ChannelRef("console", "digest"), "d1")
    card_sent(store, clock, ChannelRef("console", "digest"), "d1", "2611.00043")
    # A card posted 61 days before the news.
    clock.advance(days=-61)
    card_sent(store, clock, ChannelRef("console", "old"), "m2")
    clock.advance(days=61)
    store.add_papers([paper(PAPER_ID, github=GITHUB)], clock())
    due = store.due_followups(clock(), 10)
    assert [(f.thread, f.kind) for f in due] == [(ThreadRef(ChannelRef("console", "card"), "m1"), "code")]


@pytest.mark.backends
def test_a_paper_marked_not_relevant_in_a_channel_gets_no_more_news_there(store, clock):
    store.add_papers([paper(PAPER_ID)], clock())
    for channel, message_id in ((ChannelRef("console", "ml"), "m1"), (ChannelRef("console", "cv"), "m2")):
        sub = store.add_subscription(channel, "q", "U1", clock()).subscription
        store.enqueue(PAPER_ID, [Match(sub.id, channel, sub.query, ())], clock())
        (delivery,) = [d for d in store.pending_for_channel(channel)]
        assert store.claim_delivery(delivery.id, clock())
        store.mark_sent(delivery.id, message_id, clock())
    store.record_feedback("U2", ChannelRef("console", "ml"), PAPER_ID, "not_relevant", clock())
    store.add_papers([paper(PAPER_ID, github=GITHUB)], clock())
    (due,) = store.due_followups(clock(), 10)  # the code release: only where nobody dismissed the paper
    assert due.thread == ThreadRef(ChannelRef("console", "cv"), "m2") and due.kind == "code"
    assert store.due_followups(clock(), 10) == [due]  # the other settled, not asked again


def test_turned_off_after_queueing_drops_them_and_a_card_being_sent_is_waited_for(store, clock):
    store.add_papers([paper(PAPER_ID)], clock())
    card_sent(store, clock, ChannelRef("console", "off"), "m1")
    sub = store.add_subscription(ChannelRef("console", "busy"), "q", "U1", clock()).subscription
    store.enqueue(PAPER_ID, [Match(sub.id, sub.channel, sub.query, ())], clock())
    (busy,) = store.db.execute("SELECT id FROM deliveries WHERE channel = 'console:busy'").fetchone()
    assert store.claim_delivery(busy, clock())  # its card is being sent as the news comes
    store.add_papers([paper(PAPER_ID, github=GITHUB)], clock())
    assert store.set_followups(ChannelRef("console", "off"), False, clock()) is True
    assert store.due_followups(clock(), 10) == []  # one dropped, one waiting for its card
    statuses = dict(store.db.execute("SELECT d.channel, f.status FROM followups f JOIN deliveries d "
                                     "ON d.id = f.delivery_id").fetchall())
    assert statuses == {"console:off": "skipped", "console:busy": "pending"}
    store.mark_sent(busy, "m2", clock())
    (due,) = store.due_followups(clock(), 10)
    assert due.thread == ThreadRef(ChannelRef("console", "busy"), "m2") and due.kind == "code"


async def test_a_rate_limit_is_waited_out_and_a_paused_channel_waits(store, clock, slack):
    slack.real_ts = False
    store.add_papers([paper(PAPER_ID, upvotes=0)], clock())
    card_sent(store, clock, SLACK, "1001.000100")
    store.add_papers([paper(PAPER_ID, upvotes=60)], clock())
    dispatcher = Dispatcher(store, {"slack": SlackAdapter(make_web_client("xoxb-t", slack.api_url),
                                                          min_interval=0.0)}, clock)
    slack.script("chat.postMessage", (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "120"}))
    assert (await dispatcher.dispatch_followups()).retrying == 1
    clock.advance(seconds=119)
    assert (await dispatcher.dispatch_followups()).sent == 0  # Slack asked for 120 s
    store.update_channel_settings(SLACK, clock(), paused=True)
    clock.advance(seconds=1)
    assert (await dispatcher.dispatch_followups()).sent == 0  # paused: kept for later
    store.update_channel_settings(SLACK, clock(), paused=False)
    assert (await dispatcher.dispatch_followups()).sent == 1
    (first, second) = slack.called("chat.postMessage")
    assert first == second and second["thread_ts"] == "1001.000100"
    assert second["text"].startswith("Crossed 50 upvotes on Hugging Face")


async def test_a_reply_platform_refuses_is_given_up_not_retried_forever(store, clock):
    from bot.models import PostResult

    store.add_papers([paper(PAPER_ID)], clock())
    card_sent(store, clock, ChannelRef("console", "c"), "m1")
    store.add_papers([paper(PAPER_ID, github=GITHUB)], clock())
    adapter = RecordingAdapter()
    adapter.reply_results = [PostResult(ok=False, error="HTTP 400 from Discord (code 50035)")]
    report = await Dispatcher(store, {"console": adapter}, clock).dispatch_followups()
    assert report.failed == 1
    assert store.db.execute("SELECT status FROM followups").fetchone()[0] == "failed"
    assert (await Dispatcher(store, {"console": adapter}, clock).dispatch_followups()).sent == 0


async def test_discord_replies_reference_the_card_and_a_deleted_card_fails_them(store, clock, discord_api):
    adapter = DiscordAdapter("discord-test-token", api_base=discord_api.api_base)
    thread = ThreadRef(DISCORD, "9001")
    reply = ThreadReply("k", "Code released", Link("x", GITHUB))
    assert (await adapter.post_in_thread(thread, reply)).ok
    # What Discord answers a reply to a message that is gone, with fail_if_not_exists.
    discord_api.script("123", (400, {"code": 50035, "message": "Invalid Form Body",
                                     "errors": {"message_reference": {"_errors": [
                                         {"code": "REPLIES_UNKNOWN_MESSAGE", "message": "Unknown message"}]}}}, {}))
    refused = await adapter.post_in_thread(ThreadRef(DISCORD, "9002"), reply)
    await adapter.close()
    ((_, body), (_, gone)) = discord_api.posts
    assert body["message_reference"]["message_id"] == 9001 and body["message_reference"]["fail_if_not_exists"]
    assert gone["message_reference"]["message_id"] == 9002
    assert not refused.ok and not refused.retryable and not refused.channel_gone  # given up, channel kept


def test_console_replies_name_the_thread(capsys):
    import asyncio

    from bot.adapters.console import ConsoleAdapter

    adapter = ConsoleAdapter()
    result = asyncio.run(adapter.post_in_thread(ThreadRef(ChannelRef("console", "ml"), "console-1"),
                                                ThreadReply("k", "New version v2 on arXiv", Link("arXiv", "https://a/b"))))
    assert result.ok and capsys.readouterr().out == "[console:ml] ↳ console-1: New version v2 on arXiv: https://a/b\n"


# ---- the migration ---------------------------------------------------------------------------

def test_m019_upgrades_a_database_with_posted_cards_and_runs_twice(tmp_path, clock):
    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m019_followups")
    old.execute("""INSERT INTO papers (id, title, summary, authors, categories, sources, first_seen, updated_at)
                   VALUES (?, 't', 's', '[]', '[]', 'arxiv', ?, ?)""", [PAPER_ID, clock().isoformat(),
                                                                      clock().isoformat()])
    old.execute("""INSERT INTO deliveries (paper_id, channel, matched, status, message_id, next_attempt_at,
                       created_at, sent_at) VALUES (?, 'console:ml', '[]', 'sent', 'm1', ?, ?, ?)""",
                [PAPER_ID] + [clock().isoformat()] * 3)
    old.conn.commit()
    old.close()
    store = Store(path)  # migrates
    assert store.get_paper(PAPER_ID).version is None and store.followups_enabled(ChannelRef("console", "ml"))
    m019_followups(store.db)  # again: nothing to do, nothing lost
    store.add_papers([paper(PAPER_ID, github=GITHUB, version=2, is_update=True)], clock())
    assert sorted(f.kind for f in store.due_followups(clock(), 10)) == ["code", "version"]
    store.close()
