"""Slack: Block Kit cards, posting through slack_sdk to a fake Web API, the bolt app over signed HTTP."""

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from urllib.parse import urlencode

import aiohttp
import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.signature import SignatureVerifier

import handlers
from bot.adapters.slack_adapter import SlackAdapter, build_bolt_app, make_web_client, start_http
from bot.adapters.slack_render import card_blocks, digest_blocks, escape, reply_blocks
from bot.cards import card_for
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Digest, Match, OutboxCounts, Reply, SubscriptionRef

from .fakes import due_now, paper

C123 = ChannelRef("slack", "C123")
HOSTILE = paper("2411.00001", "<!channel> & <@U123> *bold* " + "long title " * 30,
                "An abstract with <https://evil.example|a link> & more. " * 100,
                authors=("<!here> Mallory",), upvotes=7, github="https://github.com/x/y")


def validated(blocks: list[Block]) -> list[dict]:
    for block in blocks:
        block.validate_json()  # slack_sdk's own limits (header 150, section 3000, ...)
    return [b.to_dict() for b in blocks]


# ---- rendering ----------------------------------------------------------------------------

def test_escape_neutralizes_mentions_and_links():
    assert escape("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"


def test_card_blocks_are_valid_escaped_and_within_limits():
    blocks = validated(card_blocks(card_for(HOSTILE, (Match(3, C123, "diffusion", ("diffusion in title",)),)),
                                   (SubscriptionRef(3, "diffusion"),)))
    text = json.dumps(blocks)
    assert "<!channel>" not in text and "<@U123>" not in text and "<!here>" not in text and "<https://evil" not in text
    header, section, facts, reason, actions, feedback = blocks
    assert [b["action_id"] for b in feedback["elements"]] == ["papers_save", "papers_not_relevant"]
    assert header["type"] == "header" and len(header["text"]["text"]) <= 150
    assert section["text"]["type"] == "mrkdwn" and len(section["text"]["text"]) <= 3000
    assert "&lt;!here&gt; Mallory" in facts["elements"][0]["text"] and "▲ 7 upvotes" in facts["elements"][0]["text"]
    assert reason["elements"][0]["text"] == "Matched #3 `diffusion`: diffusion in title"
    buttons = [e for e in actions["elements"] if e["type"] == "button"]
    assert [b["text"]["text"] for b in buttons] == ["arXiv", "PDF", "Hugging Face", "Code"]
    assert buttons[0]["url"] == "https://arxiv.org/abs/2411.00001"
    overflow = [e for e in actions["elements"] if e["type"] == "overflow"][0]
    assert overflow["options"][0]["value"] == "unsub:3"


def test_digest_is_one_message_with_compact_lines():
    cards = tuple(card_for(paper(f"2411.{i:05d}", f"Paper {i} <b>", upvotes=i)) for i in range(1, 20))
    blocks = validated(digest_blocks(Digest(C123, "19 new papers for this channel", cards)))
    assert blocks[1]["text"]["text"].startswith("• <https://arxiv.org/abs/2411.00001|Paper 1 &lt;b&gt;> · ▲ 1")
    assert sum(b["text"]["text"].count("• <") for b in blocks[1:]) == 19
    # Far more than the dispatcher ever puts in one digest: the message still fits.
    many = tuple(card_for(paper(f"2411.{i:05d}", "Paper " + "x" * 100)) for i in range(1, 3001))
    huge = validated(digest_blocks(Digest(C123, "3000 new papers", many)))
    assert len(huge) <= 50 and huge[-1]["type"] == "context" and "more" in huge[-1]["elements"][0]["text"]


def test_reply_blocks_escape_user_text():
    blocks = validated(reply_blocks(Reply("No stored paper matches `<!channel>`.", cards=(card_for(HOSTILE),))))
    assert "<!channel>" not in json.dumps(blocks)


# ---- posting through the Web API ----------------------------------------------------------

def adapter_for(slack, sleeps=None):
    async def sleep(seconds):
        (sleeps if sleeps is not None else []).append(seconds)

    return SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), sleep=sleep)


