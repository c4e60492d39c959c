"""subscribe / preview / unsubscribe / list: a channel's subscriptions."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

from bot.cards import card_for, shorten
from bot.errors import QueryError, SourceError
from bot.like import NOTHING_SAVED, SAVED_MAX, LikeQuery, feedback_papers, similar_fact, split_like
from bot.matching import PaperView, evaluate
from bot.models import ChannelRef, CommandRequest, Match, Paper, QueryPreview, Reply, SubscribeForm
from bot.query import MAX_QUERY_CHARS, parse_query, render
from bot.sources.ids import impossible_arxiv_id
from bot.text import plural
from storage import StoreContract, reopen

from .base import Args, Context, Param, command, error, shown

if TYPE_CHECKING:
    from bot.recommend import Preview

ESTIMATE_DAYS = 30
EXAMPLES = 3
MAX_BACKFILL = 20
LIKE_SHOWN = 10  # papers a like: preview lists, with their scores

log = logging.getLogger(__name__)


async def _history(ctx: Context, node: tuple, wanted: int) -> tuple[list[tuple[Paper, list[str]]], int, int]:
    """Stored papers of the last 30 days that `node` matches (newest first, at least the
    `wanted` newest), how many it matches, and how many listed papers those days hold.

    Every stored paper counts, however many: the store narrows to the papers that hold
    the words the query requires, the evaluator decides. When the store's narrowing is
    exact (words, phrases, categories, their OR and NOT, upvotes, source) it counts the
    matches itself and the evaluator checks the newest `wanted`. Off the event loop, in a
    worker thread with its own connection, for a database file.
    """
    since = ctx.clock() - timedelta(days=ESTIMATE_DAYS)
    query = render(node)

    # A query without words, phrases or prefixes (author:, org:, cat: ...) never reads the
    # title or abstract: the evaluator is spared tokenizing them.
    text_free = not _has_text_terms(node)

    def matching(papers: list[Paper]) -> list[tuple[Paper, list[str]]]:
        found = []
        for paper in papers:
            hits = evaluate(node, PaperView(replace(paper, title="", summary="") if text_free else paper))
            if hits is not None:
                found.append((paper, hits))
        return found

    def work() -> tuple[list[tuple[Paper, list[str]]], int, int]:
        candidates = ctx.store.preview_candidates(query, since, wanted)
        found = matching(candidates.papers)
        if not candidates.exact:
            return found, len(found), candidates.stored
        if len(found) == len(candidates.papers):
            return found, candidates.count, candidates.stored
        log.warning("preview: the store's exact narrowing of %r disagrees with the evaluator; evaluating all", query)
        candidates = ctx.store.preview_candidates(query, since)
        found = matching(candidates.papers)
        return found, len(found), candidates.stored

    if ctx.store.reads_off_loop():
        return await asyncio.to_thread(work)
    return work()


def _has_text_terms(node: tuple) -> bool:
    if node[0] in ("word", "phrase", "prefix"):
        return True
    if node[0] in ("and", "or"):
        return any(_has_text_terms(child) for child in node[1])
    return node[0] == "not" and _has_text_terms(node[1])


def _estimate(matched: list[tuple[Paper, list[str]]], count: int, scanned: int) -> str:
    text = _estimate_sentence(count, scanned)
    if not matched or scanned == 0:
        return text
    examples = "\n".join(f"• {shorten(p.title, 150)} (arXiv:{p.id})" for p, _ in matched[:EXAMPLES])
    return f"{text[:-1]}, for example:\n{examples}"


def _estimate_sentence(count: int, scanned: int) -> str:
    if scanned == 0:
        return f"No papers were stored in the last {ESTIMATE_DAYS} days to estimate from yet."
    return f"In the last {ESTIMATE_DAYS} days it would have matched {count:,} of {plural(scanned, 'stored paper')}."


def subscribe_form(channel: ChannelRef, query: str = "", preview: QueryPreview | None = None) -> SubscribeForm:
    """The subscribe form's words (platforms render them: a Slack or Discord modal)."""
    return SubscribeForm(
        channel=channel, title="Subscribe to papers", label="Query",
        placeholder='e.g. "diffusion model" -video upvotes>=10',
        hint='Words match title or abstract. "a phrase", prefix*, a OR b, -exclude, ( ), title:, author:"...", '
             "cat:cs.CL, org:, upvotes>=N, source:arxiv. New matching papers are posted in this channel.",
        submit="Subscribe", max_length=MAX_QUERY_CHARS,
        waiting=f"Type a query: what it would have matched in the last {ESTIMATE_DAYS} days shows here.",
        query=query[:MAX_QUERY_CHARS], preview=preview)


