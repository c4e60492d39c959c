from bot.cards import AUTHORS_MAX, BODY_MAX, REASON_MAX, TITLE_MAX, card_for, short_authors, shorten, why_matched
from bot.models import ChannelRef, Match, SubscriptionRef

from .fakes import paper

ML = ChannelRef("console", "ml")


def test_shorten_cuts_at_a_word_and_marks_the_cut():
    assert shorten("short text", 50) == "short text"
    cut = shorten("alpha beta gamma delta epsilon", 17)
    assert cut == "alpha beta gamma…" and len(cut) <= 17
    assert len(shorten("x" * 1000, 100)) == 100


def test_authors_are_shortened():
    assert short_authors(()) == "unknown authors"
    assert short_authors(("A", "B")) == "A, B"
    assert short_authors(("A", "B", "C", "D")) == "A, B, C and 1 other"
    assert short_authors(tuple("ABCDEFG")) == "A, B, C and 4 others"
    assert len(short_authors(("N" * 500,))) <= AUTHORS_MAX


def test_card_has_links_reason_and_bounded_texts():
    p = paper(
        "2410.18538",
        "T" * 1000,
        "word " * 1000,
        authors=("Amirhossein Alimohammadi",),
        upvotes=11,
        github="https://github.com/x/y",
        project_page="https://example.org/p",
    )
    card = card_for(p, (Match(1, ML, '"diffusion model"', ()),), [SubscriptionRef(1, '"diffusion model"')])
    assert len(card.title) <= TITLE_MAX and len(card.body) <= BODY_MAX
    assert card.url == "https://arxiv.org/abs/2410.18538"
    assert [(link.label, link.url) for link in card.links] == [
        ("arXiv", "https://arxiv.org/abs/2410.18538"),
        ("PDF", "https://arxiv.org/pdf/2410.18538"),
        ("Hugging Face", "https://huggingface.co/papers/2410.18538"),
        ("Code", "https://github.com/x/y"),
        ("Project page", "https://example.org/p"),
    ]
    assert card.reason == '#1 `"diffusion model"`' and card.upvotes == 11
    assert card.subscriptions == (SubscriptionRef(1, '"diffusion model"'),)


def test_ai_summary_is_preferred_and_arxiv_only_papers_have_no_hf_link():
    with_ai = card_for(paper("2410.00001", summary="Long abstract.", ai_summary="One line.", upvotes=3))
    assert with_ai.body == "One line."
    arxiv_only = card_for(paper("2410.00002", summary=""))
    assert arxiv_only.body == "(no abstract)"
    assert [link.label for link in arxiv_only.links] == ["arXiv", "PDF"]
    assert arxiv_only.reason is None


def test_why_matched_names_each_subscription_and_its_terms_within_a_bound():
    assert why_matched(()) is None
    matched = (Match(1, ML, "diffusion", ("diffusion in title",)),
               Match(2, ML, "video -audio", ("video in abstract", "cat:cs.CV")))
    assert why_matched(matched) == "#1 `diffusion`: diffusion in title; #2 `video -audio`: video in abstract, cat:cs.CV"
    many = tuple(Match(i, ML, f"query {i}", (f"term {i} in title",)) for i in range(100))
    reason = why_matched(many)
    assert reason is not None and len(reason) <= REASON_MAX and reason.endswith("…")
    assert reason.startswith("#0 `query 0`: term 0 in title; #1 `query 1`")
