import asyncio

import pytest

import handlers
from bot.models import ChannelRef, CommandRequest

ML = ChannelRef("console", "ml")
OTHER = ChannelRef("discord", "123")


@pytest.fixture
def ctx(store, make_config, clock):
    limits = {"max_subscriptions_per_channel": 3, "commands_per_minute": 1000}
    return handlers.Context(store, make_config(limits=limits), clock)


def run(ctx, text, channel=ML, can_manage=True):
    return asyncio.run(handlers.handle(ctx, CommandRequest(channel, "u1", text, can_manage)))


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
    assert "Usage: `/papers subscribe <query> [--backfill N]`" in reply.text
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
    assert not reply.ok and message in reply.text and "Usage: `/papers unsubscribe <id or all>`" in reply.text


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
    assert detail.startswith("`/papers subscribe <query> [--backfill N]`") and "upvotes>=20" in detail
    assert "There is no command `nope`" in run(ctx, "help nope").text


def test_unknown_and_overlong_commands(ctx):
    reply = run(ctx, "subscrbe diffusion")
    assert not reply.ok and "Unknown command `subscrbe`" in reply.text
    long = run(ctx, "x" * 5000)
    assert not long.ok and "the limit is 1000" in long.text


def test_help_lists_subscriptions_first_and_help_last():
    names = list(handlers.COMMANDS)
    assert names[:2] == ["subscribe", "preview"] and names[-1] == "help"
