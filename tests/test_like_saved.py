"""like:saved (issue 13): the channel's saved papers are the examples, its "Not relevant"
ones the negatives, and the subscription follows the feedback from poll to poll.

Through the real Store, the handlers (`save`, `unsave`, `not-relevant`, `subscribe`,
`preview`) and the Poller, on the seed page's real papers (tests/test_recommend.py)."""

from dataclasses import replace

import pytest

import handlers
from bot.cards import card_for, read_similar_fact
from bot.errors import QueryError
from bot.like import like_query
from bot.models import ChannelRef
from bot.poller import Poller
from bot.query import normalize_query, parse_query
from bot.recommend import Recommender, profile, split_like

from .fakes import FakeSource, due_now
from .test_recommend import DIFFUSION, EXAMPLES, MATH, ML, NEW_DIFFUSION, NEW_MATH, stock

OTHER = ChannelRef("console", "other")


async def run(ctx, text, channel=ML):
    return await handlers.handle(ctx, handlers.request_from_text(channel, "u1", text))


@pytest.fixture
def ctx(store, make_config, clock):
    stock(store, clock)
    return handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)


async def save(ctx, papers, channel=ML, kind="save"):
    for paper in papers:
        reply = await run(ctx, f"{kind} {paper.id}", channel)
        assert reply.ok, reply.text


def delivered(store, clock, channel):
    return {d.paper_id: d for d in due_now(store, clock()) if d.channel == channel}


# ---- the query language ------------------------------------------------------------------

def test_like_saved_parses_alone_with_ids_and_with_keywords_and_normalizes_stably():
    assert normalize_query("like:saved") == "like:saved"
    assert normalize_query("like:SAVED") == "like:saved"
    assert normalize_query("like:2406.12345,saved -survey cat:cs.CL") == "like:saved,2406.12345 -survey cat:cs.cl"
    assert normalize_query("like:2406.12345 like:saved 2405.00001 like:saved") == "like:saved,2406.12345,2405.00001"
    for text in ("like:saved", "like:saved,2406.12345 -survey cat:cs.cl score>=0.2"):
        assert normalize_query(normalize_query(text)) == normalize_query(text)
    found = split_like(parse_query("like:saved,2406.12345 score>=0.2 -survey"))
    assert found.saved and found.examples == ("2406.12345",) and found.min_score == 0.2
    assert found.keywords == ("not", ("word", "any", "survey", "survey"))
    alone = like_query("like:saved")
    assert alone.saved and alone.examples == () and alone.keywords is None
    assert not like_query("like:2406.12345").saved
    ids = ",".join(f"2406.{i:05d}" for i in range(20))
    assert split_like(parse_query(f"like:saved,{ids}")).saved  # saved is not one of the 20 examples
    with pytest.raises(QueryError, match="at most 20 examples"):
        parse_query(f"like:saved,{ids},2406.99999")
    with pytest.raises(QueryError, match="top level"):
        parse_query("diffusion OR like:saved")


# ---- subscribe and preview -----------------------------------------------------------------

async def test_like_saved_with_nothing_saved_says_how_to_save(ctx):
    for command in ("subscribe like:saved", "preview like:saved -survey"):
        reply = await run(ctx, command)
        assert not reply.ok  # the reason, in lower case after the colon as every other one
        assert reply.text.startswith(f"Cannot {command.split()[0]}: this channel has not saved any papers yet: "
                                     "press Save under a card, or give arXiv ids: like:2406.12345.\n")
    await save(ctx, EXAMPLES, OTHER)  # another channel's saves are not this one's
    assert not (await run(ctx, "subscribe like:saved")).ok
    assert ctx.store.subscriptions(ML) == []


async def test_preview_like_saved_uses_the_saved_papers_and_leaves_the_not_relevant_ones_out(ctx):
    await save(ctx, EXAMPLES, ML)
    await save(ctx, EXAMPLES, OTHER)
    await save(ctx, DIFFUSION[3:8], ML, "not-relevant")
    mine = await run(ctx, "preview like:saved --min-score 0.01", ML)
    theirs = await run(ctx, "preview like:saved --min-score 0.01", OTHER)
    assert mine.ok and "`: papers like 3 examples (" in mine.text and EXAMPLES[0].title[:80] in mine.text
    listed = [p for p in DIFFUSION[3:8] if f"(arXiv:{p.id})" in theirs.text]
    assert listed  # like the saved papers: listed where nobody marked them
    assert not any(f"(arXiv:{p.id})" in mine.text for p in DIFFUSION[3:8] + EXAMPLES)
    count = int(mine.text.split("would have posted ")[1].split(" of ")[0])
    assert count < int(theirs.text.split("would have posted ")[1].split(" of ")[0])


# ---- through the poll ----------------------------------------------------------------------