def queue(store, clock, paper_id="2411.00001", channel=C123):
    store.add_papers([paper(paper_id, f"Diffusion {paper_id}")], clock())
    sub = store.add_subscription(channel, "diffusion", "U1", clock()).subscription
    store.enqueue(paper_id, [Match(sub.id, channel, sub.query, ("diffusion in title",))], clock())


def test_a_long_reply_keeps_its_lines_over_several_sections():
    # `list` of 50 subscriptions: one section cut at 3,000 characters ran every line into one
    # paragraph and ended mid-list.
    lines = [f"#{i} `diffusion model {i} & <more>` · since 2026-11-30 · 0 posted" for i in range(1, 81)]
    blocks = validated(reply_blocks(Reply("\n".join(["Subscriptions of this channel (80):"] + lines))))
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert len(texts) > 1 and all(len(t) <= 3000 for t in texts)
    shown = "\n".join(texts).split("\n")
    assert shown[0] == "Subscriptions of this channel (80):"
    assert shown[1:] == [escape(line) for line in lines]


def test_a_reply_too_long_for_ten_sections_says_how_many_lines_are_left_out():
    lines = [f"{i} " + "x" * 1400 for i in range(30)]  # two lines a section
    texts = [b["text"]["text"] for b in validated(reply_blocks(Reply("\n".join(lines)))) if b["type"] == "section"]
    assert len(texts) == 10 and texts[-1] == "… and 12 more lines"
    assert texts[0] == lines[0] + "\n" + lines[1]


async def test_poll_delivery_posts_block_kit_with_metadata(store, clock, slack):
    queue(store, clock)
    report = await Dispatcher(store, {"slack": adapter_for(slack)}, clock).dispatch()
    assert report.sent == 1
    (body,) = slack.called("chat.postMessage")
    assert body["channel"] == "C123" and body["unfurl_links"] is False
    assert body["metadata"] == {"event_type": "papers_bot_paper", "event_payload": {"paper_id": "2411.00001"}}
    assert body["text"].startswith("Diffusion 2411.00001")
    types = [block["type"] for block in body["blocks"]]
    assert types == ["header", "section", "context", "context", "actions", "actions"]  # links, then Save etc.
    for block in body["blocks"]:
        Block.parse(block).validate_json()  # what Slack receives is what slack_sdk's models accept
    headers = [h for m, _, h in slack.calls if m == "chat.postMessage"][0]
    assert headers["Authorization"] == "Bearer xoxb-test-token"
    assert store.db.execute("SELECT message_id FROM deliveries").fetchone()[0] == "1001.000100"


async def test_429_is_retried_after_retry_after_with_nothing_lost(store, clock, slack):
    slack.script("chat.postMessage", (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "120"}))
    queue(store, clock)
    dispatcher = Dispatcher(store, {"slack": adapter_for(slack)}, clock)
    first = await dispatcher.dispatch()
    assert first.retrying == 1 and first.sent == 0
    clock.advance(seconds=119)
    assert (await dispatcher.dispatch()).sent == 0  # Slack asked for 120 s
    clock.advance(seconds=1)
    assert (await dispatcher.dispatch()).sent == 1
    assert len(slack.called("chat.postMessage")) == 2 and store.delivery_counts() == OutboxCounts(sent=1)


async def test_posts_to_one_channel_are_paced_one_a_second(store, clock, slack):
    sleeps = []
    for i in (1, 2, 3):
        queue(store, clock, f"2411.0000{i}")
    await Dispatcher(store, {"slack": adapter_for(slack, sleeps)}, clock).dispatch()
    assert len(slack.called("chat.postMessage")) == 3
    assert len(sleeps) == 2 and all(0.5 < s <= 1.0 for s in sleeps)


