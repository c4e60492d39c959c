import asyncio

import pytest

import handlers
from bot.errors import StorageBusy
from bot.models import ChannelRef, CommandRequest

ML = ChannelRef("console", "ml")
OTHER = ChannelRef("discord", "123")


@pytest.fixture
def ctx(store, make_config, clock):
    limits = {"max_subscriptions_per_channel": 3, "commands_per_minute": 1000}
    return handlers.Context(store, make_config(limits=limits), clock)


def run(ctx, text, channel=ML, can_manage=True):
    return asyncio.run(handlers.handle(ctx, handlers.request_from_text(channel, "u1", text, can_manage)))


def test_subscribe_echoes_the_normalized_query_and_an_id(ctx):
    reply = run(ctx, "subscribe  Diffusion ")
    assert reply.ok and reply.text.startswith("Subscribed this channel to `diffusion` (#1).")
    assert [s.query for s in ctx.store.subscriptions(ML)] == ["diffusion"]


def test_subscribe_twice_is_idempotent(ctx):
    run(ctx, "subscribe diffusion")
    reply = run(ctx, "subscribe DIFFUSION")
    assert reply.ok and "already subscribed" in reply.text and "#1" in reply.text
    assert len(ctx.store.subscriptions(ML)) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("subscribe", "the query is empty"),
        ("subscribe ?!", '"?!" has no letters or digits at column 1'),
        ("subscribe " + "a" * 600, "the limit is 500"),
        ('subscribe "large language', "unclosed quote at column 1"),
        ("subscribe titel:x", 'unknown field "titel" (did you mean title?)'),
        ("subscribe -video", "a query must include something"),
    ],
)
def test_subscribe_errors_say_why_and_show_usage(ctx, text, message):
    reply = run(ctx, text)
    assert not reply.ok and message in reply.text
    assert "Usage: `/papers subscribe <query> [--backfill N] [--min-score X] [--me]`" in reply.text
    assert ctx.store.subscriptions(ML) == []  # nothing half-written


def test_subscription_limit_per_channel(ctx):
    for word in ("a1", "b2", "c3"):
        assert run(ctx, f"subscribe {word}").ok
    reply = run(ctx, "subscribe d4")
    assert not reply.ok and "3 subscriptions, the limit" in reply.text
    assert run(ctx, "subscribe a1").ok  # an existing one is still acknowledged
    assert run(ctx, "subscribe d4", channel=OTHER).ok  # the limit is per channel


def test_unsubscribe_by_number(ctx):
    run(ctx, "subscribe diffusion")
    reply = run(ctx, "unsubscribe #1")
    assert reply.ok and reply.text.startswith("Unsubscribed #1 `diffusion`.")
    assert ctx.store.subscriptions(ML) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("unsubscribe", "Which subscription? Give its number from `/papers list`, or `all`."),
        ("unsubscribe three", "`three` is not a subscription number"),
        ("unsubscribe -1", "is not a subscription number"),
        ("unsubscribe 99999999999999999999", "is not a subscription number"),
        ("unsubscribe 7", "This channel has no subscription #7"),
    ],
)
def test_unsubscribe_errors(ctx, text, message):
    reply = run(ctx, text)
    assert not reply.ok and message in reply.text and "Usage: `/papers unsubscribe <id or all> [--me]`" in reply.text


def test_unsubscribe_cannot_touch_another_channel(ctx):
    run(ctx, "subscribe diffusion", channel=OTHER)
    reply = run(ctx, "unsubscribe 1")
    assert not reply.ok and "no subscription #1" in reply.text
    assert len(ctx.store.subscriptions(OTHER)) == 1


def test_list_shows_ids_queries_and_counts(ctx):
    assert "no subscriptions" in run(ctx, "list").text.lower()
    run(ctx, "subscribe diffusion")
    run(ctx, "subscribe Language AND agents")
    text = run(ctx, "list").text
    assert "Subscriptions of this channel (2), delivered as instant cards (time zone UTC):" in text
    assert '#1 `diffusion` · since 2026-11-27 · 0 posted' in text
    assert '#2 `language agents`' in text


def test_changes_need_the_manage_right_but_lookups_do_not(ctx):
    reply = run(ctx, "subscribe diffusion", can_manage=False)
    assert not reply.ok and "right to manage this channel" in reply.text
    assert not run(ctx, "unsubscribe 1", can_manage=False).ok
    assert run(ctx, "list", can_manage=False).ok
    assert run(ctx, "help", can_manage=False).ok


def test_help_lists_every_command_from_docstrings(ctx):
    text = run(ctx, "help").text
    for cmd in handlers.COMMANDS.values():
        assert f"`/papers {cmd.usage}` · {cmd.summary}" in text
    assert run(ctx, "").text == text  # a bare /papers shows help


def test_help_for_one_command_and_unknown_ones(ctx):
    detail = run(ctx, "help subscribe").text
    assert detail.startswith("`/papers subscribe <query> [--backfill N] [--min-score X] [--me]`")
    assert "upvotes>=20" in detail
    assert "There is no command `nope`" in run(ctx, "help nope").text


