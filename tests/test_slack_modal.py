"""Slack's subscribe modal, end to end over signed HTTP against the fake Web API: `/papers subscribe`
without a query opens it (views.open), each edit of the query updates its preview (views.update
with the view's id and hash), submitting subscribes the channel it was opened from, with the
same checks and errors as `/papers subscribe <query>` shown under the input."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

import pytest
from slack_sdk.models.views import View

import handlers
from bot.adapters.slack_adapter import build_bolt_app, make_web_client, modal_channel, start_http
from bot.adapters.slack_render import (
    ACTION_OPEN_FORM,
    ACTION_QUERY,
    BLOCK_PREVIEW,
    BLOCK_QUERY,
    MODAL_SUBSCRIBE,
    subscribe_modal,
)
from bot.models import ChannelRef, QueryPreview

from .fakes import paper
from .test_slack import SECRET, command_body, post, sign, wait_for

C123 = ChannelRef("slack", "C123")


class Bot:
    """The bolt app behind a signed HTTP endpoint, with the handlers on a real store."""

    def __init__(self, url: str, app, ctx):
        self.url, self.app, self.ctx = url, app, ctx
        self.previews_run: list[str] = []  # the queries the `preview` command ran for
        self.gate: asyncio.Event | None = None  # set: previews wait for it
        self.subscribe_gate: asyncio.Event | None = None  # set: subscribes wait for it

    async def send(self, payload: dict) -> tuple[int, str]:
        body = urlencode({"payload": json.dumps(payload)})
        return await post(self.url, body, sign(body, int(time.time())))

    async def command(self, slack, text: str, user: str = "UADMIN") -> tuple[int, str]:
        body = command_body(slack, text, user=user)
        return await post(self.url, body, sign(body, int(time.time())))

    async def idle(self) -> None:
        await self.app.previews.idle()


@pytest.fixture
async def bot(store, make_config, clock, slack, unused_tcp_port):
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 5}), clock)
    holder: dict = {}

    async def on_command(request):
        if request.verb == "preview":
            holder["bot"].previews_run.append(request.args.get("query"))
            if holder["bot"].gate is not None:
                await holder["bot"].gate.wait()
        if request.verb == "subscribe" and holder["bot"].subscribe_gate is not None:
            await holder["bot"].subscribe_gate.wait()
        return await handlers.handle(ctx, request)

    client = make_web_client("xoxb-test-token", slack.api_url)
    app = build_bolt_app(client, signing_secret=SECRET, on_command=on_command, admins=("UADMIN",))
    runner = await start_http(app, unused_tcp_port, signing_secret=SECRET, host="127.0.0.1")
    holder["bot"] = Bot(f"http://127.0.0.1:{unused_tcp_port}/slack/events", app, ctx)
    yield holder["bot"]
    await runner.cleanup()


def edit(view: dict, value: str | None, user: str = "UADMIN", view_hash: str | None = None) -> dict:
    """A block_actions payload as Slack sends it when the modal's query input is edited."""
    state = {"values": {BLOCK_QUERY: {ACTION_QUERY: {"type": "plain_text_input", "value": value}}}}
    return {
        "type": "block_actions", "user": {"id": user, "username": "ada", "name": "ada", "team_id": "T1"},
        "api_app_id": "A1", "token": "x", "container": {"type": "view", "view_id": view["id"]},
        "trigger_id": "2.3.4", "team": {"id": "T1", "domain": "lab"}, "enterprise": None,
        "is_enterprise_install": False,
        "view": {**view, "team_id": "T1", "state": state, "hash": view_hash or view["hash"], "previous_view_id": None,
                 "root_view_id": view["id"], "app_id": "A1", "external_id": "", "bot_id": "B1"},
        "actions": [{"type": "plain_text_input", "block_id": BLOCK_QUERY, "action_id": ACTION_QUERY,
                     "value": value, "action_ts": "1700000000.000100"}],
    }


def submission(view: dict, value: str | None, user: str = "UADMIN", **changes) -> dict:
    """A view_submission payload as Slack sends it when the modal is submitted."""
    state = {"values": {BLOCK_QUERY: {ACTION_QUERY: {"type": "plain_text_input", "value": value}}}}
    return {
        "type": "view_submission", "team": {"id": "T1", "domain": "lab"},
        "user": {"id": user, "username": "ada", "name": "ada", "team_id": "T1"},
        "api_app_id": "A1", "token": "x", "trigger_id": "3.4.5",
        "view": {**view, "team_id": "T1", "state": state, "previous_view_id": None, "root_view_id": view["id"],
                 "app_id": "A1", "external_id": "", "bot_id": "B1", **changes},
        "response_urls": [], "is_enterprise_install": False, "enterprise": None,
    }