# ---- like: queries (bot/recommend.py) ------------------------------------------------------

def _after_colon(sentence: str) -> str:
    """A sentence that goes on after a colon (`diffusion`: in the last 30 days ...): lower case
    first, as every reply writes it ("Digests are off: this channel gets ...")."""
    return sentence[:1].lower() + sentence[1:]


_NOTHING_SAVED = _after_colon(NOTHING_SAVED)  # after "Cannot subscribe: "


class _Liked(NamedTuple):
    examples: list[Paper]  # positives: the ids' papers, then (like:saved) the channel's saved ones
    negatives: list[Paper]  # like:saved: the channel's "Not relevant" papers


async def _like_examples(ctx: Context, like: LikeQuery, name: str, channel: ChannelRef) -> _Liked | Reply:
    """The example papers of a like: query, stored or looked up (and stored) as `show` does;
    for like:saved, also the channel's saved papers, and its "Not relevant" ones as negatives."""
    feedback = ctx.store.channel_feedback(channel, SAVED_MAX) if like.saved else None
    if feedback is not None and not feedback.saved:
        return error(f"Cannot {name}: {_NOTHING_SAVED}.", name)
    stored = {paper_id: ctx.store.get_paper(paper_id) for paper_id in like.examples}
    unknown = [paper_id for paper_id, paper in stored.items() if paper is None]
    for paper_id in unknown:
        if (impossible := impossible_arxiv_id(paper_id)) is not None:
            return error(f"Cannot {name}: {impossible}.", name)
    if unknown and ctx.lookup is not None:
        try:  # all at once: arXiv's one request for them, not one every 3 s each
            looked_up = await ctx.lookup.fetch_many(unknown)
        except SourceError as exc:
            ids = ", ".join(unknown)
            return error(f"Could not look up the example{'s' if len(unknown) > 1 else ''} {ids} right now "
                         f"({exc.reason}). Try again later.")
        if looked_up:
            ctx.store.add_papers(list(looked_up.values()), ctx.clock(), listed=False)
        stored.update(looked_up)
    found = []
    for paper_id, paper in stored.items():
        if paper is None:
            known = f"neither {' nor '.join(ctx.lookup.labels())} knows it" if ctx.lookup else "it is not stored"
            return error(f"Cannot {name}: the example {paper_id} is unknown ({known}).", name)
        found.append(paper)
    liked = _Liked(*feedback_papers(ctx.store, like, feedback, found))
    if not liked.examples:  # like:saved whose saved papers are no longer stored
        return error(f"Cannot {name}: {_NOTHING_SAVED}.", name)
    return liked


async def _like_history(ctx: Context, like: LikeQuery, examples: list[Paper], shown: int,
                        negatives: list[Paper] | None = None) -> Preview:
    """What a like: query would have posted in the last 30 days, off the event loop (for a
    database file: in a worker thread with its own Store). The first use in a process with
    no poller fits the model (seconds)."""
    from bot.recommend import Recommender  # numpy and scipy; already imported where an App made one

    if ctx.recommender is None:
        settings = ctx.config.recommend
        ctx.recommender = Recommender(per_day=settings.per_day, refit_hours=settings.refit_hours,
                                      fit_papers=settings.fit_papers)
    recommender, now = ctx.recommender, ctx.clock()

    def work(store: StoreContract) -> Preview:
        recommender.ensure_fitted(store, now)
        return recommender.preview(store, like, examples, shown, negatives or ())

    if not ctx.store.reads_off_loop():
        return work(ctx.store)

    def in_thread() -> Preview:
        store = reopen(ctx.store, durable=False)
        try:
            return work(store)
        finally:
            store.close()

    return await asyncio.to_thread(in_thread)


