"""like: subscriptions (issue 13): the query terms, the recommender, the poll, subscribe and preview.

The papers are the seed page's real titles and abstracts (bench/data/hf-papers-page.txt),
grouped by topic in bench/data/recommend-groups.toml."""

import asyncio
import json
from dataclasses import replace
from datetime import timedelta

import pytest

import handlers
from bench.recommend import load_groups, seed_papers
from bot.cards import card_for, read_similar_fact, why_matched
from bot.errors import ConfigError, QueryError
from bot.lookup import PaperLookup
from bot.models import ChannelRef, Match, Subscription
from bot.poller import Poller
from bot.query import normalize_query, parse_query
from bot.recommend import Recommender, profile, similar_fact, split_like
from bot.sources import HuggingFaceSource, make_client
from fakes.http import Canned

from .fakes import FakeSource, due_now, fixture

ML = ChannelRef("console", "ml")
PAPERS = seed_papers()
GROUPS = load_groups(PAPERS)
DIFFUSION = [PAPERS[i] for i in GROUPS["diffusion-image-generation"]]
MATH = [PAPERS[i] for i in GROUPS["reasoning-math"]]
EXAMPLES = DIFFUSION[:3]
NEW_DIFFUSION = DIFFUSION[-2:]  # "One-Step Image Super-Resolution with Diffusion Priors", "UNIC-Adapter"
NEW_MATH = MATH[-2:]
NEW = {p.id for p in NEW_DIFFUSION + NEW_MATH}


def like(papers) -> str:
    return "like:" + ",".join(p.id for p in papers)


def stock(store, clock):
    """Every seed paper but the new ones, listed over the last 20 days."""
    history = [p for p in PAPERS if p.id not in NEW]
    for day in range(20):
        moment = clock() - timedelta(days=20 - day)
        store.add_papers([replace(p, listed_on=moment.date()) for p in history[day::20]], moment)


def run(ctx, text, channel=ML):
    return asyncio.run(handlers.handle(ctx, handlers.request_from_text(channel, "u1", text)))


@pytest.fixture
def ctx(store, make_config, clock):
    return handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)


# ---- the query language ------------------------------------------------------------------

def test_like_terms_normalize_and_combine_with_keywords():
    assert normalize_query("like:2406.12345") == "like:2406.12345"
    assert normalize_query("like:2406.12345 https://huggingface.co/papers/2405.00001 -survey cat:cs.CL") == \
        "like:2406.12345,2405.00001 -survey cat:cs.cl"
    assert normalize_query("score>=0.35 like:https://arxiv.org/abs/2406.12345v2 like:2406.12345") == \
        "like:2406.12345 score>=0.35"
    assert normalize_query("(like:2406.12345 -survey) -video") == "like:2406.12345 -survey -video"
    found = split_like(parse_query("like:2406.12345,2405.00001 score>=0.2 -survey cat:cs.CL"))
    assert found.examples == ("2406.12345", "2405.00001") and found.min_score == 0.2
    assert found.keywords == ("and", (("not", ("word", "any", "survey", "survey")), ("cat", "cs.cl")))
    assert split_like(parse_query("diffusion 2406.12345")) is None  # no like: term: the id is words


@pytest.mark.parametrize("text, message", [
    ("like:banana", 'not "banana"'),
    ("diffusion OR like:2406.12345", "top level"),
    ("-like:2406.12345 diffusion", "top level"),
    ("score>=0.3 diffusion", "score>= goes with like:"),
    ("like:2406.12345 score>=2", "from 0 to 1"),
    ("like:" + ",".join(f"2406.{i:05d}" for i in range(21)), "at most 20 examples"),
])
def test_like_terms_refused_say_why(text, message):
    with pytest.raises(QueryError, match=message):
        parse_query(text)


# ---- cards -------------------------------------------------------------------------------

def test_a_like_match_says_which_example_it_is_like():
    fact = similar_fact(EXAMPLES[0], 0.4234)
    assert read_similar_fact(fact) == (0.42, EXAMPLES[0].id, EXAMPLES[0].title)
    reason = why_matched([Match(7, ML, like(EXAMPLES), (fact,))])
    assert reason == f"#7 `{like(EXAMPLES)}`: similar to {EXAMPLES[0].title} (0.42)"
    assert card_for(NEW_DIFFUSION[0], [Match(7, ML, "like:x", (fact,))]).reason.endswith("(0.42)")
    assert why_matched([Match(1, ML, "diffusion", ("diffusion in title",))]) == "#1 `diffusion`: diffusion in title"