def preview_text(view: dict) -> str:
    (block,) = [b for b in view["blocks"] if b.get("block_id") == BLOCK_PREVIEW]
    return block["text"]["text"] if "text" in block else block["elements"][0]["text"]


async def open_modal(bot, slack) -> dict:
    status, _ = await bot.command(slack, "subscribe")
    assert status == 200
    await wait_for(lambda: slack.called("views.open"))
    return slack.views["V0001"]


# ---- rendering ----------------------------------------------------------------------------

def test_the_modal_is_valid_block_kit_with_a_dispatching_input_and_escaped_preview():
    hostile = paper("2411.00001", "<!channel> & <@U1> " + "long " * 80, upvotes=3)
    from bot.cards import card_for

    form = handlers.subscribe_form(C123, "<!here> `x`", QueryPreview(
        "<!here> `x`", normalized="<!here> `x`", estimate="In the last 30 days it would have matched 1 of 1.",
        examples=(card_for(hostile),)))
    view = subscribe_modal(form, '{"channel": "C123"}')
    view.validate_json()  # slack_sdk's limits: title 24, blocks, texts
    data = view.to_dict()
    assert data["callback_id"] == MODAL_SUBSCRIBE and data["private_metadata"] == '{"channel": "C123"}'
    (input_block, preview) = data["blocks"]
    assert input_block["dispatch_action"] is True and input_block["block_id"] == BLOCK_QUERY
    element = input_block["element"]
    assert element["action_id"] == ACTION_QUERY and element["max_length"] == 500
    assert element["dispatch_action_config"] == {"trigger_actions_on": ["on_enter_pressed", "on_character_entered"]}
    assert element["initial_value"] == "<!here> `x`"  # plain text input: shown as typed, never parsed as mrkdwn
    text = preview["text"]["text"]
    assert "<!" not in text and "<@" not in text and "&lt;!channel&gt; &amp; &lt;@U1&gt;" in text
    assert "`&lt;!here&gt; ’x’`" in text  # a backtick cannot end the code span early
    assert len(text) <= 3000
    update = subscribe_modal(form, "{}", opening=False).to_dict()
    assert "initial_value" not in update["blocks"][0]["element"]  # what the user is typing stays
    error = subscribe_modal(handlers.subscribe_form(C123, "x", QueryPreview("\"x", error="unclosed quote at column 1")),
                            "{}").to_dict()
    assert "unclosed quote at column 1" in error["blocks"][1]["text"]["text"]


def test_the_preview_fits_slack_limits_at_the_worst_and_cuts_only_whole_lines():
    from bot.cards import card_for

    worst = tuple(card_for(paper(f"2411.0000{n}", "&<>" * 100, upvotes=10**6)) for n in range(5))
    form = handlers.subscribe_form(C123, "&" * 500, QueryPreview("&" * 500, normalized="&" * 500,
                                                                 estimate="&" * 600, examples=worst))
    view = subscribe_modal(form, '{"channel": "C123"}')
    view.validate_json()
    text = view.to_dict()["blocks"][1]["text"]["text"]
    assert len(text) <= 3000
    for line in text.split("\n")[2:]:
        assert line.startswith("• <https://arxiv.org/abs/") and line.endswith("· ▲ 1000000")


def test_a_card_title_made_of_entities_is_cut_not_a_crash():
    from bot.adapters.slack_render import card_blocks
    from bot.cards import card_for

    blocks = [b.to_dict() for b in card_blocks(card_for(paper("2411.00001", "&" * 300)))]
    header = blocks[0]["text"]["text"]
    assert len(header) <= 150 and header.startswith("&amp;" * 20)  # before: IndexError in shorten


@pytest.mark.parametrize("metadata", ['{"channel": "C123"}'])
def test_private_metadata_names_a_channel_or_nothing(metadata):
    assert modal_channel(metadata) == C123
    for bad in ('{"channel": "C1 23"}', '{"channel": "../x"}', '{"channel": 5}', "[]", "not json", "", None,
                '{"channel": "' + "C" * 40 + '"}'):
        assert modal_channel(bad) is None, bad