async def test_a_gone_channel_is_paused_and_says_why(store, clock, slack, make_config):
    slack.script("chat.postMessage", (200, {"ok": False, "error": "is_archived"}, {}))
    queue(store, clock)
    dispatcher = Dispatcher(store, {"slack": adapter_for(slack)}, clock)
    await dispatcher.dispatch()
    settings = store.channel_settings(C123)
    assert settings.paused and settings.paused_reason == "is_archived"
    clock.advance(hours=5)
    await dispatcher.dispatch()
    assert len(slack.called("chat.postMessage")) == 1  # no retrying forever
    assert store.count_pending(C123) == 1  # the paper is kept for when it is back
    ctx = handlers.Context(store, make_config(), clock)
    status = await handlers.handle(ctx, handlers.request_from_text(C123, "U1", "status"))
    assert "paused (is_archived)" in status.text


async def test_permanent_and_transient_errors(store, clock, slack):
    slack.script("chat.postMessage", (200, {"ok": False, "error": "internal_error"}, {}),
                 (200, {"ok": False, "error": "invalid_blocks"}, {}))
    queue(store, clock)
    dispatcher = Dispatcher(store, {"slack": adapter_for(slack)}, clock)
    assert (await dispatcher.dispatch()).retrying == 1
    clock.advance(minutes=5)
    assert (await dispatcher.dispatch()).failed == 1
    assert store.delivery_counts() == OutboxCounts(failed=1)


@pytest.mark.parametrize("error", ["invalid_auth", "token_revoked"])
async def test_a_refused_token_keeps_the_papers_waiting_until_it_is_fixed(store, clock, slack, error):
    # Posting cannot work anywhere until someone fixes SLACK_BOT_TOKEN: that is no reason to give
    # the paper up. It waits (never counted as an attempt) and goes out once the token works.
    slack.script("chat.postMessage", *[(200, {"ok": False, "error": error}, {})] * 12,
                 (200, {"ok": True, "ts": "1.1"}, {}))
    queue(store, clock)
    dispatcher = Dispatcher(store, {"slack": adapter_for(slack)}, clock)
    for _ in range(12):  # more refusals than MAX_ATTEMPTS
        report = await dispatcher.dispatch()
        assert report.retrying == 1 and report.failed == 0
        assert (await dispatcher.dispatch()).retrying == 0  # and it waits, rather than hammering Slack
        clock.advance(minutes=15)
    assert store.delivery_counts() == OutboxCounts(pending=1)
    assert (await dispatcher.dispatch()).sent == 1
    assert store.delivery_counts() == OutboxCounts(sent=1)


# ---- the bolt app over HTTP, with request signing ---------------------------------------------

def test_official_slack_signing_vector():
    body = ("token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    headers = {"x-slack-request-timestamp": "1531420618",
               "x-slack-signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    from bot.adapters.slack_adapter import _Clock

    verifier = SignatureVerifier("8f742231b10e8888abcd99yyyzzz85a5", clock=_Clock(lambda: 1531420618))
    assert verifier.is_valid_request(body, headers)
    assert not SignatureVerifier("8f742231b10e8888abcd99yyyzzz85a5").is_valid_request(body, headers)  # stale today


SECRET = "test-signing-secret"


def sign(body: str, timestamp: int, secret: str = SECRET) -> dict:
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={mac}",
            "Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def bolt(store, make_config, clock, slack, unused_tcp_port):
    ctx = handlers.Context(store, make_config(), clock)

    async def on_command(request):
        return await handlers.handle(ctx, request)

    client = make_web_client("xoxb-test-token", slack.api_url)
    app = build_bolt_app(client, signing_secret=SECRET, on_command=on_command, admins=("UADMIN",))
    runner = await start_http(app, unused_tcp_port, signing_secret=SECRET, host="127.0.0.1")
    yield f"http://127.0.0.1:{unused_tcp_port}/slack/events"
    await runner.cleanup()


def command_body(slack, text, user="UADMIN", channel="C123"):
    return urlencode({"token": "x", "team_id": "T1", "channel_id": channel, "user_id": user, "command": "/papers",
                      "text": text, "response_url": f"{slack.url}/respond/1", "trigger_id": "1.2.3"})


async def post(url, body, headers):
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body.encode(), headers=headers) as response:
            return response.status, await response.text()