# ---- the recommender ---------------------------------------------------------------------

def test_the_recommender_scores_the_examples_topic_above_others(store, clock):
    stock(store, clock)
    recommender = Recommender(per_day=1)  # the store holds 5 to 6 papers a day: half of them would be 3 a day
    recommender.fit(store, clock())
    sub = Subscription(1, ML, like(EXAMPLES), "u1", clock())
    keyword = Subscription(2, ML, "diffusion", "u1", clock())
    assert recommender.sync(store, {1, 2}, [sub, keyword]) == [keyword]  # keyword ones are the matcher's
    rows = recommender.vectors(NEW_DIFFUSION + NEW_MATH)
    scores = list(recommender.model.scores(rows, recommender._subs[1].vector))
    assert min(scores[:2]) > max(scores[2:])
    assert [[sid for sid, _ in found] for found in recommender.score(rows)][:2] == [[1], [1]]
    between = f"{(min(scores[:2]) + max(scores[2:])) / 2:.3f}"
    sub = Subscription(1, ML, f"{like(EXAMPLES)} score>={between}", "u1", clock())
    recommender.sync(store, {1}, [sub])
    matches = recommender.match_many(NEW_DIFFUSION + NEW_MATH)
    assert [bool(m) for m in matches] == [True, True, False, False]
    score, example_id, _ = read_similar_fact(matches[0][0].terms[0])
    assert example_id in {p.id for p in EXAMPLES} and score > 0
    assert recommender.match_many(EXAMPLES) == [[], [], []]  # an example is never recommended
    recommender.sync(store, set(), [])
    assert len(recommender) == 0 and recommender.match_many(NEW_DIFFUSION) == [[], []]


def test_negatives_push_their_topic_down(store, clock):
    """The scorer takes positives and negatives (ids of saved and "Not relevant" papers, later)."""
    stock(store, clock)
    recommender = Recommender()
    recommender.fit(store, clock())
    model = recommender.model
    others = model.vectors(DIFFUSION[8:])
    positives, negatives = model.vectors(EXAMPLES), model.vectors(DIFFUSION[3:8])
    plain = model.scores(others, profile(positives))
    pushed = model.scores(others, profile(positives, negatives))
    assert pushed.mean() < plain.mean()
    math = model.vectors(MATH)
    assert (model.scores(math, profile(positives)) - model.scores(math, profile(positives, negatives))).mean() < \
        (plain - pushed).mean()


# ---- through the poll ----------------------------------------------------------------------

async def test_a_like_subscription_gets_similar_new_papers_from_the_poll(store, make_config, clock):
    stock(store, clock)
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)
    poller = Poller(store, clock, recommender=Recommender(per_day=1))  # of 5 to 6 papers stored a day
    ctx.recommender = poller.recommender
    reply = await handlers.handle(ctx, handlers.request_from_text(ML, "u1", f"subscribe {like(EXAMPLES)}"))
    assert reply.ok and f"Subscribed this channel to `{like(EXAMPLES)}` (#1)" in reply.text
    assert "Papers like 3 examples" in reply.text
    await handlers.handle(ctx, handlers.request_from_text(ML, "u1", "subscribe diffusion"))
    clock.advance(hours=1)
    report = await poller.poll(FakeSource(papers=[replace(p, listed_on=clock().date())
                                                  for p in NEW_DIFFUSION + NEW_MATH]))
    assert report.ok and report.new == 4
    due = {d.paper_id: d for d in due_now(store, clock())}
    liked = {paper_id: [m for m in d.matched if m.subscription_id == 1] for paper_id, d in due.items()}
    assert {p.id for p in NEW_DIFFUSION} <= {paper_id for paper_id, found in liked.items() if found}
    threshold = poller.recommender._subs[1].threshold
    assert all(read_similar_fact(m.terms[0])[0] >= round(threshold, 2) for found in liked.values() for m in found)
    (match,) = liked[NEW_DIFFUSION[0].id]
    assert match.query == like(EXAMPLES) and read_similar_fact(match.terms[0])[1] in {p.id for p in EXAMPLES}
    assert "similar to " in card_for(NEW_DIFFUSION[0], due[NEW_DIFFUSION[0].id].matched).reason


