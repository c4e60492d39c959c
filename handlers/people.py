"""save / unsave / not-relevant / saved / most-saved: feedback on papers and reading lists.

Every card carries Save and Not relevant buttons; the platforms turn a press into the
`save` or `not-relevant` request below, so typed commands and buttons are one path."""

from __future__ import annotations

from datetime import datetime

from bot.digest import parse_time, parse_weekday
from bot.models import WEEKDAYS, Action, CommandRequest, MostSavedSchedule, Paper, Reply, SavedPaper
from bot.query import parse_query
from bot.sources.ids import canonical_arxiv_id
from bot.text import plural

from .base import Args, Context, Param, command, error, shown
from .lookup import stored_or_fetched

MUTES_OFFERED = 5
_PAPER = Param("paper", "an arXiv id or link", required=True, missing="Which paper? Give an arXiv id or link.")


def _paper_id(args: Args, verb: str) -> str | Reply:
    given = args.text("paper")
    paper_id = canonical_arxiv_id(given.split()[0].strip("<>")) if given else None
    if paper_id is None:
        return error(f"`{shown(given)}` is not an arXiv id or an arXiv/Hugging Face link.", verb)
    return paper_id


def _stored(ctx: Context, args: Args, verb: str) -> Paper | Reply:
    """The stored paper the argument names (feedback is on papers the bot has)."""
    paper_id = _paper_id(args, verb)
    if isinstance(paper_id, Reply):
        return paper_id
    paper = ctx.store.get_paper(paper_id)
    if paper is None:
        return error(f"Paper {paper_id} is not stored here; `/papers show {paper_id}` fetches it.", verb)
    return paper


async def _found(ctx: Context, args: Args, verb: str) -> Paper | Reply:
    """The paper, stored, or fetched and stored as `show` does (for `save <id>` of any paper)."""
    paper_id = _paper_id(args, verb)
    if isinstance(paper_id, Reply) or ctx.lookup is None or ctx.store.get_paper(paper_id) is not None:
        return _stored(ctx, args, verb)
    return await stored_or_fetched(ctx, paper_id)


def _title(paper: Paper, limit: int = 80) -> str:
    return f"“{shown(paper.title, limit)}” (arXiv:{paper.id})"