async def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_signed_slash_command_subscribes_and_the_reply_arrives(bolt, slack, store):
    body = command_body(slack, "subscribe diffusion")
    status, _ = await post(bolt, body, sign(body, int(time.time())))
    assert status == 200
    await wait_for(lambda: slack.called("1"))
    (reply,) = slack.called("1")  # the response_url
    assert reply["response_type"] == "ephemeral"
    assert reply["text"].startswith("Subscribed this channel to `diffusion` (#1).")
    assert [s.query for s in store.subscriptions(C123)] == ["diffusion"]


async def test_and_lt_gt_typed_in_slack_reach_the_command_as_typed(bolt, slack, store):
    # Slack sends &, < and > of what was typed as &amp;, &lt; and &gt; (its own markup is in < >):
    # `upvotes>=10`, the README's own example, was refused, and R&D became the phrase "r amp d".
    body = command_body(slack, "subscribe diffusion upvotes&gt;=10 R&amp;D")
    assert (await post(bolt, body, sign(body, int(time.time()))))[0] == 200
    await wait_for(lambda: slack.called("1"))
    assert [s.query for s in store.subscriptions(C123)] == ['diffusion upvotes>=10 "r d"']
    mention = event_body({"type": "app_mention", "channel": "C123", "user": "UADMIN", "ts": "5.6",
                          "text": "<@UBOT> preview diffusion upvotes&lt;5"})
    await post(bolt, mention, {**sign(mention, int(time.time())), "Content-Type": "application/json"})
    await wait_for(lambda: slack.called("chat.postMessage"))
    assert slack.called("chat.postMessage")[0]["text"].startswith("`diffusion upvotes&lt;5`")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, headers: (body + "&text=subscribe+evil", headers),  # body changed after signing
        lambda body, headers: (body, {**headers, "X-Slack-Signature": "v0=" + "0" * 64}),
        lambda body, headers: (body, {k: v for k, v in headers.items() if k != "X-Slack-Signature"}),
        lambda body, headers: (body, sign(body, int(time.time()) - 301)),  # older than 5 minutes
        lambda body, headers: (body, sign(body, int(time.time()), secret="another-secret")),
    ],
)
async def test_tampered_or_stale_requests_are_refused(bolt, slack, store, tamper):
    body = command_body(slack, "subscribe diffusion")
    body, headers = tamper(body, sign(body, int(time.time())))
    status, text = await post(bolt, body, headers)
    assert status == 401
    await asyncio.sleep(0.2)
    assert store.subscriptions() == [] and slack.called("1") == []


async def test_non_admins_may_look_but_not_change(bolt, slack, store):
    body = command_body(slack, "subscribe diffusion", user="UOTHER")
    await post(bolt, body, sign(body, int(time.time())))
    await wait_for(lambda: slack.called("1"))
    assert "right to manage this channel" in slack.called("1")[0]["text"]
    assert store.subscriptions() == []


def event_body(event: dict) -> str:
    return json.dumps({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                       "event_id": "Ev1", "event_time": 1, "event": event})