async def test_the_keyword_part_filters_and_min_score_sets_the_threshold(store, make_config, clock):
    stock(store, clock)
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)
    poller = Poller(store, clock)
    ctx.recommender = poller.recommender
    # Only papers that mention neither "super-resolution" nor "adapter": the two new diffusion papers do.
    await handlers.handle(ctx, handlers.request_from_text(
        ML, "u1", f"subscribe {like(EXAMPLES)} -resolution -adapter"))
    other = ChannelRef("console", "other")
    reply = await handlers.handle(ctx, handlers.request_from_text(
        other, "u1", f"subscribe {like(EXAMPLES)} --min-score 0.9"))
    assert f"`{like(EXAMPLES)} score>=0.9`" in reply.text
    clock.advance(hours=1)
    report = await poller.poll(FakeSource(papers=list(NEW_DIFFUSION + NEW_MATH)))
    assert report.ok
    due = due_now(store, clock())
    assert all(d.channel == ML for d in due)  # nothing scores 0.9
    assert not {d.paper_id for d in due} & {p.id for p in NEW_DIFFUSION}  # filtered out by -resolution -adapter
    assert poller.recommender.match_many(NEW_DIFFUSION) == [[], []]
    # ... though both reach the first subscription's threshold: the keywords, not the score, kept them out.
    assert poller.recommender.score(poller.recommender.vectors(NEW_DIFFUSION)) == [[(1, pytest.approx(s))]
                                                                                   for s in _scores(poller, 1)]


def _scores(poller, sub_id):
    recommender = poller.recommender
    return recommender.model.scores(recommender.vectors(NEW_DIFFUSION), recommender._subs[sub_id].vector)


async def test_the_model_is_fitted_on_a_schedule_not_per_poll(store, make_config, clock):
    stock(store, clock)
    store.add_subscription(ML, like(EXAMPLES), "u1", clock())
    poller = Poller(store, clock, recommender=Recommender(refit_hours=24))
    source = FakeSource(papers=[NEW_MATH[0]])
    await poller.poll(source)
    fitted = poller.recommender.model
    assert fitted is not None and fitted.fitted_at == clock()
    clock.advance(hours=23)
    source.papers = [NEW_MATH[1]]
    await poller.poll(source)
    assert poller.recommender.model is fitted
    clock.advance(hours=2)
    source.papers = [NEW_DIFFUSION[0]]
    await poller.poll(source)
    assert poller.recommender.model is not fitted and poller.recommender.model.fitted_at == clock()


async def test_a_poll_without_like_subscriptions_fits_nothing(store, clock):
    stock(store, clock)
    store.add_subscription(ML, "diffusion", "u1", clock())
    poller = Poller(store, clock)
    report = await poller.poll(FakeSource(papers=list(NEW_DIFFUSION)))
    assert report.queued == 2 and poller.recommender.model is None


# ---- preview and subscribe -----------------------------------------------------------------

def test_preview_lists_what_it_would_have_posted_with_scores(ctx, clock):
    stock(ctx.store, clock)
    ids = " ".join(p.id for p in EXAMPLES[1:])
    reply = run(ctx, f"preview like:{EXAMPLES[0].id} {ids} --min-score 0.05")
    assert reply.ok and reply.text.startswith(f"`{like(EXAMPLES)} score>=0.05`: papers like 3 examples (")
    lines = [line for line in reply.text.splitlines() if line.startswith("• ")]
    scores = [float(line.split()[1]) for line in lines]
    assert 0 < len(lines) <= 10 and scores == sorted(scores, reverse=True) and min(scores) >= 0.05
    diffusion = {p.title[:150] for p in DIFFUSION}
    assert any(title in lines[0] for title in diffusion)
    assert not any(f"(arXiv:{p.id})" in reply.text for p in EXAMPLES)  # examples are not recommendations
    best_few = run(ctx, f"preview {like(EXAMPLES)}")
    assert best_few.ok and "about the best few a day" in best_few.text
    count = int(best_few.text.split("would have posted ")[1].split(" of ")[0])
    assert 0 < count <= 3 * 20  # 3 a day over the 20 days stored


def test_like_errors_say_why(ctx, clock):
    stock(ctx.store, clock)
    unknown = run(ctx, "preview like:2401.99999")
    assert not unknown.ok and "the example 2401.99999 is unknown" in unknown.text
    inside = run(ctx, f"subscribe diffusion OR {like(EXAMPLES)}")
    assert not inside.ok and "top level" in inside.text
    bad = run(ctx, f"subscribe {like(EXAMPLES)} --min-score lots")
    assert not bad.ok and "--min-score takes a number from 0 to 1" in bad.text
    assert ctx.store.subscriptions(ML) == []