@command("save", "save <arXiv id or link>", _PAPER)
async def save(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Keep a paper on your reading list and this channel's (what a card's Save button does).

    See them with `/papers saved` (this channel's) or `/papers saved --me` (yours). A paper
    the bot has not stored is fetched first, as `show` does.
    Example: `/papers save 2406.12345`.
    """
    paper = await _found(ctx, args, "save")
    if isinstance(paper, Reply):
        return paper
    feedback = ctx.store.record_feedback(req.user_id, req.channel, paper.id, "save", ctx.clock())
    undo = (Action("Unsave", "unsave", (("paper", paper.id),)),)
    if not feedback.created:
        return Reply(f"You saved {_title(paper)} here already. `/papers saved --me` lists your reading list.",
                     actions=undo)
    return Reply(f"Saved {_title(paper)} to your reading list and this channel's "
                 "(`/papers saved --me`, `/papers saved`).", actions=undo)


@command("unsave", "unsave <arXiv id or link>", _PAPER)
def unsave(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Take a paper you saved here off your reading list.

    It leaves this channel's list too unless someone else saved it here.
    Example: `/papers unsave 2406.12345`.
    """
    paper = _stored(ctx, args, "unsave")
    if isinstance(paper, Reply):
        return paper
    if not ctx.store.remove_feedback(req.user_id, req.channel, paper.id, "save"):
        return Reply(f"You had not saved {_title(paper)} here.")
    return Reply(f"Took {_title(paper)} off your reading list.")


def mute_term(term: str) -> str | None:
    """A term as a matched card names it ("diffusion in title", "author Yann LeCun",
    "category cs.RO") as query text that excludes it; None for what cannot be muted that way."""
    text = None
    for scope in (" in title", " in abstract"):
        if term.endswith(scope):
            text = term[: -len(scope)]
    if text is None and term.startswith("author ") and '"' not in term:
        text = f'author:"{term[len("author "):]}"'
    if text is None and term.startswith("category "):
        text = f"cat:{term[len('category '):]}"
    if not text:
        return None
    try:
        parse_query(text)
    except Exception:  # QueryError, or anything odd stored long ago: just do not offer it
        return None
    return text


@command("not-relevant", "not-relevant <arXiv id or link>", _PAPER)
def not_relevant(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Mark a paper as not relevant here (a card's Not relevant button); offers to mute what matched.

    The reply, only to you, has buttons that mute the terms that made it match (or one of its
    categories) in the matching subscription, as `mute` does.
    Example: `/papers not-relevant 2406.12345`.
    """
    paper = _stored(ctx, args, "not-relevant")
    if isinstance(paper, Reply):
        return paper
    ctx.store.record_feedback(req.user_id, req.channel, paper.id, "not_relevant", ctx.clock())
    actions: list[Action] = []
    lines: list[str] = []
    posted_by: dict[int, str] = {}  # the channel's subscriptions that posted it: id -> query
    for match in ctx.store.delivered_matches(req.channel, paper.id):
        subscription = ctx.store.get_subscription(match.subscription_id)
        if subscription is None or subscription.channel != req.channel:
            continue
        posted_by[subscription.id] = subscription.query
        for muted in mutable_terms(subscription.query, match.terms, paper.categories):
            offer = (("subscription", str(subscription.id)), ("term", muted))
            if len(actions) < MUTES_OFFERED and all(a.args != offer for a in actions):
                actions.append(Action(shown(f"Mute {muted} in #{subscription.id}", 70), "mute", offer))
                lines.append(f"• `/papers mute {subscription.id} {muted}` (#{subscription.id} `{subscription.query}`)")
    head = f"Noted: {_title(paper)} is not relevant here."
    if not actions and not posted_by:
        return Reply(head + " No subscription of this channel posted it, so there is no term to mute.")
    if not actions:
        # Every term that matched (and every category) is one the query needs: muting it would
        # leave a subscription that never matches again. Say which, and what stops it instead.
        named = ", ".join(f"#{sub_id} `{query}`" for sub_id, query in list(posted_by.items())[:3])
        one = len(posted_by) == 1
        stop = f"`/papers unsubscribe {next(iter(posted_by))}`" if one else "`/papers unsubscribe <id>`"
        return Reply(head + f" {named} posted it for what {'its query needs' if one else 'their queries need'}: "
                     f"no muted term could narrow {'it' if one else 'them'} without stopping "
                     f"{'it' if one else 'them'} ({stop} does that).")
    return Reply(head + " To get fewer like it, mute a term that matched (or one of its categories):\n"
                 + "\n".join(lines), actions=tuple(actions))


def mutable_terms(query: str, terms: tuple[str, ...], categories: tuple[str, ...]) -> list[str]:
    """The matched terms worth muting in `query`, then the paper's categories. A term the query
    requires (the whole query, or one of its top-level AND parts) is left out: muting it
    would leave a subscription that can never match again."""
    try:
        node = parse_query(query)
    except Exception:
        return []
    required = set(node[1]) if node[0] == "and" else {node}
    offered: list[str] = []
    for text in [mute_term(term) for term in terms] + [mute_term(f"category {c}") for c in categories[:5]]:
        if text is None or text in offered:
            continue
        excluded = parse_query(text)  # mute_term checked that it parses
        if excluded in required or ("not", excluded) in required:
            continue
        offered.append(text)
    return offered


def _ago(moment: datetime, now: datetime) -> str:
    days = (now - moment).days
    return "today" if days < 1 else f"{plural(days, 'day')} ago"


def saved_lines(ctx: Context, saved: list[SavedPaper], people: bool) -> list[str]:
    now = ctx.clock()
    lines = []
    for item in saved:
        by = f" · {plural(item.saves, 'person', 'people')}" if people and item.saves > 1 else ""
        lines.append(f"• {shown(item.paper.title, 100)} · {item.paper.abs_url} · saved {_ago(item.saved_at, now)}{by}")
    return lines


@command("saved", "saved [--me]", Param("me", "your own reading list, from every channel", "flag", option=True))
def saved(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """This channel's reading list: the papers its people saved, newest first.

    With `--me`: yours, from every channel. Save a paper with a card's Save button or `save`.
    Example: `/papers saved` or `/papers saved --me`.
    """
    limit = ctx.config.feedback.saved_shown
    if args.flag("me"):
        found = ctx.store.saved_papers(user_id=req.user_id, platform=req.channel.platform, limit=limit + 1)
        whose, empty = "Your reading list", "Your reading list is empty: press Save on a card, or `/papers save <id>`."
    else:
        found = ctx.store.saved_papers(channel=req.channel, limit=limit + 1)
        whose, empty = "This channel's reading list", "Nobody has saved a paper in this channel yet."
    if not found:
        return Reply(empty)
    more = f" (the newest {limit})" if len(found) > limit else ""
    return Reply("\n".join([f"{whose}{more}:"] + saved_lines(ctx, found[:limit], people=not args.flag("me"))))


_MOST_SAVED_FORMS = "Say `weekly` (optionally `weekly DAY HH:MM`) or `off`."


@command("most-saved", "most-saved weekly [DAY HH:MM] / off",
         Param("when", "a weekly digest of the papers saved most here, or off", required=True,
               choices=("weekly", "off"), missing=_MOST_SAVED_FORMS),
         Param("day", "its weekday (default Monday)", choices=WEEKDAYS),
         Param("time", "HH:MM in the channel's time zone (default 09:00)"),
         manage=True)
def most_saved(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Get a weekly message with the papers this channel's people saved most that week, or stop it.

    It comes on Mondays at 09:00 in the channel's time zone (see `timezone`) unless you name
    a day and time; weeks when nothing was saved are skipped.
    Example: `/papers most-saved weekly` or `/papers most-saved weekly fri 16:00` or `/papers most-saved off`.
    """
    when, day_text, time_text = args.text("when").lower(), args.text("day"), args.text("time")
    now = ctx.clock()
    if when == "off" and not day_text and not time_text:
        before = ctx.store.set_most_saved_schedule(req.channel, None, now)
        return Reply("The weekly most-saved digest is off." if before else "This channel had no most-saved digest.")
    if when != "weekly":
        return error(_MOST_SAVED_FORMS, "most-saved")
    if not day_text and time_text and parse_time(time_text) is None:
        # One word after `weekly` is taken for the time (`weekly 16:00`); `weekly sun` names the day.
        if parse_weekday(time_text) is None:
            return error(f"`{shown(time_text, 20)}` is neither a weekday (mon, tue, ... sun) nor a 24-hour time "
                         "like 09:00.", "most-saved")
        day_text, time_text = time_text, ""
    day = parse_weekday(day_text) if day_text else "mon"
    if day is None:
        return error(f"`{shown(day_text, 20)}` is not a weekday (mon, tue, ... sun).", "most-saved")
    time = parse_time(time_text) if time_text else "09:00"
    if time is None:
        return error(f"`{shown(time_text, 20)}` is not a 24-hour time like 09:00.", "most-saved")
    ctx.store.set_most_saved_schedule(req.channel, MostSavedSchedule(req.channel, day, time), now)
    timezone = ctx.store.channel_settings(req.channel).timezone
    return Reply(f"This channel gets the week's most saved papers every {day.title()} at {time} ({timezone}).")

