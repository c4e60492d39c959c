"""Complete cards: categories, organization, listing date, comments, Slack's thumbnail and
project page, the AI summary labelled, and "why matched" quoting the abstract when the card
does not show the matched words. Read back from what the fake Slack and Discord received."""

import json
from datetime import date

import pytest
from slack_sdk.models.blocks import Block

from bot.adapters.discord_adapter import DiscordAdapter
from bot.adapters.slack_adapter import SlackAdapter, make_web_client
from bot.cards import RANK_ORDER, SNIPPET_MAX, abstract_snippet, card_for
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Match
from fakes.discord import FakeDiscord
from fakes.slack import FakeSlack

from .fakes import paper

SLACK, DISCORD = ChannelRef("slack", "C123"), ChannelRef("discord", "123")
ABSTRACT = ("We study how to train large models cheaply. " * 12
            + "Our key idea is a latent <!channel> @everyone diffusion prior over video frames. "
            + "Experiments on many benchmarks follow. " * 10)
HF_PAPER = paper(
    "2411.00001", "Cheap training of *big* models", ABSTRACT, authors=("Ada", "Grace"), upvotes=42, comments=3,
    categories=("cs.CV", "cs.LG"), organization="Evil <!here> Lab @everyone (evil)", listed_on=date(2026, 11, 20),
    ai_summary="A method trains big models for less.", source="huggingface",
    thumbnail="https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2411.00001.png",
    github="https://github.com/x/y", project_page="https://project.example/page")
WHY = ("diffusion in abstract", '"video frames" in abstract')


def queue(store, clock, channel, p=HF_PAPER, terms=WHY):
    store.add_papers([p], clock())
    sub = store.add_subscription(channel, "diffusion", "U1", clock()).subscription
    store.enqueue(p.id, [Match(sub.id, channel, sub.query, terms)], clock())


def test_the_card_carries_the_facts_and_labels_the_ai_summary():
    card = card_for(HF_PAPER, [Match(1, SLACK, "diffusion", WHY)])
    assert (card.categories, card.comments, card.listed_on) == (("cs.CV", "cs.LG"), 3, date(2026, 11, 20))
    assert card.organization == "Evil <!here> Lab @everyone (evil)"  # plain: each renderer escapes
    assert card.body == "A method trains big models for less." and card.body_label == "AI summary"
    assert card.project_page == "https://project.example/page"
    # The AI summary shows neither matched term: the abstract is quoted around them.
    assert "diffusion prior over video frames" in card.snippet and len(card.snippet) <= SNIPPET_MAX
    assert card.snippet.startswith("…")


def test_no_quote_when_the_card_shows_the_matched_words():
    shown = paper("2411.00002", "Diffusion everywhere", "Diffusion models beat GANs on video frames.")
    card = card_for(shown, [Match(1, SLACK, "diffusion", ("diffusion in abstract", '"video frames" in abstract'))])
    assert card.body_label == "" and card.snippet is None
    # Plurals and hyphens: "model" finds "models", the phrase "text to image" finds "text-to-image".
    assert abstract_snippet("Our text-to-image models.", "", [Match(1, SLACK, "q", ("model in abstract",))]) \
        == "Our text-to-image models."
    assert abstract_snippet("Our text-to-image models.", "other text",
                            [Match(1, SLACK, "q", ('"text to image" in abstract',))]) == "Our text-to-image models."
    # A term in the title, or one the abstract does not hold as typed: nothing to quote.
    assert abstract_snippet(ABSTRACT, "", [Match(1, SLACK, "q", ("cheap in title", "author Ada"))]) is None


async def test_slack_cards_show_thumbnail_facts_project_page_and_the_quote(store, clock):
    queue(store, clock, SLACK)
    with FakeSlack() as slack:
        adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), sleep=_no_sleep)
        assert (await Dispatcher(store, {"slack": adapter}, clock).dispatch()).sent == 1
        (body,) = slack.called("chat.postMessage")
    blocks = body["blocks"]
    for block in blocks:
        Block.parse(block).validate_json()  # within Slack's block limits
    text = json.dumps(blocks)
    assert "<!channel>" not in text and "<!here>" not in text
    header, section, facts, why = blocks[:4]
    assert section["text"]["text"] == "*AI summary:* A method trains big models for less."
    assert section["accessory"] == {"type": "image", "alt_text": "Thumbnail: Cheap training of *big* models",
                                    "image_url": HF_PAPER.thumbnail}
    line = facts["elements"][0]["text"]
    for fact in ("▲ 42 upvotes", "💬 3 comments", "Evil &lt;!here&gt; Lab @everyone (evil)", "cs.CV, cs.LG",
                 "listed 2026-11-20", "<https://project.example/page|Project page>"):
        assert fact in line
    matched, quote = (e["text"] for e in why["elements"])
    assert matched.startswith("Matched #1 `diffusion`: diffusion in abstract")
    assert quote.startswith("From the abstract: “…") and "latent &lt;!channel&gt; @everyone diffusion prior" in quote


