"""search / show / trending: on-demand lookups, open to everyone."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bot.cards import card_for
from bot.errors import SourceError
from bot.matching import PaperView
from bot.models import CommandRequest, Paper, Reply
from bot.query import STEMS, raw_words
from bot.sources.ids import canonical_arxiv_id, impossible_arxiv_id

from .base import Args, Context, Param, command, error, shown

RESULTS = 5
WINDOWS = {"today": 1, "week": 7, "month": 30}


@command("search", "search <words>",
         Param("words", "words to look for", "text", required=True,
               missing="What should I search for? Give some words."))
async def search(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Find the best 5 stored papers for some words (full-text, ranked); `-word` (or `NOT word`)
    leaves out papers with that word in their title or abstract.

    Example: `/papers search speculative decoding` or `/papers search diffusion -video`.
    """
    text = args.text("words")
    words, excluded = search_terms(text)
    words = words[:20]
    if not words:
        message = ("Give a word to look for, not only words to leave out." if excluded
                   else "What should I search for? Give some words.")
        return error(message, "search")
    # With words left out, more are ranked and those holding one dropped here.
    wanted = RESULTS * 4 if excluded else RESULTS
    if ctx.store.reads_off_loop():  # ranking can take tens of ms at a million papers: not on the loop
        papers = await asyncio.to_thread(ctx.store.search_papers, words, wanted)
    else:
        papers = ctx.store.search_papers(words, wanted)
    if excluded:
        left_out = {STEMS[word] for word in excluded}
        papers = [p for p in papers if left_out.isdisjoint(PaperView(p).any_set)][:RESULTS]  # title, abstract
    if not papers:
        return Reply(f"No stored paper matches `{shown(text)}`.")
    cards = tuple(card_for(p) for p in papers)
    best = "The one stored paper that matches" if len(cards) == 1 else f"Best {len(cards)} stored papers for"
    return Reply(f"{best} `{shown(text)}`:", cards=cards)


def search_terms(text: str) -> tuple[list[str], list[str]]:
    """The words of a search (`word*` a prefix: "word*"), and those to leave out (`-word`,
    `NOT word`). `AND`, `OR` and `NOT` in capitals are read as a person means them, never
    as words to look for (the databases' full-text engines read them apart: SQLite looked
    for "and", PostgreSQL dropped it)."""
    words: list[str] = []
    excluded: list[str] = []
    negate = False
    for token in text.split():
        if token in ("AND", "OR"):
            continue
        if token == "NOT":
            negate = True
            continue
        if token.startswith("-") and len(token) > 1:
            negate, token = True, token[1:]
        found = raw_words(token)
        if token.endswith("*") and found and not negate:  # `diffus*`: a prefix, on either database
            found[-1] += "*"
        (excluded if negate else words).extend(found)
        negate = False
    if not words and not excluded:  # nothing but AND, OR, NOT: words after all
        words = raw_words(text)
    return words, excluded


@command("show", "show <arXiv id or link>",
         Param("paper", "an arXiv id, or an arXiv or Hugging Face link", required=True,
               missing="Which paper? Give an arXiv id or link."))
async def show(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Show one paper's card, by arXiv id or arXiv, Hugging Face or PDF link.

    Papers the bot has not stored are fetched from Hugging Face or the arXiv API.
    Example: `/papers show 2406.12345` or `/papers show https://arxiv.org/abs/2406.12345v2`.
    """
    given = args.text("paper")
    paper_id = canonical_arxiv_id(given.split()[0].strip("<>"))
    if paper_id is None:
        return error(f"`{shown(given)}` is not an arXiv id or an arXiv/Hugging Face link.", "show")
    paper = await stored_or_fetched(ctx, paper_id)
    if isinstance(paper, Reply):
        return paper
    return Reply(f"arXiv:{paper.id}", cards=(card_for(paper),))


async def stored_or_fetched(ctx: Context, paper_id: str) -> Paper | Reply:
    """The paper with this (canonical) id: stored, or fetched from the sources and stored
    (not as listed: a later listing of it still counts as new); an error Reply if neither."""
    paper = ctx.store.get_paper(paper_id)
    if paper is not None:
        return paper
    if (impossible := impossible_arxiv_id(paper_id)) is not None:  # a typo: not worth two requests
        return error(f"{impossible}.")
    if ctx.lookup is None:
        return error(f"Paper {paper_id} is not stored, and lookups are not available here.")
    try:
        paper = await ctx.lookup.fetch(paper_id)
    except SourceError as exc:
        return error(f"Could not look up {paper_id} right now ({exc.reason}). Try again later.")
    if paper is None:
        return error(f"Neither {' nor '.join(ctx.lookup.labels())} knows a paper {paper_id}.")
    ctx.store.add_papers([paper], ctx.clock(), listed=False)
    return paper


@command("trending", "trending [today/week/month]", Param("period", "how far back", choices=tuple(WINDOWS)))
def trending(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """The most upvoted papers on Hugging Face for a day, week (default) or month.

    Example: `/papers trending month`.
    """
    window = args.text("period").lower() or "week"
    if window not in WINDOWS:
        return error(f"`{shown(window, 20)}` is not a period: use today, week or month.", "trending")
    since = ctx.clock().date() - timedelta(days=WINDOWS[window])
    papers = ctx.store.trending_papers(since, RESULTS)
    if not papers:
        return Reply(f"No Hugging Face papers with upvotes were listed since {since:%Y-%m-%d}.")
    period = {"today": "today", "week": "this week", "month": "this month"}[window]
    return Reply(f"Most upvoted {period}:", cards=tuple(card_for(p) for p in papers))