def test_unknown_and_overlong_commands(ctx):
    reply = run(ctx, "subscrbe diffusion")
    assert not reply.ok and "Unknown command `subscrbe`" in reply.text
    long = run(ctx, "x" * 5000)
    assert not long.ok and "the limit is 1000" in long.text


def test_help_lists_subscriptions_first_and_help_last():
    names = list(handlers.COMMANDS)
    assert names[:2] == ["subscribe", "preview"] and names[-1] == "help"


# ---- the command seam: text parsed once, typed arguments checked once ----------------------

@pytest.mark.parametrize(
    "text, verb, args",
    [
        ("", "help", {}),
        ("  SUBSCRIBE  diffusion model ", "subscribe", {"query": "diffusion model"}),
        ("subscribe --backfill 5 \"large  language\" -video", "subscribe",
         {"query": "\"large  language\" -video", "backfill": "5"}),  # the query as typed, option anywhere
        ("subscribe diffusion --backfill", "subscribe", {"query": "diffusion", "backfill": ""}),
        ("subscribe x --backfill 3 --me --backfill=5 --me", "subscribe",  # refused by handle(), which names it
         {"query": "x", "backfill": "5", "me": "", "--": "backfill,me"}),
        ("mute #3 cat:cs.RO video", "mute", {"subscription": "#3", "term": "cat:cs.RO video"}),
        ("digest daily 09:00", "digest", {"mode": "daily", "time": "09:00"}),  # too few words: no day
        ("digest weekly fri 18:30", "digest", {"mode": "weekly", "day": "fri", "time": "18:30"}),
        ("trending", "trending", {}),
        ("unsubscribe 1 2", "unsubscribe", {"subscription": "1 2"}),  # the last parameter takes the rest
        ("pause now please", "pause", {}),
        ("subscrbe diffusion", "subscrbe", {}),
    ],
)
def test_parse_text_maps_words_to_the_declared_parameters(text, verb, args):
    assert handlers.parse_text(text) == (verb, args)


def typed(ctx, verb, args, channel=ML):
    return asyncio.run(handlers.handle(ctx, CommandRequest(channel, "u1", verb, args)))


def test_typed_and_text_requests_get_the_same_replies(ctx, store):
    by_text = run(ctx, "subscribe Diffusion --backfill 2", channel=OTHER).text
    assert typed(ctx, "subscribe", {"query": "Diffusion", "backfill": 2}).text == by_text.replace("(#1)", "(#2)")
    assert "Backfill: posting 0 recent matches now." in by_text
    assert typed(ctx, "mute", {"subscription": 2, "term": "video"}).text == "#2 is now `diffusion -video`."
    assert run(ctx, "mute 2 robot").text == "#2 is now `diffusion -video -robot`."
    assert typed(ctx, "digest", {"mode": "weekly", "day": "fri", "time": "18:30"}).text == \
        run(ctx, "digest weekly fri 18:30").text


@pytest.mark.parametrize(
    "verb, args, message",
    [
        ("subscribe", {"query": "diffusion", "backfill": 25}, "--backfill needs a number from 1 to 20, not `25`."),
        ("subscribe", {"query": "diffusion", "backfill": "many"}, "--backfill needs a number from 1 to 20"),
        ("subscribe", {"query": "diffusion", "colour": "red"}, "`subscribe` has no option `--colour`."),
        ("search", {}, "What should I search for? Give some words."),
        ("show", {"paper": "  "}, "Which paper? Give an arXiv id or link."),
        ("digest", {"mode": "weekly", "time": "09:00"}, "Say `off`, `daily HH:MM` or `weekly DAY HH:MM`."),
    ],
)
def test_typed_arguments_are_checked_against_the_declared_parameters(ctx, verb, args, message):
    reply = typed(ctx, verb, args)
    assert not reply.ok and message in reply.text
    assert f"Usage: `/papers {handlers.COMMANDS[verb].usage}`" in reply.text
    assert ctx.store.subscriptions(ML) == []


def test_every_command_declares_its_parameters_for_the_platforms():
    for cmd in handlers.COMMANDS.values():
        for param in cmd.params:
            assert param.description and len(param.description) <= 100, (cmd.name, param.name)
            assert param.kind in ("text", "word", "int", "flag")
            assert param.kind != "flag" or param.option, (cmd.name, param.name)  # a flag is `--name`
            assert not param.choices or len(param.choices) <= 25
        positional = [p for p in cmd.params if not p.option]
        assert all(p.kind != "text" for p in positional[:-1]), cmd.name  # only the last takes free text