def test_subscribe_like_backfills_with_the_similar_fact(ctx, clock):
    stock(ctx.store, clock)
    reply = run(ctx, f"subscribe {like(EXAMPLES)} --backfill 2")
    assert reply.ok and reply.queued == 2 and "Backfill: posting 2 recent matches now." in reply.text
    for delivery in due_now(ctx.store, clock()):
        (match,) = delivery.matched
        assert match.subscription_id == 1 and read_similar_fact(match.terms[0]) is not None


HF_PAPER = json.loads(fixture("hf_daily_papers_2026-03-06_item.json"))[0]["paper"]


async def test_an_example_the_bot_has_not_stored_is_looked_up_like_show(store, make_config, clock, server):
    stock(store, clock)
    server.route("/api/papers/2602.23229", Canned(body=json.dumps(HF_PAPER).encode()))
    async with make_client(2.0) as client:
        ctx = handlers.Context(store, make_config(), clock, lookup=PaperLookup([HuggingFaceSource(client, server.url)]))
        reply = await handlers.handle(ctx, handlers.request_from_text(ML, "u1", "preview like:2602.23229"))
    assert reply.ok and "Large Multimodal Models as General In-Context Classifiers" in reply.text
    assert store.get_paper("2602.23229") is not None


def test_recommend_settings_are_checked(make_config):
    assert make_config(recommend={"per_day": 5}).recommend.per_day == 5
    with pytest.raises(ConfigError, match="fit_papers"):
        make_config(recommend={"fit_papers": 10})


def test_mute_keeps_a_like_subscription_a_like_subscription(ctx, clock):
    stock(ctx.store, clock)
    assert run(ctx, f"subscribe {like(EXAMPLES)}").ok
    reply = run(ctx, "mute 1 video")
    assert reply.ok and reply.text == f"#1 is now `{like(EXAMPLES)} -video`."
    assert split_like(parse_query(ctx.store.get_subscription(1).query)).keywords == \
        ("not", ("word", "any", "video", "video"))


def test_a_hostile_example_title_is_escaped_and_bounded_on_both_platforms():
    from bot.adapters.discord_render import card_embed
    from bot.adapters.slack_render import card_blocks

    hostile = replace(EXAMPLES[0], title="<!channel> @everyone *bold* `code` " + "x" * 500)
    channel = ChannelRef("slack", "C1")
    card = card_for(NEW_DIFFUSION[0], [Match(1, channel, like(EXAMPLES), (similar_fact(hostile, 0.5),))])
    assert len(card.reason) <= 300
    text = json.dumps([b.to_dict() for b in card_blocks(card)])
    assert "similar to" in text and "<!channel>" not in text
    embed = card_embed(card)
    assert "@everyone" not in json.dumps(embed.to_dict()).replace("@\u200beveryone", "")


def test_preview_and_thresholds_count_only_papers_the_poll_can_post(store, clock):
    """A paper with no word in common with the profile (here: all its words are in most of a
    small corpus's papers, so its vector is empty) scores -generic, above 0 for a paper less
    like the average one than the average paper: the poll never posts it (its sparse product
    leaves it out), so preview must not list it, nor count it towards a threshold."""
    from .fakes import paper

    today = clock().date()
    words = "diffusion models paper study"
    corpus = [paper(f"2611.{i:05d}", f"Paper {i} about diffusion models", f"We study {words} {extra}.",
                    listed_on=today) for i, extra in enumerate(["latent video", "latent audio", "graph"] * 8)]
    empty = paper("2611.00100", "Paper about diffusion models", "A diffusion models paper study.", listed_on=today)
    store.add_papers([*corpus, empty], clock())
    recommender = Recommender()
    recommender.fit(store, clock())
    rows = recommender.vectors([empty])
    assert rows.nnz == 0  # every one of its words is in more than half the papers: no feature
    like = split_like(parse_query(f"like:{corpus[0].id} score>=0.01"))
    preview = recommender.preview(store, like, [corpus[0]], shown=50)
    sub = Subscription(1, ML, f"like:{corpus[0].id} score>=0.01", "u1", clock())
    recommender.sync(store, {1}, [sub])
    posted = {p.id for p, found in zip(corpus[1:] + [empty], recommender.match_many(corpus[1:] + [empty]),
                                        strict=True) if found}
    assert empty.id not in {s.paper.id for s in preview.papers} and empty.id not in posted
    assert {s.paper.id for s in preview.papers} == posted and preview.count == len(posted)
