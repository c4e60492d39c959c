"""The subscribe form as the handlers give it (platform-neutral values the adapters render):
`subscribe` without a query asks for one with the form, `preview` fills its preview."""

import asyncio

import pytest

import handlers
from bot.models import ChannelRef, CommandRequest, QueryPreview, SubscribeForm

from .fakes import paper

ML = ChannelRef("console", "ml")


@pytest.fixture
def ctx(store, make_config, clock):
    return handlers.Context(store, make_config(limits={"commands_per_minute": 3}), clock)


def handle(ctx, verb, args=None, can_manage=True, live=False):
    return asyncio.run(handlers.handle(ctx, CommandRequest(ML, "u1", verb, args or {}, can_manage,
                                                           live_preview=live)))


def test_subscribe_without_a_query_gives_the_form_and_the_reason_for_text_front_ends(ctx):
    reply = asyncio.run(handlers.handle(ctx, handlers.request_from_text(ML, "u1", "subscribe")))
    assert not reply.ok and "the query is empty" in reply.text and "Usage" in reply.text
    form = reply.form
    assert isinstance(form, SubscribeForm) and form.channel == ML and form.query == "" and form.preview is None
    assert len(form.title) <= 24 and len(form.submit) <= 24 and form.max_length == 500
    assert ctx.store.subscriptions() == []


def test_the_form_needs_the_manage_right_like_subscribe(ctx):
    reply = handle(ctx, "subscribe", can_manage=False)
    assert not reply.ok and reply.form is None and "right to manage" in reply.text


def test_a_bad_query_gives_no_form(ctx):
    reply = handle(ctx, "subscribe", {"query": '"open'})
    assert not reply.ok and reply.form is None and "unclosed quote" in reply.text


def test_preview_fills_the_form_with_the_estimate_and_the_newest_matches(ctx, clock):
    ctx.store.add_papers([paper(f"2411.0000{n}", f"Diffusion paper {n}", upvotes=n) for n in range(1, 6)]
                         + [paper("2411.00009", "Robots")], clock())
    reply = handle(ctx, "preview", {"query": "Diffusion"})
    assert reply.ok and reply.text.startswith("`diffusion`: in the last 30 days it would have matched 5 of 6")
    preview = reply.form.preview
    assert preview == QueryPreview("Diffusion", normalized="diffusion",
                                   estimate="In the last 30 days it would have matched 5 of 6 stored papers.",
                                   examples=preview.examples)
    assert len(preview.examples) == 3 and all("Diffusion" in card.title for card in preview.examples)
    assert reply.form.query == "Diffusion" and reply.form.channel == ML


def test_preview_of_a_bad_query_says_why_without_the_usage(ctx):
    reply = handle(ctx, "preview", {"query": "titel:x"})
    assert not reply.ok
    reason = 'unknown field "titel" (did you mean title?) at column 1'
    assert reply.form.preview == QueryPreview("titel:x", error=reason)


def test_live_previews_are_not_counted_as_commands_but_nothing_else_escapes_the_limit(ctx):
    for _ in range(10):
        assert handle(ctx, "preview", {"query": "diffusion"}, live=True).ok
    for _ in range(3):
        assert handle(ctx, "list", live=True).ok  # the flag is for previews only: these count
    refused = handle(ctx, "preview", {"query": "diffusion"})
    assert not refused.ok and "too fast" in refused.text