def test_completions_come_from_the_declared_source(ctx, clock, monkeypatch):
    ctx.store.add_subscription(ML, "diffusion", "u1", clock())
    ctx.store.add_subscription(ML, "agents", "u1", clock())
    assert handlers.complete(ctx, ML, "unsubscribe", "subscription", "") == [
        ("#1 diffusion", "1"), ("#2 agents", "2"), ("all of them", "all")]
    assert handlers.complete(ctx, ML, "mute", "subscription", "AGE") == [("#2 agents", "2")]
    assert handlers.complete(ctx, ML, "timezone", "zone", "tokyo") == [("Asia/Tokyo", "Asia/Tokyo")]
    assert handlers.complete(ctx, ML, "search", "words", "x") == []  # nothing to suggest there
    assert handlers.complete(ctx, ML, "nope", "x", "") == []

    def busy(channel=None):
        raise StorageBusy("the database is busy; try again", ctx.store.path)

    monkeypatch.setattr(ctx.store, "subscriptions", busy)
    assert handlers.complete(ctx, ML, "unsubscribe", "subscription", "") == []


def test_links_and_mentions_become_show_requests():
    text = "see https://arxiv.org/abs/2411.00001v2, https://huggingface.co/papers/2411.00002 and https://x.org"
    assert handlers.paper_links(text) == ["2411.00001", "2411.00002"]
    assert handlers.paper_in_link("https://arxiv.org/pdf/2411.00003v1") == "2411.00003"
    assert handlers.paper_in_link("https://example.com") is None
    show = handlers.show_request(ML, "u1", "2411.00001")
    assert (show.verb, dict(show.args), show.can_manage) == ("show", {"paper": "2411.00001"}, False)
    bare = handlers.mention_request(ML, "u1", "https://arxiv.org/abs/2411.00001 please", True)
    assert (bare.verb, dict(bare.args)) == ("show", {"paper": "https://arxiv.org/abs/2411.00001"})
    command = handlers.mention_request(ML, "u1", "search 2411.00001", True)
    assert (command.verb, dict(command.args)) == ("search", {"words": "2411.00001"})
    assert handlers.mention_request(ML, "u1", "", True).verb == "help"


@pytest.mark.parametrize(
    "line, option", [("subscribe --bogus foo", "--bogus"), ("preview --backfill 3 diffusion", "--backfill")]
)
def test_a_typed_option_the_command_does_not_have_is_refused_not_taken_as_query(ctx, line, option):
    reply = run(ctx, line)
    assert not reply.ok and f"has no option `{option}`" in reply.text
    assert ctx.store.subscriptions(ML) == []
    assert run(ctx, "subscribe -survey diffusion").ok  # one dash still excludes a word


@pytest.mark.parametrize("line, message", [
    # Given twice, an option was both values at once: refused as a number, or as a score
    # ("--min-score takes a number from 0 to 1"), not as given twice; `--me --me` was taken.
    ("subscribe robots --backfill 3 --backfill 5", "--backfill is given more than once; give it once.\nUsage:"),
    ("subscribe like:2406.12345 --min-score 0.3 --min-score=0.5", "--min-score is given more than once; give it"),
    ("subscribe robots --min-score 0.3 --backfill 2 --min-score 0.3", "--min-score is given more than once"),
    ("subscribe --me robots --me", "--me is given more than once; give it once."),
    ("list --me --me", "--me is given more than once; give it once.\nUsage: `/papers list [--me]`"),
    ("preview robots --min-score 0.3 --min-score", "--min-score is given more than once"),
    ("subscribe robots --backfill", "--backfill needs a number from 1 to 20.\n"),
    ("subscribe robots --backfill=x", "--backfill needs a number from 1 to 20, not `x`."),
])
def test_an_option_given_twice_or_without_a_number_is_refused_with_what_was_given(ctx, line, message):
    reply = run(ctx, line)
    assert not reply.ok and message in reply.text
    assert ctx.store.subscriptions(ML) == []


def test_an_option_can_be_written_with_an_equals_sign(ctx):
    reply = run(ctx, "subscribe diffusion --backfill=3")
    assert reply.ok and "Backfill" in reply.text
    assert [s.query for s in ctx.store.subscriptions(ML)] == ["diffusion"]


def test_invisible_characters_typed_or_pasted_are_dropped_as_the_sources_drop_them(ctx):
    # A zero-width space, a soft hyphen or a direction mark pasted from a web page: the sources
    # drop them from titles and abstracts, so a query keeping one split a word ("diff usion")
    # and never matched; a time zone or a number with one was refused though it read right.
    reply = run(ctx, "subscribe diff\u200busion multi\u00admodal")
    assert reply.ok and "`diffusion multimodal` (#1)" in reply.text, reply.text
    assert run(ctx, "timezone Europe/Berlin\u200b").text.startswith("Time zone set to Europe/Berlin")
    assert run(ctx, "mute 1\u200e video").text == "#1 is now `diffusion multimodal -video`."
    # Typed options of other front-ends (Discord's) are the same text.
    typed = CommandRequest(ML, "u1", "subscribe", {"query": "\u2066trans\u200dformer\u2069", "me": True})
    reply = asyncio.run(handlers.handle(ctx, typed))
    assert reply.ok and "`transformer` (#2)" in reply.text, reply.text
    assert [s.query for s in ctx.store.subscriptions(ML)] == ["diffusion multimodal -video", "transformer"]