async def test_arxiv_links_are_unfurled_into_cards(bolt, slack, store, clock):
    store.add_papers([paper("2411.00001", "Latent diffusion <!channel>")], clock())
    body = event_body({"type": "link_shared", "channel": "C123", "user": "U1", "message_ts": "1.2",
                       "links": [{"domain": "arxiv.org", "url": "https://arxiv.org/abs/2411.00001v2"},
                                 {"domain": "example.com", "url": "https://example.com/x"}]})
    headers = {**sign(body, int(time.time())), "Content-Type": "application/json"}
    assert (await post(bolt, body, headers))[0] == 200
    await wait_for(lambda: slack.called("chat.unfurl"))
    (unfurl,) = slack.called("chat.unfurl")
    assert unfurl["channel"] == "C123" and unfurl["ts"] == "1.2"
    unfurls = unfurl["unfurls"] if isinstance(unfurl["unfurls"], dict) else json.loads(unfurl["unfurls"])
    assert list(unfurls) == ["https://arxiv.org/abs/2411.00001v2"]
    unfurl_blocks = unfurls["https://arxiv.org/abs/2411.00001v2"]["blocks"]
    assert unfurl_blocks[0]["text"]["text"] == "Latent diffusion &lt;!channel&gt;"


@pytest.mark.parametrize("where", ["channel", "channel_id"])
async def test_a_link_in_a_message_being_written_is_unfurled_by_its_unfurl_id(bolt, slack, store, clock, caplog,
                                                                              where):
    # Slack sends link_shared for a link pasted in the message composer too, before the message
    # exists: channel COMPOSER (some payloads name it channel_id), message_ts a made-up id, and
    # unfurl_id and source, by which chat.unfurl must answer (channel and ts name no message).
    store.add_papers([paper("2411.00001", "Latent diffusion")], clock())
    body = event_body({"type": "link_shared", where: "COMPOSER", "user": "U1", "message_ts": "U1-9f2c",
                       "unfurl_id": "U1-9f2c", "source": "composer",
                       "links": [{"domain": "arxiv.org", "url": "https://arxiv.org/abs/2411.00001"}]})
    headers = {**sign(body, int(time.time())), "Content-Type": "application/json"}
    assert (await post(bolt, body, headers))[0] == 200
    await wait_for(lambda: slack.called("chat.unfurl"))
    (unfurl,) = slack.called("chat.unfurl")
    assert unfurl["unfurl_id"] == "U1-9f2c" and unfurl["source"] == "composer"
    assert "channel" not in unfurl and "ts" not in unfurl
    unfurls = unfurl["unfurls"] if isinstance(unfurl["unfurls"], dict) else json.loads(unfurl["unfurls"])
    assert list(unfurls) == ["https://arxiv.org/abs/2411.00001"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_mentions_answer_in_a_thread(bolt, slack, store, clock):
    store.add_papers([paper("2411.00001", "Latent diffusion")], clock())
    body = event_body({"type": "app_mention", "channel": "C123", "user": "U1", "ts": "5.6",
                       "text": "<@UBOT> <https://arxiv.org/abs/2411.00001>"})
    headers = {**sign(body, int(time.time())), "Content-Type": "application/json"}
    await post(bolt, body, headers)
    await wait_for(lambda: slack.called("chat.postMessage"))
    (message,) = slack.called("chat.postMessage")
    assert message["thread_ts"] == "5.6" and message["text"] == "arXiv:2411.00001"
    assert message["blocks"][2]["text"]["text"] == "Latent diffusion"


@pytest.mark.parametrize("text", ["list --me", "saved --me"])
async def test_a_mention_asking_for_my_own_lists_is_answered_to_me_alone(bolt, slack, store, clock, text):
    # `@papers list --me` lists my subscriptions in every channel, private ones and my direct
    # messages with the bot included; it was posted in the public channel's thread for all to read.
    secret = ChannelRef("slack", "GPRIVATE")
    store.add_subscription(secret, "acquisition target", "U1", clock())
    store.add_papers([paper("2411.00001", "Quiet reading")], clock())
    store.record_feedback("U1", secret, "2411.00001", "save", clock())
    body = event_body({"type": "app_mention", "channel": "C123", "user": "U1", "ts": "5.6", "text": f"<@UBOT> {text}"})
    assert (await post(bolt, body, {**sign(body, int(time.time())), "Content-Type": "application/json"}))[0] == 200
    await wait_for(lambda: slack.called("chat.postEphemeral"))
    (answer,) = slack.called("chat.postEphemeral")
    assert answer["channel"] == "C123" and answer["user"] == "U1" and answer["thread_ts"] == "5.6"
    assert ("acquisition target" if text == "list --me" else "Quiet reading") in answer["text"]
    assert slack.called("chat.postMessage") == []


async def test_a_reply_in_a_thread_quoting_a_title_pings_nobody(bolt, slack, store, clock):
    # The reply is posted in the channel's thread; its text (the blocks' fallback, used for
    # notifications) quotes the title as the blocks do: escaped, like a card's.
    store.add_papers([paper("2411.00001", "<!channel> Latent diffusion & <@U123>")], clock())
    body = event_body({"type": "app_mention", "channel": "C123", "user": "U1", "ts": "5.6",
                       "text": "<@UBOT> save 2411.00001"})
    headers = {**sign(body, int(time.time())), "Content-Type": "application/json"}
    await post(bolt, body, headers)
    await wait_for(lambda: slack.called("chat.postMessage"))
    (message,) = slack.called("chat.postMessage")
    assert "&lt;!channel&gt; Latent diffusion &amp; &lt;@U123&gt;" in message["text"]
    assert "<!channel>" not in message["text"] and "<@U123>" not in message["text"]


async def test_a_text_only_reply_is_escaped(bolt, slack, store, clock):
    # The overflow menu's reply is text alone: Slack renders it as mrkdwn.
    sub = store.add_subscription(C123, "diffusion", "U1", clock()).subscription
    payload = {"type": "block_actions", "user": {"id": "UADMIN"}, "channel": {"id": "C123"},
               "team": {"id": "T1"}, "response_url": f"{slack.url}/respond/2", "trigger_id": "1",
               "actions": [{"type": "overflow", "action_id": "papers_overflow", "block_id": "paper:2411.00001",
                            "selected_option": {"value": f"mute:{sub.id}:<!here> ("}}]}
    body = urlencode({"payload": json.dumps(payload)})
    assert (await post(bolt, body, sign(body, int(time.time()))))[0] == 200
    await wait_for(lambda: slack.called("2"))
    (reply,) = slack.called("2")
    assert reply["text"].startswith("Cannot mute `&lt;!here&gt; (`") and "<!here>" not in reply["text"]


async def test_overflow_unsubscribes(bolt, slack, store, clock):
    sub = store.add_subscription(C123, "diffusion", "U1", clock()).subscription
    payload = {"type": "block_actions", "user": {"id": "UADMIN"}, "channel": {"id": "C123"},
               "team": {"id": "T1"}, "response_url": f"{slack.url}/respond/2", "trigger_id": "1",
               "actions": [{"type": "overflow", "action_id": "papers_overflow", "block_id": "paper:2411.00001",
                            "selected_option": {"value": f"unsub:{sub.id}"}}]}
    body = urlencode({"payload": json.dumps(payload)})
    assert (await post(bolt, body, sign(body, int(time.time()))))[0] == 200
    await wait_for(lambda: slack.called("2"))
    assert slack.called("2")[0]["text"].startswith("Unsubscribed #1 `diffusion`.")
    assert store.subscriptions(C123) == []


async def test_overflow_mutes_a_category_as_a_typed_request(bolt, slack, store, clock):
    sub = store.add_subscription(C123, "diffusion", "U1", clock()).subscription
    payload = {"type": "block_actions", "user": {"id": "UADMIN"}, "channel": {"id": "C123"},
               "team": {"id": "T1"}, "response_url": f"{slack.url}/respond/3", "trigger_id": "1",
               "actions": [{"type": "overflow", "action_id": "papers_overflow", "block_id": "paper:2411.00001",
                            "selected_option": {"value": f"mute:{sub.id}:cat:cs.RO"}}]}
    body = urlencode({"payload": json.dumps(payload)})
    assert (await post(bolt, body, sign(body, int(time.time()))))[0] == 200
    await wait_for(lambda: slack.called("3"))
    assert slack.called("3")[0]["text"] == "#1 is now `diffusion -cat:cs.ro`."
    assert store.subscriptions(C123)[0].query == "diffusion -cat:cs.ro"


def test_cli_subscribe_then_poll_posts_to_the_slack_channel(tmp_path, capsys, slack, server, monkeypatch):
    from bot.cli import main

    from .fakes import hf_json

    server.route("/api/daily_papers", hf_json())
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "bot.db"}"\n[sources.huggingface]\nbase_url = "{server.url}"\n'
                      f'[sources.arxiv]\nenabled = false\n[delivery]\nmax_age_days = 100000\n'
                      f'[slack]\napi_url = "{slack.api_url}"\n')
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-cli-token-123456")
    assert main(["--config", str(config), "command", "--channel", "slack:C123", "--user", "U1",
                 "subscribe diffusion"]) == 0
    assert main(["--config", str(config), "poll"]) == 0
    out, err = capsys.readouterr()
    posts = slack.called("chat.postMessage")
    assert [p["channel"] for p in posts] == ["C123", "C123"]
    assert {p["metadata"]["event_payload"]["paper_id"] for p in posts} == {"2410.18538", "2410.18977"}
    assert "delivered: 2 sent" in out
    assert "xoxb-cli-token-123456" not in out + err