# ---- over signed HTTP -----------------------------------------------------------------------

async def test_subscribe_without_a_query_opens_the_modal_for_the_channel(bot, slack):
    view = await open_modal(bot, slack)
    (opened,) = slack.called("views.open")
    assert opened["trigger_id"] == "1.2.3"  # the slash command's
    assert view["callback_id"] == MODAL_SUBSCRIBE and json.loads(view["private_metadata"]) == {"channel": "C123"}
    assert "Type a query" in preview_text(view)
    await asyncio.sleep(0.1)
    assert slack.called("1") == []  # no ephemeral reply: the modal is the answer


async def test_without_the_manage_right_no_modal_opens_and_the_reply_says_why(bot, slack):
    await bot.command(slack, "subscribe", user="UOTHER")
    await wait_for(lambda: slack.called("1"))
    assert "right to manage this channel" in slack.called("1")[0]["text"]
    assert slack.called("views.open") == []


async def test_an_expired_trigger_falls_back_to_the_text_reply(bot, slack):
    slack.script("views.open", (200, {"ok": False, "error": "expired_trigger_id"}, {}))
    await bot.command(slack, "subscribe")
    await wait_for(lambda: slack.called("1"))
    assert "the query is empty" in slack.called("1")[0]["text"]


async def test_editing_the_query_updates_the_preview_with_estimate_and_recent_papers(bot, slack, store, clock):
    store.add_papers([paper("2411.00001", "Latent diffusion <!channel> models"),
                      paper("2411.00002", "Video diffusion", upvotes=12),
                      paper("2411.00003", "Robot learning")], clock())
    view = await open_modal(bot, slack)
    assert (await bot.send(edit(view, "diffusion -video")))[0] == 200
    await bot.idle()
    (update,) = slack.called("views.update")
    assert update["view_id"] == view["id"] and update["hash"] == view["hash"]
    text = preview_text(slack.views[view["id"]])
    assert "*Understood as* `diffusion -video`" in text
    assert "would have matched 1 of 3 stored papers" in text
    assert "Latent diffusion &lt;!channel&gt; models" in text and "Video diffusion" not in text
    assert slack.views[view["id"]]["private_metadata"] == view["private_metadata"]


async def test_a_query_that_does_not_parse_shows_why_in_the_preview(bot, slack):
    view = await open_modal(bot, slack)
    await bot.send(edit(view, '"large language'))
    await bot.idle()
    text = preview_text(slack.views[view["id"]])
    assert "unclosed quote at column 1" in text and "Usage" not in text
    await bot.send(edit(slack.views[view["id"]], ""))  # emptied: back to the prompt
    await bot.idle()
    assert "Type a query" in preview_text(slack.views[view["id"]])


async def test_edits_while_a_preview_runs_are_coalesced_to_the_newest(bot, slack, store, clock):
    store.add_papers([paper("2411.00001", "Diffusion transformers")], clock())
    view = await open_modal(bot, slack)
    bot.gate = asyncio.Event()
    await bot.send(edit(view, "d"))
    await wait_for(lambda: bot.previews_run == ["d"])
    for typed in ("di", "dif", "diffusion"):  # each still carries the hash views.open gave
        await bot.send(edit(view, typed))
    bot.gate.set()
    await bot.idle()
    assert bot.previews_run == ["d", "diffusion"]  # one at a time, and only the newest of those waiting
    (update,) = slack.called("views.update")  # "d" was outdated when it was ready: not shown
    assert "`diffusion`" in preview_text(update["view"])
    assert "would have matched 1 of 1 stored paper" in preview_text(slack.views[view["id"]])


async def test_an_edit_sent_before_our_last_update_landed_still_updates_the_view(bot, slack):
    view = await open_modal(bot, slack)
    await bot.send(edit(view, "diffusion"))
    await bot.idle()
    await bot.send(edit(view, "diffusion model"))  # Slack sent it with the hash views.open gave
    await bot.idle()
    first, second = slack.called("views.update")
    assert first["hash"] == view["hash"] and second["hash"] == "2.hash"  # the one our first update returned
    assert "`diffusion model`" in preview_text(slack.views[view["id"]])


