from dataclasses import replace

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


async def test_message_ids_stay_unique_across_restarts_so_follow_ups_find_their_card(tmp_path, clock):
    # Each run counted its ids from console-1: the second run's first card had the first run's id,
    # and a card sharing its message with another counts as a digest's, which gets no follow-ups.
    import io

    import handlers
    from bot.adapters.console import ConsoleAdapter
    from bot.app import App
    from bot.config import Secrets, parse_config

    from .fakes import FakeSource

    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                           "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False}}},
                          Secrets({}))
    first, second = (paper(i, f"Diffusion {i}", source="huggingface", upvotes=1, listed_on=None)
                     for i in ("2611.00001", "2611.00002"))
    outs = []

    async def run(*listed):  # one `papers-bot run` (or `poll`): a new process, a new console adapter
        outs.append(io.StringIO())
        app = App(config, clock=clock, adapters={"console": ConsoleAdapter(outs[-1])})
        app.sources = [FakeSource("huggingface", list(listed))]
        if len(outs) == 1:
            reply = await app.handle_command(handlers.request_from_text(ChannelRef("console", "ml"), "me",
                                                                        "subscribe diffusion"))
            assert reply.ok
        await app.poll_once()
        ids = [row[0] for row in app.store.db.execute("SELECT message_id FROM deliveries ORDER BY id")]
        await app.aclose()
        clock.advance(hours=1)
        return ids

    await run(first)
    ids = await run(first, second)
    assert len(ids) == 2 and all(i.startswith("console-") for i in ids)
    assert ids[0] != ids[1]
    await run(replace(first, github="https://github.com/acme/x"), second)
    assert f"[console:ml] ↳ {ids[0]}: Code released: https://github.com/acme/x" in outs[-1].getvalue()


def test_cards_and_digests_name_the_people_who_subscribed_with_me():
    from bot.adapters.console import render_digest
    from bot.models import Digest

    channel = ChannelRef("console", "ml")
    card = replace(card_for(paper("2410.00001", "T")), mentions=("U1", "U2"))
    assert render_card(card, channel).splitlines()[-1] == "  For @U1, @U2"
    many = replace(card, mentions=tuple(f"U{i}" for i in range(25)))
    assert render_card(many, channel).endswith("@U19 and 5 more")
    digest = Digest(channel, "2 new papers", (card, card), mentions=("U1",))
    assert render_digest(digest).splitlines()[-1] == "For @U1"
    assert "For " not in render_card(card_for(paper("2410.00002", "T")), channel)