async def test_run_serves_http_mode_and_stops(tmp_path, slack, unused_tcp_port, caplog):
    import logging

    from bot.app import App
    from bot.config import Secrets, parse_config

    caplog.set_level(logging.INFO)
    config = parse_config(
        {"storage": {"path": str(tmp_path / "bot.db")},
         "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False}},
         "slack": {"mode": "http", "port": unused_tcp_port, "api_url": slack.api_url}},
        Secrets({"SLACK_BOT_TOKEN": "xoxb-run", "SLACK_SIGNING_SECRET": SECRET}),
    )
    app = App(config)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop, tick=0.01))
    url = f"http://127.0.0.1:{unused_tcp_port}/slack/events"
    await wait_for(lambda: "listening for /papers" in caplog.text)
    body = command_body(slack, "subscribe diffusion", user="U1")
    assert (await post(url, body, {"Content-Type": "application/x-www-form-urlencoded"}))[0] == 401
    assert (await post(url, body, sign(body, int(time.time()))))[0] == 200
    await wait_for(lambda: slack.called("1"))
    assert app.store.subscriptions(C123)[0].query == "diffusion"
    stop.set()
    await asyncio.wait_for(task, 5)
    await app.aclose()


async def test_socket_mode_without_an_app_token_says_so_and_keeps_posting(tmp_path, slack, caplog):
    from bot.app import App
    from bot.config import Secrets, parse_config

    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")}, "slack": {"api_url": slack.api_url}},
                          Secrets({"SLACK_BOT_TOKEN": "xoxb-run"}))
    app = App(config)
    await app.start_frontends()
    assert "Socket Mode needs SLACK_APP_TOKEN" in caplog.text
    assert "slack" in app.adapters
    await app.aclose()


