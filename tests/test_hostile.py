"""Hostile input: whatever the outside world sends, a poll or a command never crashes,
rendering stays within limits, and tokens never reach logs or replies."""

import asyncio
import json
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import handlers
from bot.adapters.discord_render import card_embed
from bot.adapters.slack_render import card_blocks
from bot.cards import card_for
from bot.errors import SourceError
from bot.models import ChannelRef, Paper
from bot.sources.arxiv import parse_rss
from bot.sources.huggingface import parse_daily_papers

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
nasty_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=400) | st.sampled_from(
    ["<!channel>", "@everyone", "<@U123>", "**x**", "\x1b[2J", "&lt;", "\u202e", "a" * 5000, "", "   "])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | nasty_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.lists(st.fixed_dictionaries({"paper": st.dictionaries(
    st.sampled_from(["id", "title", "summary", "authors", "upvotes", "githubRepo", "publishedAt",
                     "submittedOnDailyAt", "ai_summary", "organization"]), json_values)}), max_size=5) | json_values)
def test_any_json_from_hugging_face_is_parsed_or_refused_cleanly(data):
    try:
        papers = parse_daily_papers(json.dumps(data).encode())
    except SourceError:
        return
    for paper in papers:
        assert paper.id and paper.title


@FUZZ
@given(st.binary(max_size=2000) | nasty_text.map(lambda t: (
    '<rss xmlns:arxiv="http://arxiv.org/schemas/atom" version="2.0"><channel><title>t</title><item>'
    f"<title>{t}</title><link>https://arxiv.org/abs/2411.00001</link><description>{t}</description>"
    "</item></channel></rss>").encode()))
def test_any_bytes_from_arxiv_are_parsed_or_refused_cleanly(body):
    try:
        parse_rss(body)
    except SourceError:
        pass


hostile_papers = st.builds(
    Paper,
    id=st.just("2411.00001"),
    title=nasty_text.filter(str.strip),
    summary=nasty_text,
    authors=st.lists(nasty_text, max_size=5).map(tuple),
    categories=st.lists(st.sampled_from(["cs.LG", "cs.CV"]), max_size=2).map(tuple),
    source=st.sampled_from(["huggingface", "arxiv"]),
    upvotes=st.none() | st.integers(0, 10**6),
)


@FUZZ
@given(hostile_papers, nasty_text)
def test_cards_render_within_platform_limits(paper, reason):
    card = card_for(paper, reason or None, ((1, "x"),))
    for block in card_blocks(card, card.subscriptions):
        block.validate_json()
    text = json.dumps([b.to_dict() for b in card_blocks(card)])
    assert "<!channel>" not in text and "<@U123>" not in text
    embed = card_embed(card)
    assert len(embed) <= 6000 and len(embed.title) <= 256 and len(embed.description) <= 4096
    assert "@everyone" not in (embed.title or "")


@FUZZ
@given(nasty_text)
def test_no_command_text_crashes_a_handler(store, make_config, text):
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 10**9}))
    for prefix in ("", "subscribe ", "preview ", "search ", "show ", "unsubscribe ", "mute 1 ", "digest ",
                   "timezone ", "trending ", "help "):
        request = handlers.request_from_text(ChannelRef("console", "fuzz"), "u", prefix + text, can_manage=True)
        reply = asyncio.run(handlers.handle(ctx, request))
        assert isinstance(reply.text, str) and len(reply.text) < 5000


def test_tokens_never_reach_logs_or_replies(tmp_path, caplog, capsys, monkeypatch, server):
    from bot.cli import main
    from fakes.slack import FakeSlack

    from .fakes import hf_json

    caplog.set_level(logging.DEBUG)
    token, secret = "xoxb-very-secret-token-1234", "discord-very-secret-5678"
    monkeypatch.setenv("SLACK_BOT_TOKEN", token)
    monkeypatch.setenv("DISCORD_TOKEN", secret)
    server.route("/api/daily_papers", hf_json())
    with FakeSlack() as slack:
        slack.script("chat.postMessage", *[(200, {"ok": False, "error": "invalid_auth"}, {})] * 5)
        config = tmp_path / "config.toml"
        config.write_text(f'[storage]\npath = "{tmp_path / "bot.db"}"\n'
                          f'[sources.huggingface]\nbase_url = "{server.url}"\n'
                          f'[sources.arxiv]\nenabled = false\n[slack]\napi_url = "{slack.api_url}"\n'
                          '[discord]\napi_base = "http://127.0.0.1:9/api/v10"\n[delivery]\nmax_age_days = 100000\n')
        for channel in ("slack:C1", "discord:1"):
            main(["-v", "--config", str(config), "command", "--channel", channel, "--user", "u", "subscribe diffusion"])
        main(["-v", "--config", str(config), "poll"])
        main(["-v", "--config", str(config), "command", "--channel", "slack:C1", "--user", "u", "status"])
    out, err = capsys.readouterr()
    everything = out + err + caplog.text
    assert "invalid_auth" in everything  # the failures were logged...
    assert token not in everything and secret not in everything  # ...without the tokens


@FUZZ
@given(st.lists(hostile_papers, min_size=1, max_size=4))
def test_hostile_papers_never_crash_a_poll_or_a_delivery(store, clock, papers):
    import io

    from bot.adapters import ConsoleAdapter
    from bot.dispatch import Dispatcher
    from bot.poller import Poller

    from .fakes import FakeSource

    store.add_subscription(ChannelRef("console", "fuzz"), "upvotes>=0 OR diffusion", "u", clock())
    unique = {p.id + str(i): p for i, p in enumerate(papers)}
    source = FakeSource(papers=[Paper(**{**p.__dict__, "id": f"2411.{i:05d}"}) for i, p in enumerate(unique.values())])
    report = asyncio.run(Poller(store, clock).poll(source))
    assert report.ok
    out = io.StringIO()
    delivered = asyncio.run(Dispatcher(store, {"console": ConsoleAdapter(out)}, clock).dispatch())
    assert delivered.failed == 0 and "\x1b" not in out.getvalue()


def test_a_full_digest_shows_every_paper_on_both_platforms():
    # A digest marks every paper in it as sent, so every one must be visible in it.
    from bot.adapters.discord_render import digest_embed
    from bot.adapters.slack_render import digest_blocks
    from bot.dispatch import DIGEST_MAX
    from bot.models import Digest

    worst = "<&>*_~`|@everyone " * 40
    cards = tuple(card_for(Paper(id=f"2411.{i:05d}", title=worst, summary="", upvotes=10**6))
                  for i in range(DIGEST_MAX))
    digest = Digest(ChannelRef("console", "x"), "20 new papers for this channel", cards)
    slack_text = json.dumps([b.to_dict() for b in digest_blocks(digest)])
    embed = digest_embed(digest)
    for i in range(DIGEST_MAX):
        assert f"/abs/2411.{i:05d}" in slack_text
        assert f"/abs/2411.{i:05d})" in embed.description
    assert "more" not in slack_text.split("20 new papers")[1] and embed.footer.text is None
    assert len(embed.description) <= 4096 and len(embed) <= 6000