def _like_estimate(like: LikeQuery, examples: list[Paper], found: Preview, shown: int) -> str:
    if found.scanned == 0:
        return f"No papers were stored in the last {ESTIMATE_DAYS} days to score yet."
    named = "; ".join(shorten(p.title, 80) for p in examples[:3])
    if len(examples) > 3:
        named += f" and {len(examples) - 3} more"
    how = "its score>=" if like.min_score is not None else "about the best few a day"
    text = (f"Papers like {plural(len(examples), 'example')} ({named}). In the last {ESTIMATE_DAYS} days it would "
            f"have posted {found.count:,} of {plural(found.scanned, 'stored paper')} "
            f"(score {found.threshold:.2f} or more: {how})")
    if not found.papers:
        return text + "."
    lines = [f"• {s.score:.2f} {shorten(s.paper.title, 150)} (arXiv:{s.paper.id}), "
             f"similar to {shorten(s.example.title, 60)}" for s in found.papers[:shown]]
    return f"{text}, best first:\n" + "\n".join(lines)


_MUTE_MISSING = "Give a subscription number from `/papers list` and a term."
ME = Param("me", "mention me on its cards", "flag", option=True)
OWN_SHOWN = 50


def own_subscriptions(ctx: Context, req: CommandRequest) -> Reply:
    """The caller's subscriptions on this platform: created by them or followed with --me."""
    subs = ctx.store.own_subscriptions(req.channel.platform, req.user_id, OWN_SHOWN + 1)
    if not subs:
        return Reply("You have no subscriptions. `/papers subscribe --me <query>` in a channel, or "
                     "`/papers subscribe <query>` in a direct message with the bot.")
    mentioned = {s.id for s in subs if req.user_id in ctx.store.subscribers([s.id])}
    lines = [f"Your subscriptions ({len(subs) if len(subs) <= OWN_SHOWN else f'more than {OWN_SHOWN}'}):"]
    for sub in subs[:OWN_SHOWN]:
        where = "here" if sub.channel == req.channel else f"in {sub.channel.key}"
        note = " · mentions you" if sub.id in mentioned else ""
        lines.append(f"#{sub.id} `{sub.query}` · {where}{note} · {sub.delivered} posted")
    return Reply("\n".join(lines))



def _parse(text: str, name: str, min_score: str = "") -> tuple | Reply:
    if min_score:  # a like: query's own threshold, kept in the query as score>=
        try:
            value = float(min_score)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            return error(f"Cannot {name}: --min-score takes a number from 0 to 1, e.g. 0.3.", name)
        text = f"{text} score>={round(value, 3):g}"
    try:
        return parse_query(text)
    except QueryError as exc:
        return error(f"Cannot {name}: {exc}.", name)


_MIN_SCORE = Param("min_score", "for like: queries, post papers scoring at least this (0 to 1), "
                   "not the best few a day", "word", option=True)


@command("subscribe", "subscribe <query> [--backfill N] [--min-score X] [--me]",
         Param("query", 'e.g. diffusion, "large language model" -video, author:"Yann LeCun"; none: a form',
               "text"),
         Param("backfill", f"also post this many recent matches now (1-{MAX_BACKFILL})", "int", option=True,
               minimum=1, maximum=MAX_BACKFILL),
         _MIN_SCORE,
         ME,
         manage=True, open_with="me")