async def test_live_previews_do_not_use_up_the_command_rate_limit(bot, slack):
    view = await open_modal(bot, slack)  # 1 of 5 commands this minute
    for typed in ("a1", "a1 b", "a1 b2", "a1 b2 c", "a1 b2 c3", "a1 b2 c3 d"):
        await bot.send(edit(slack.views[view["id"]], typed))
        await bot.idle()
    assert "a1 b2 c3 d" in preview_text(slack.views[view["id"]])
    status, body = await bot.send(submission(slack.views[view["id"]], "a1 b2 c3 d"))
    assert status == 200 and json.loads(body)["response_action"] == "update"


async def test_submitting_subscribes_the_channel_it_was_opened_from(bot, slack, store):
    view = await open_modal(bot, slack)
    status, body = await bot.send(submission(view, "Diffusion -video"))
    assert status == 200
    answer = json.loads(body)
    assert answer["response_action"] == "update"
    done = answer["view"]
    assert done["blocks"][0]["text"]["text"].startswith("Subscribed this channel to `diffusion -video` (#1).")
    assert done["close"]["text"] == "Done" and "submit" not in done
    (sub,) = store.subscriptions(C123)
    assert sub.query == "diffusion -video" and sub.created_by == "UADMIN"


@pytest.mark.parametrize("value, message", [
    ('"large language', "Cannot subscribe: unclosed quote at column 1."),
    ("-video", "Cannot subscribe: a query must include something"),
    ("titel:x", 'Cannot subscribe: unknown field "titel" (did you mean title?)'),
    (None, "Cannot subscribe: the query is empty"),
])
async def test_a_bad_query_is_an_error_under_the_input_and_nothing_is_stored(bot, slack, store, value, message):
    view = await open_modal(bot, slack)
    status, body = await bot.send(submission(view, value))
    assert status == 200
    answer = json.loads(body)
    assert answer["response_action"] == "errors" and list(answer["errors"]) == [BLOCK_QUERY]
    assert answer["errors"][BLOCK_QUERY].startswith(message) and "Usage" not in answer["errors"][BLOCK_QUERY]
    assert store.subscriptions() == []


async def test_submitting_needs_the_manage_right_checked_again(bot, slack, store):
    view = await open_modal(bot, slack)
    status, body = await bot.send(submission(view, "diffusion", user="UOTHER"))
    answer = json.loads(body)
    assert answer["response_action"] == "errors"
    assert "right to manage this channel" in answer["errors"][BLOCK_QUERY]
    assert store.subscriptions() == []


async def test_the_channel_limit_is_an_error_in_the_modal(bot, slack, store, clock):
    for n in range(bot.ctx.config.max_subscriptions_per_channel):
        store.add_subscription(C123, f"word{n}", "U1", clock())
    view = await open_modal(bot, slack)
    answer = json.loads((await bot.send(submission(view, "diffusion")))[1])
    assert answer["response_action"] == "errors" and "the limit" in answer["errors"][BLOCK_QUERY]


@pytest.mark.parametrize("metadata", ['{"channel": "C999 <!channel>"}', "garbage", ""])
async def test_a_form_whose_channel_is_not_ours_subscribes_nothing(bot, slack, store, metadata):
    view = await open_modal(bot, slack)
    answer = json.loads((await bot.send(submission(view, "diffusion", private_metadata=metadata)))[1])
    assert answer["response_action"] == "errors" and "lost its channel" in answer["errors"][BLOCK_QUERY]
    await bot.send(edit({**view, "private_metadata": metadata}, "diffusion"))
    await asyncio.sleep(0.2)
    await bot.idle()
    assert store.subscriptions() == [] and slack.called("views.update") == []


async def test_malformed_modal_payloads_get_400(bot, slack):
    view = await open_modal(bot, slack)
    for payload in ({**submission(view, "x"), "view": "not a view"},
                    {**submission(view, "x"), "view": {**view, "state": []}},
                    {**edit(view, "x"), "view": None},
                    {**edit(view, "x"), "actions": [{"action_id": ACTION_QUERY, "value": 5}]}):
        assert (await bot.send(payload))[0] == 400