async def test_saved_papers_then_a_poll_post_a_similar_new_paper(ctx, clock):
    await save(ctx, EXAMPLES)
    poller = Poller(ctx.store, clock, recommender=Recommender(per_day=1))
    ctx.recommender = poller.recommender
    reply = await run(ctx, "subscribe like:saved")
    assert reply.ok and "Subscribed this channel to `like:saved` (#1)" in reply.text
    assert "Papers like 3 examples" in reply.text
    clock.advance(hours=1)
    report = await poller.poll(FakeSource(papers=[replace(p, listed_on=clock().date())
                                                  for p in NEW_DIFFUSION + NEW_MATH]))
    assert report.ok and report.new == 4
    due = delivered(ctx.store, clock, ML)
    assert {p.id for p in NEW_DIFFUSION} <= set(due) and not {p.id for p in NEW_MATH} & set(due)
    (match,) = due[NEW_DIFFUSION[0].id].matched
    score, example_id, title = read_similar_fact(match.terms[0])
    assert match.query == "like:saved" and example_id in {p.id for p in EXAMPLES}
    assert card_for(NEW_DIFFUSION[0], [match]).reason == f"#1 `like:saved`: similar to {title} ({score:.2f})"
    assert poller.recommender.match_many(EXAMPLES) == [[], [], []]  # a saved paper is never recommended back


async def test_a_save_after_subscribing_changes_the_next_poll_without_resubscribing(ctx, clock):
    await save(ctx, MATH[:3])
    poller = Poller(ctx.store, clock, recommender=Recommender(per_day=1))
    ctx.recommender = poller.recommender
    assert (await run(ctx, "subscribe like:saved")).ok
    clock.advance(hours=1)
    assert (await poller.poll(FakeSource(papers=[NEW_DIFFUSION[0]]))).ok
    assert NEW_DIFFUSION[0].id not in delivered(ctx.store, clock, ML)  # like math papers: not this one
    entry = poller.recommender._subs[1]
    vector = entry.vector
    clock.advance(hours=1)
    assert (await poller.poll(FakeSource(papers=[]))).ok
    assert poller.recommender._subs[1].vector is vector  # the feedback did not change: not rebuilt
    await save(ctx, MATH[:3], kind="unsave")
    await save(ctx, EXAMPLES)  # the channel now saves diffusion papers
    clock.advance(hours=1)
    assert (await poller.poll(FakeSource(papers=[NEW_DIFFUSION[1]]))).ok
    entry = poller.recommender._subs[1]
    assert {p.id for p in entry.examples} == {p.id for p in EXAMPLES} and entry.vector is not vector
    assert ctx.store.get_subscription(1).query == "like:saved"  # the same subscription
    due = delivered(ctx.store, clock, ML)
    assert NEW_DIFFUSION[1].id in due
    assert read_similar_fact(due[NEW_DIFFUSION[1].id].matched[0].terms[0])[1] in {p.id for p in EXAMPLES}


async def test_not_relevant_papers_push_a_close_paper_below_the_threshold(ctx, clock):
    """Two channels save the same papers; one also marks papers like the new one not relevant:
    with the same threshold, only the other channel gets it (negatives ignored: both would)."""
    negatives = DIFFUSION[3:8]
    check = Recommender()
    check.fit(ctx.store, clock())
    row = check.vectors([NEW_DIFFUSION[0]])
    positives = check.vectors(EXAMPLES)
    plain = float(check.model.scores(row, profile(positives))[0])
    pushed = float(check.model.scores(row, profile(positives, check.vectors(negatives)))[0])
    assert pushed < plain - 0.002
    between = round((plain + pushed) / 2, 3)
    await save(ctx, EXAMPLES, ML)
    await save(ctx, EXAMPLES, OTHER)
    await save(ctx, negatives, ML, "not-relevant")
    poller = Poller(ctx.store, clock, recommender=Recommender())
    ctx.recommender = poller.recommender
    for channel in (ML, OTHER):
        assert (await run(ctx, f"subscribe like:saved --min-score {between}", channel)).ok
    clock.advance(hours=1)
    assert (await poller.poll(FakeSource(papers=[NEW_DIFFUSION[0]]))).ok
    assert NEW_DIFFUSION[0].id in delivered(ctx.store, clock, OTHER)
    assert NEW_DIFFUSION[0].id not in delivered(ctx.store, clock, ML)
    # A paper marked not relevant is never recommended back to the channel.
    assert all(m.channel != ML for found in poller.recommender.match_many(negatives) for m in found)


async def test_marking_not_relevant_after_subscribing_rebuilds_the_profile_at_the_next_poll(ctx, clock):
    await save(ctx, EXAMPLES)
    poller = Poller(ctx.store, clock, recommender=Recommender())
    ctx.recommender = poller.recommender
    assert (await run(ctx, "subscribe like:saved")).ok
    clock.advance(hours=1)
    assert (await poller.poll(FakeSource(papers=[]))).ok
    before = poller.recommender._subs[1]
    assert before.negatives == [] and before.vector is not None
    others = poller.recommender.vectors(DIFFUSION[8:])
    plain = poller.recommender.model.scores(others, before.vector)
    await save(ctx, DIFFUSION[3:8], kind="not-relevant")
    clock.advance(hours=1)
    assert (await poller.poll(FakeSource(papers=[]))).ok
    after = poller.recommender._subs[1]
    assert {p.id for p in after.negatives} == {p.id for p in DIFFUSION[3:8]}
    assert poller.recommender.model.scores(others, after.vector).mean() < plain.mean()
    assert {p.id for p in DIFFUSION[3:8]} <= after.excluded
