from bot.adapters.console import render_card, render_reply, terminal_safe
from bot.cards import card_for
from bot.models import ChannelRef, Match, Reply

from .fakes import paper


def test_escape_sequences_from_outside_text_are_removed():
    assert terminal_safe("ok\x1b[2J\x07 title\u202e") == "ok[2J title"


def test_card_rendering_is_terminal_safe_and_complete():
    channel = ChannelRef("console", "ml")
    card = card_for(paper("2410.00001", "Evil \x1b]0;pwned\x07 title", upvotes=7),
                    (Match(2, channel, "x\x1b[2J", ("x\x07 in title",)),))
    text = render_card(card, channel)
    assert "\x1b" not in text and "\x07" not in text
    assert "Matched #2 `x[2J`: x in title" in text
    assert text.splitlines()[0] == "[console:ml] Evil ]0;pwned title"
    assert "arXiv:2410.00001 · ▲ 7" in text
    assert "Hugging Face: https://huggingface.co/papers/2410.00001" in text


def test_reply_rendering_includes_cards():
    reply = Reply("Found 1:", cards=(card_for(paper("2410.00001", "T")),))
    assert render_reply(reply).startswith("Found 1:\n\nT\n")


def test_counts_agree_with_their_nouns():
    one = render_card(card_for(paper("2411.00001", upvotes=3, comments=1)))
    two = render_card(card_for(paper("2411.00002", upvotes=3, comments=2)))
    assert "▲ 3 · 1 comment\n" in one
    assert "▲ 3 · 2 comments\n" in two
