from datetime import datetime, timezone

import pytest

from bot.errors import QueryError
from bot.matching import KeywordMatcher, normalize_query, words
from bot.models import ChannelRef, Subscription

from .fakes import paper

ML = ChannelRef("console", "ml")
CV = ChannelRef("console", "cv")


def sub(sub_id, query, channel=ML):
    return Subscription(sub_id, channel, normalize_query(query), "u1", datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_words_split_on_hyphens_and_punctuation_and_fold_case():
    assert words("Diffusion-based LLM_agents, (fast)!") == ["diffusion", "based", "llm", "agents", "fast"]
    assert words("ＦＵＬＬＷＩＤＴＨ Straße") == ["fullwidth", "strasse"]


@pytest.mark.parametrize(
    "title, summary, query, expected",
    [
        ("Latent Diffusion Models", "", "diffusion", True),
        ("Diffusion-based planning", "", "diffusion", True),
        ("", "we use a DIFFUSION prior", "diffusion", True),
        ("Diffusions everywhere", "", "diffusion", False),  # whole words only, in this version
        ("Confusion matrices", "", "diffusion", False),
        ("Language agents", "for the web", "language agents", True),
        ("Language models", "with web agents", "agents language", True),  # any order, title or abstract
        ("Language models", "", "language agents", False),  # every word is needed
    ],
)
def test_all_words_must_appear_as_words(title, summary, query, expected):
    matcher = KeywordMatcher([sub(1, query)])
    assert bool(matcher.match(paper("2410.00001", title, summary))) is expected


def test_match_names_the_subscription_channel_and_terms():
    matcher = KeywordMatcher([sub(1, "Diffusion"), sub(2, "video diffusion", CV), sub(3, "robots")])
    matches = matcher.match(paper("2410.00001", "Video Diffusion-based editing"))
    assert [(m.subscription_id, m.channel, m.terms) for m in matches] == [
        (1, ML, ("diffusion",)),
        (2, CV, ("video", "diffusion")),
    ]


def test_subscriptions_can_be_added_and_removed_at_run_time():
    matcher = KeywordMatcher()
    p = paper("2410.00001", "Diffusion")
    assert matcher.match(p) == []
    matcher.add(sub(7, "diffusion"))
    assert [m.subscription_id for m in matcher.match(p)] == [7]
    matcher.remove(7)
    matcher.remove(99)  # unknown ids are ignored
    assert matcher.match(p) == []


@pytest.mark.parametrize(
    "text, normalized",
    [("Diffusion", "diffusion"), ("  Large   LANGUAGE models ", "large language models"), ("llm llm", "llm")],
)
def test_queries_are_normalized(text, normalized):
    assert normalize_query(text) == normalized


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the query is empty"),
        ("   ", "the query is empty"),
        ("!!! ---", "no words"),
        ("x" * 201, "the limit is 200"),
        (" ".join(f"w{i}" for i in range(21)), "21 words; the limit is 20"),
    ],
)
def test_bad_queries_are_refused_with_a_reason(text, message):
    with pytest.raises(QueryError, match=message):
        normalize_query(text)