async def test_discord_embeds_show_the_facts_and_the_quote_within_limits(store, clock):
    queue(store, clock, DISCORD)
    with FakeDiscord() as fake:
        adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
        try:
            assert (await Dispatcher(store, {"discord": adapter}, clock).dispatch()).sent == 1
        finally:
            await adapter.close()
        ((_, body),) = fake.posts
    (embed,) = body["embeds"]
    assert embed["description"] == "**AI summary:** A method trains big models for less."
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Upvotes"] == "▲ 42" and fields["Comments"] == "💬 3" and fields["Listed"] == "2026-11-20"
    assert fields["Categories"] == "cs.CV, cs.LG"
    assert "@everyone" not in fields["Organization"] and "Evil" in fields["Organization"]
    assert "From the abstract: “…" in fields["Why"] and "diffusion prior over video frames" in fields["Why"]
    assert "@everyone" not in fields["Why"]
    assert embed["thumbnail"]["url"] == HF_PAPER.thumbnail
    assert len(json.dumps(embed)) < 6000 and all(len(v) <= 1024 for v in fields.values())
    assert ("Project page", "https://project.example/page") in [
        (b["label"], b["url"]) for b in body["components"][0]["components"]]


@pytest.mark.parametrize("platform", ["slack", "discord"])
async def test_a_burst_digest_says_how_it_is_ordered(store, clock, platform):
    channel = SLACK if platform == "slack" else DISCORD
    papers = [paper(f"2411.{n:05d}", f"Diffusion {n}", upvotes=n) for n in range(12)]
    store.add_papers(papers, clock())
    sub = store.add_subscription(channel, "diffusion", "U1", clock()).subscription
    for p in papers:
        store.enqueue(p.id, [Match(sub.id, channel, sub.query, ("diffusion in title",))], clock())
    if platform == "slack":
        with FakeSlack() as slack:
            adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), sleep=_no_sleep)
            await Dispatcher(store, {"slack": adapter}, clock, cards_per_cycle=10).dispatch()
            posts = slack.called("chat.postMessage")
        digest = posts[-1]["blocks"]
        assert [p["metadata"]["event_payload"]["paper_id"] for p in posts[:10]] == \
            [f"2411.{n:05d}" for n in range(11, 1, -1)]  # the most upvoted as cards, best first
        assert digest[1] == {"type": "context", "elements": [{"type": "mrkdwn", "text": RANK_ORDER}]}
        assert "Diffusion 1>" in digest[2]["text"]["text"].split("\n")[0]  # then 1, then 0
    else:
        with FakeDiscord() as fake:
            adapter = DiscordAdapter("discord-test-token", api_base=fake.api_base)
            try:
                await Dispatcher(store, {"discord": adapter}, clock, cards_per_cycle=10).dispatch()
            finally:
                await adapter.close()
            posts = [body for _, body in fake.posts]
        lines = posts[-1]["embeds"][0]["description"].split("\n")
        assert lines[0] == f"*{RANK_ORDER}*" and lines[1].startswith("• [Diffusion 1]")


async def _no_sleep(seconds):
    pass


async def test_a_thumbnail_slack_cannot_fetch_does_not_cost_the_card(store, clock):
    queue(store, clock, SLACK)
    with FakeSlack() as slack:
        # What Slack answers when it cannot download an image block's image.
        slack.script("chat.postMessage", (200, {"ok": False, "error": "invalid_blocks"}, {}))
        adapter = SlackAdapter(make_web_client("xoxb-test-token", slack.api_url), sleep=_no_sleep)
        assert (await Dispatcher(store, {"slack": adapter}, clock).dispatch()).sent == 1
        first, second = slack.called("chat.postMessage")
    assert "accessory" in first["blocks"][1] and "accessory" not in second["blocks"][1]
    assert second["blocks"][1]["text"]["text"].startswith("*AI summary:*")