def test_the_manifest_declares_what_the_app_uses():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "slack-manifest.yml").read_text()
    scopes = set(re.findall(r"^\s+- ([a-z_.:]+)\s+#", text, re.MULTILINE))
    assert scopes == {"commands", "chat:write", "links:read", "links:write", "app_mentions:read",
                      "channels:history", "groups:history", "im:history"}
    for needed in ("- command: /papers", "- app_mention", "- link_shared", "- app_home_opened",
                   "home_tab_enabled: true", "messages_tab_enabled: true", "is_enabled: true", "- arxiv.org",
                   "- huggingface.co", "socket_mode_enabled: true"):
        assert needed in text


async def test_overflow_mutes_a_category(bolt, slack, store, clock):
    sub = store.add_subscription(C123, "diffusion", "U1", clock()).subscription
    blocks = validated(card_blocks(card_for(paper("2411.00001", "T", categories=("cs.RO", "cs.LG"))),
                                   (SubscriptionRef(sub.id, sub.query),)))
    (actions,) = [b for b in blocks if b.get("block_id") == "paper:2411.00001"]
    options = actions["elements"][-1]["options"]
    assert [o["value"] for o in options] == ["unsub:1", "mute:1:cat:cs.RO", "mute:1:cat:cs.LG"]
    payload = {"type": "block_actions", "user": {"id": "UADMIN"}, "channel": {"id": "C123"},
               "team": {"id": "T1"}, "response_url": f"{slack.url}/respond/3", "trigger_id": "1",
               "actions": [{"type": "overflow", "action_id": "papers_overflow", "block_id": "paper:2411.00001",
                            "selected_option": {"value": options[1]["value"]}}]}
    body = urlencode({"payload": json.dumps(payload)})
    await post(bolt, body, sign(body, int(time.time())))
    await wait_for(lambda: slack.called("3"))
    assert slack.called("3")[0]["text"] == "#1 is now `diffusion -cat:cs.ro`."