async def subscribe(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Post new papers that match a query to this channel.

    Words match title or abstract, ignoring case and plurals, also inside hyphenated
    compounds (`diffusion` matches "Diffusion-based"). Combine them:
    `"large language model"` (phrase), `diffus*` (prefix), `a b` (both), `a OR b`,
    `-a` (exclude), `( )`, `title:x`, `abstract:x`, `author:"Yann LeCun"`, `cat:cs.CL`,
    `org:google`, `upvotes>=20`, `source:huggingface` or `source:arxiv`.
    Papers like examples: `like:2406.12345 2405.00001` (arXiv ids or links, up to 20;
    the rest of the query filters), about the best 3 a day, or those scoring at least
    `--min-score 0.3`; cards say which example a paper is like, with its score.
    `like:saved`: papers like the ones this channel saved, unlike those marked Not
    relevant; it follows new feedback at each poll, no need to subscribe again.
    Only papers that arrive after you subscribe are posted; `--backfill N` also posts
    the N most recent stored matches now (at most 20). With `--me` its cards mention you
    (only the people who subscribed with --me are ever mentioned); in a direct message
    with the bot, subscriptions make your personal feed there.
    Example: `/papers subscribe "diffusion model" -video upvotes>=10`.
    Without a query, Slack and Discord open a form whose preview shows what the query
    would have matched before you subscribe.
    """
    backfill = args.number("backfill") or 0
    node = _parse(args.text("query"), "subscribe", args.text("min_score"))
    if isinstance(node, Reply):
        if not args.text("query"):  # nothing typed: where the platform has forms, the form asks for it
            return replace(node, form=subscribe_form(req.channel))
        return node
    like = split_like(node)
    liked = _Liked([], [])
    if like is not None:
        looked_up = await _like_examples(ctx, like, "subscribe", req.channel)
        if isinstance(looked_up, Reply):
            return looked_up
        liked = looked_up
    query = render(node)
    if not req.can_manage:  # only `--me` gets here without the right: joining what the channel has
        existing = next((s for s in ctx.store.subscriptions(req.channel) if s.query == query), None)
        if existing is None or backfill:
            return error("You need the right to manage this channel to add a subscription or backfill; "
                         "with `--me` you can join one it has (see `/papers list`).", "subscribe")
        mentioned = ctx.store.add_subscriber(existing.id, req.user_id, ctx.clock())
        return Reply(f"#{existing.id} `{existing.query}`: its cards {'now' if mentioned else 'already'} mention you.")
    limit = ctx.config.max_subscriptions_per_channel
    subscribed = ctx.store.add_subscription(req.channel, query, req.user_id, ctx.clock(), limit=limit)
    sub = subscribed.subscription
    if sub is None:
        return error(f"This channel already has {plural(limit, 'subscription')}, the limit. "
                     "Remove one with `unsubscribe <id>`.")
    mentioned = args.flag("me") and ctx.store.add_subscriber(sub.id, req.user_id, ctx.clock())
    if subscribed.created:
        head = f"Subscribed this channel to `{sub.query}` (#{sub.id}). Matching new papers will be posted here."
    else:
        head = f"This channel is already subscribed to `{sub.query}` (#{sub.id})."
    if args.flag("me"):
        head += " Its cards mention you." if mentioned else " Its cards already mention you."
    if like is not None:
        return await _subscribe_like(ctx, req, sub.id, sub.query, head, like, liked, backfill)
    matched, count, scanned = await _history(ctx, node, max(EXAMPLES, backfill))
    text = f"{head}\n{_estimate(matched, count, scanned)}"
    queued = 0
    if backfill:
        now = ctx.clock()
        for paper, hits in matched[:backfill]:
            queued += ctx.store.enqueue(paper.id, [Match(sub.id, req.channel, sub.query, tuple(hits))], now)
        already = min(backfill, count) - queued
        text += f"\nBackfill: posting {plural(queued, 'recent match', 'recent matches')} now"
        text += f" ({already} already posted here)." if already else "."
    return Reply(text, queued=queued)


async def _subscribe_like(ctx: Context, req: CommandRequest, sub_id: int, query: str, head: str, like: LikeQuery,
                          liked: _Liked, backfill: int) -> Reply:
    found = await _like_history(ctx, like, liked.examples, max(EXAMPLES, backfill), liked.negatives)
    text = f"{head}\n{_like_estimate(like, liked.examples, found, EXAMPLES)}"
    queued = 0
    if backfill:
        now = ctx.clock()
        for scored in found.papers[:backfill]:
            match = Match(sub_id, req.channel, query, (similar_fact(scored.example, scored.score),))
            queued += ctx.store.enqueue(scored.paper.id, [match], now)
        already = min(backfill, found.count) - queued
        text += f"\nBackfill: posting {plural(queued, 'recent match', 'recent matches')} now"
        text += f" ({already} already posted here)." if already else "."
    return Reply(text, queued=queued)


@command("preview", "preview <query> [--min-score X]",
         Param("query", "a query, as for subscribe", "text", required=True), _MIN_SCORE)
async def preview(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Show what a query would have matched recently, without subscribing.

    A `like:` query lists the papers it would have posted in the last 30 days, with scores
    (`like:saved`: from this channel's saved and Not relevant papers).
    Example: `/papers preview "world model" robot*` or `/papers preview like:2406.12345`.
    """
    typed = args.text("query")
    node = _parse(typed, "preview", args.text("min_score"))
    if isinstance(node, Reply):  # the form shows the reason without the usage line
        reason = node.text.split("\n", 1)[0].removeprefix("Cannot preview: ").rstrip(".")
        return replace(node, form=subscribe_form(req.channel, typed, QueryPreview(typed[:MAX_QUERY_CHARS],
                                                                                  error=reason)))
    like = split_like(node)
    if like is not None:
        liked = await _like_examples(ctx, like, "preview", req.channel)
        if isinstance(liked, Reply):
            return liked
        found = await _like_history(ctx, like, liked.examples, LIKE_SHOWN, liked.negatives)
        return Reply(f"`{render(node)}`: {_after_colon(_like_estimate(like, liked.examples, found, LIKE_SHOWN))}")
    matched, count, scanned = await _history(ctx, node, EXAMPLES)
    preview = QueryPreview(typed[:MAX_QUERY_CHARS], normalized=render(node),
                           estimate=_estimate_sentence(count, scanned),
                           examples=tuple(card_for(paper) for paper, _ in matched[:EXAMPLES]))
    text = f"`{render(node)}`: {_after_colon(_estimate(matched, count, scanned))}"
    return Reply(text, form=subscribe_form(req.channel, typed, preview))


@command("unsubscribe", "unsubscribe <id or all> [--me]",
         Param("subscription", "its number from list, or all", required=True, complete="subscriptions or all",
               missing="Which subscription? Give its number from `/papers list`, or `all`."),
         Param("me", "only stop mentioning me (anyone may)", "flag", option=True),
         manage=True, open_with="me")
def unsubscribe(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Stop a subscription of this channel by its number from `list`, or all of them.

    With `--me` the subscriptions stay and only stop mentioning you (no right needed).
    Example: `/papers unsubscribe 3` or `/papers unsubscribe all` or `/papers unsubscribe 3 --me`.
    """
    given = args.text("subscription")
    raw = given.removeprefix("#").strip()
    if args.flag("me"):
        return _unmention(ctx, req, raw, given)
    if raw.lower() == "all":
        removed = ctx.store.remove_all_subscriptions(req.channel)
        if not removed:
            return Reply("This channel has no subscriptions to remove.")
        names = ", ".join(f"#{s.id} `{s.query}`" for s in removed[:10])
        more = f" and {len(removed) - 10} more" if len(removed) > 10 else ""
        return Reply(f"Unsubscribed all {len(removed)}: {names}{more}.")
    if not raw.isdecimal() or len(raw) > 12:
        return error(f"`{shown(given, 30)}` is not a subscription number.", "unsubscribe")
    gone = ctx.store.remove_subscription(req.channel, int(raw))
    if gone is None:
        return error(f"This channel has no subscription #{int(raw)}. See `/papers list`.", "unsubscribe")
    return Reply(f"Unsubscribed #{gone.id} `{gone.query}`. Papers already posted stay where they are.")


def _unmention(ctx: Context, req: CommandRequest, raw: str, given: str) -> Reply:
    subs = ctx.store.subscriptions(req.channel)
    if raw.lower() != "all":
        if not raw.isdecimal() or len(raw) > 12:
            return error(f"`{shown(given, 30)}` is not a subscription number.", "unsubscribe")
        subs = [s for s in subs if s.id == int(raw)]
        if not subs:
            return error(f"This channel has no subscription #{int(raw)}. See `/papers list`.", "unsubscribe")
    gone = [s for s in subs if ctx.store.remove_subscriber(s.id, req.user_id)]
    if not gone:
        return Reply("No subscription of this channel mentioned you there." if raw.lower() == "all"
                     else f"#{subs[0].id} `{subs[0].query}` did not mention you.")
    return Reply("Stopped mentioning you on " + ", ".join(f"#{s.id} `{s.query}`" for s in gone[:10])
                 + (f" and {len(gone) - 10} more" if len(gone) > 10 else "") + ". The subscriptions stay.")


@command("mute", "mute <id> <term>",
         Param("subscription", "its number from list", required=True, complete="subscriptions", missing=_MUTE_MISSING),
         Param("term", 'a word, "phrase", cat:cs.RO or author:"..." to exclude', "text", required=True,
               missing=_MUTE_MISSING),
         manage=True)
def mute(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Stop a subscription from matching papers with a term: it gets `-term` added.

    The term is anything a query can hold: a word, a "phrase", `cat:cs.RO`, `author:"..."`.
    Example: `/papers mute 3 video` or `/papers mute 3 cat:cs.RO`.
    """
    number, term = args.text("subscription").removeprefix("#"), args.text("term")
    if not number.isdecimal() or len(number) > 12:
        return error(_MUTE_MISSING, "mute")
    for _ in range(5):  # another mute of the same subscription may land in between: build on it
        subscription = ctx.store.get_subscription(int(number))
        if subscription is None or subscription.channel != req.channel:
            return error(f"This channel has no subscription #{int(number)}. See `/papers list`.", "mute")
        try:
            excluded = parse_query(term)
            node = parse_query(f"({subscription.query}) -({render(excluded)})")
        except QueryError as exc:
            return error(f"Cannot mute `{shown(term)}`: {exc}.", "mute")
        query = render(node)
        if query == subscription.query:
            return Reply(f"#{subscription.id} `{query}` already excludes that.")
        if len(query) > 500:
            return error("That would make the query longer than 500 characters.", "mute")
        if any(s.query == query for s in ctx.store.subscriptions(req.channel)):
            return error(f"This channel already has a subscription to `{query}`.", "mute")
        changed = ctx.store.change_subscription_query(req.channel, subscription.id, query,
                                                      expected=subscription.query)
        if changed is None:
            return error(f"This channel has no subscription #{int(number)}. See `/papers list`.", "mute")
        if changed.query == query:
            return Reply(f"#{changed.id} is now `{changed.query}`.")
    return error("That subscription keeps changing; try again.", "mute")


@command("list", "list [--me]", Param("me", "your own subscriptions, in every channel", "flag", option=True))
def list_subscriptions(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Show this channel's subscriptions, their numbers and how papers are delivered.

    With `--me`: your own subscriptions in every channel (those you created, or whose cards
    mention you since `subscribe --me`), your direct-message feed included.
    Example: `/papers list` or `/papers list --me`.
    """
    if args.flag("me"):
        return own_subscriptions(ctx, req)
    settings = ctx.store.channel_settings(req.channel)
    subs = ctx.store.subscriptions(req.channel)
    if not subs:
        return Reply("This channel has no subscriptions. Add one with `/papers subscribe <query>`.")
    lines = [f"Subscriptions of this channel ({len(subs)}), delivered as {settings.describe()}:"]
    for sub in subs:
        lines.append(f"#{sub.id} `{sub.query}` · since {sub.created_at:%Y-%m-%d} · {sub.delivered} posted")
    return Reply("\n".join(lines))