async def test_a_preview_reply_offers_subscribe_which_opens_the_modal_with_its_query(bot, slack, store, clock):
    store.add_papers([paper("2411.00001", "Diffusion transformers")], clock())
    await bot.command(slack, "preview diffusion")
    await wait_for(lambda: slack.called("1"))
    blocks = slack.called("1")[0]["blocks"]
    (button,) = [b for b in blocks if b.get("block_id") == ACTION_OPEN_FORM][0]["elements"]
    assert button["action_id"] == ACTION_OPEN_FORM and button["value"] == "diffusion"
    click = {"type": "block_actions", "user": {"id": "UADMIN"}, "channel": {"id": "C123"}, "team": {"id": "T1"},
             "container": {"type": "message", "channel_id": "C123", "is_ephemeral": True},
             "response_url": f"{slack.url}/respond/9", "trigger_id": "9.9.9",
             "actions": [{**button, "block_id": ACTION_OPEN_FORM, "action_ts": "1.2"}]}
    assert (await bot.send(click))[0] == 200
    await wait_for(lambda: slack.called("views.update"))  # the fake records views.open before the bot reads it
    await bot.idle()
    (opened,) = slack.called("views.open")
    assert opened["trigger_id"] == "9.9.9"
    assert opened["view"]["blocks"][0]["element"]["initial_value"] == "diffusion"
    assert "would have matched 1 of 1 stored paper" in preview_text(slack.views["V0001"])  # previewed at once
    View(**{k: v for k, v in slack.views["V0001"].items() if k != "state"}).validate_json()


async def test_a_slow_subscribe_is_acknowledged_in_time_and_its_result_shown_after(bot, slack, store, monkeypatch):
    from bot.adapters import slack_adapter

    monkeypatch.setattr(slack_adapter, "ACK_WITHIN", 0.2)
    view = await open_modal(bot, slack)
    bot.subscribe_gate = asyncio.Event()
    answer = json.loads((await bot.send(submission(view, "diffusion")))[1])
    assert answer["response_action"] == "update"
    assert answer["view"]["blocks"][0]["text"]["text"] == "Subscribing…"
    assert store.subscriptions() == []
    bot.subscribe_gate.set()
    await wait_for(lambda: slack.called("views.update"))
    (update,) = slack.called("views.update")
    assert update["view_id"] == view["id"]
    assert update["view"]["blocks"][0]["text"]["text"].startswith("Subscribed this channel to `diffusion` (#1).")
    assert [s.query for s in store.subscriptions(C123)] == ["diffusion"]


# ---- the whole bot, over Socket Mode ----------------------------------------------------------

async def test_over_socket_mode_the_running_bot_opens_previews_and_subscribes(tmp_path):
    """The App as `papers-bot run` wires it: the slash command, an edit and the submission
    arrive as Socket Mode envelopes, and the submission's answer travels in the envelope's ack."""
    import io
    import uuid

    from bot.app import App
    from fakes.socket_mode import FakeSlackSocketMode, FakeSocketMode

    from .test_frontends import slack_config, until

    with FakeSocketMode() as socket_mode, FakeSlackSocketMode(socket_mode.url) as slack:
        app = App(slack_config(tmp_path, slack), stdout=io.StringIO())
        try:
            await app.start_frontends()
            await until(lambda: socket_mode.open_connections == 1)
            socket_mode.slash_command("subscribe", response_url=f"{slack.url}/commands/reply1", user="U1")
            await until(lambda: slack.views)
            view = slack.views["V0001"]
            assert json.loads(view["private_metadata"]) == {"channel": "C123"}

            def interactive(payload: dict) -> str:
                envelope = str(uuid.uuid4())
                socket_mode.send({"envelope_id": envelope, "type": "interactive", "payload": payload,
                                  "accepts_response_payload": True})
                return envelope

            interactive(edit(view, '"open', user="U1"))
            await until(lambda: slack.called("views.update"))
            assert "unclosed quote at column 1" in preview_text(slack.views["V0001"])
            refused = interactive(submission(view, '"open', user="U1"))
            await until(lambda: refused in socket_mode.acks)
            assert socket_mode.acks[refused]["payload"]["response_action"] == "errors"
            accepted = interactive(submission(view, "diffusion", user="U1"))
            await until(lambda: accepted in socket_mode.acks)
            answer = socket_mode.acks[accepted]["payload"]
            assert answer["response_action"] == "update"
            assert answer["view"]["blocks"][0]["text"]["text"].startswith("Subscribed this channel to `diffusion`")
            assert [(s.channel.key, s.query) for s in app.store.subscriptions()] == [("slack:C123", "diffusion")]
        finally:
            await app.stop_frontends()
            await app.aclose()