async def test_after_a_crash_a_post_that_went_out_is_not_sent_again(store, clock, slack):
    slack.real_ts = True
    clock.now = clock.now.__class__.fromtimestamp(time.time(), clock.now.tzinfo)
    for paper_id in ("2411.00001", "2411.00002"):
        queue(store, clock, paper_id)
    adapter = adapter_for(slack)
    # The bot claimed both and posted the first; then it was killed before recording it.
    first, second = due_now(store, clock())
    assert store.claim_delivery(first.id, clock()) and store.claim_delivery(second.id, clock())
    card = card_for(store.get_paper(first.paper_id), first.matched)
    assert (await adapter.post(C123, card)).ok
    dispatcher = Dispatcher(store, {"slack": adapter}, clock)
    assert await dispatcher.recover() == (1, 1)
    await dispatcher.dispatch()
    posted = [m["metadata"]["event_payload"]["paper_id"] for m in slack.messages["C123"]]
    assert sorted(posted) == ["2411.00001", "2411.00002"]  # each exactly once
    assert store.delivery_counts() == OutboxCounts(sent=2)
    history = slack.called("conversations.history")[0]
    assert history["channel"] == "C123" and history["include_all_metadata"] in (True, "true", "1")


async def test_a_digests_fallback_text_is_cut_between_entities(store, clock, slack):
    # The fallback was escaped, then cut at 3,000 characters: `&amp;` cut to `&am`, which
    # notifications show as it is. Titles of `&`s put an entity across every possible cut.
    cards = tuple(card_for(paper(f"2411.{i:05d}", "A & B <C> " * 30)) for i in range(1, 21))
    adapter = adapter_for(slack)
    for mentioned in ((), ("U1", "U22")):
        await adapter.post_digest(Digest(C123, "20 new papers for this channel", cards, mentions=mentioned))
    quiet, loud = [body["text"] for body in slack.called("chat.postMessage")]
    for text in (quiet, loud):
        assert 2900 < len(text) <= 3000
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), text[-20:]  # every & starts a whole entity
        assert "<C>" not in text
    assert quiet.startswith("20 new papers for this channel: A &amp; B &lt;C&gt;")
    assert loud.startswith("<@U1> <@U22> 20 new papers for this channel: A &amp; B")


async def test_an_admin_notice_is_cut_between_entities_too(slack):
    # The same cut as the digest's fallback: `escape(text)[:3000]`.
    adapter = adapter_for(slack)
    for shift in range(8):  # every place in an `&amp;` the 3,000th character can fall
        await adapter.post_text(C123, "papers-bot: arxiv has failed (last error: " + "x" * shift + "a&b " * 800)
    bodies = slack.called("chat.postMessage")
    assert len(bodies) == 8
    for body in bodies:
        assert 2900 < len(body["text"]) <= 3000 and not re.search(r"&(?!amp;|lt;|gt;)", body["text"])
