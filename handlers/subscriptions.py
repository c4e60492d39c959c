"""subscribe / unsubscribe / list: a channel's keyword subscriptions."""

from __future__ import annotations

from bot.errors import QueryError
from bot.query import normalize_query
from bot.models import CommandRequest, Reply

from .base import COMMANDS, Context, command, error


@command("subscribe", "subscribe <query>", manage=True)
def subscribe(ctx: Context, req: CommandRequest, args: str) -> Reply:
    """Post new papers that match a query to this channel.

    Words match title or abstract, ignoring case and plurals, also inside hyphenated
    compounds (`diffusion` matches "Diffusion-based"). Combine them:
    `"large language model"` (phrase), `diffus*` (prefix), `a b` (both), `a OR b`,
    `-a` (exclude), `( )`, `title:x`, `abstract:x`, `author:"Yann LeCun"`, `cat:cs.CL`,
    `org:google`, `upvotes>=20`, `source:hf` or `source:arxiv`.
    Only papers that arrive after you subscribe are posted.
    Example: `/papers subscribe "diffusion model" -video upvotes>=10`.
    """
    try:
        query = normalize_query(args)
    except QueryError as exc:
        return error(f"Cannot subscribe: {exc}.", COMMANDS["subscribe"])
    limit = ctx.config.max_subscriptions_per_channel
    if ctx.store.count_subscriptions(req.channel) >= limit:
        existing = {s.query: s for s in ctx.store.subscriptions(req.channel)}
        if query not in existing:
            return error(f"This channel already has {limit} subscriptions, the limit. Remove one with `unsubscribe <id>`.")
    sub, created = ctx.store.add_subscription(req.channel, query, req.user_id, ctx.clock())
    if not created:
        return Reply(f"This channel is already subscribed to `{sub.query}` (#{sub.id}).")
    return Reply(f"Subscribed this channel to `{sub.query}` (#{sub.id}). Matching new papers will be posted here.")


@command("unsubscribe", "unsubscribe <id>", manage=True)
def unsubscribe(ctx: Context, req: CommandRequest, args: str) -> Reply:
    """Stop a subscription of this channel, by its number from `list`.

    Example: `/papers unsubscribe 3`.
    """
    cmd = COMMANDS["unsubscribe"]
    raw = args.removeprefix("#")
    if not raw:
        return error("Which subscription? Give its number from `/papers list`.", cmd)
    if not raw.isdecimal() or len(raw) > 12:
        shown = args if len(args) <= 30 else args[:30] + "…"
        return error(f"`{shown}` is not a subscription number.", cmd)
    removed = ctx.store.remove_subscription(req.channel, int(raw))
    if removed is None:
        return error(f"This channel has no subscription #{int(raw)}. See `/papers list`.", cmd)
    return Reply(f"Unsubscribed #{removed.id} `{removed.query}`. Papers already posted stay where they are.")


@command("list", "list")
def list_subscriptions(ctx: Context, req: CommandRequest, args: str) -> Reply:
    """Show this channel's subscriptions with their numbers.

    Example: `/papers list`.
    """
    subs = ctx.store.subscriptions(req.channel)
    if not subs:
        return Reply("This channel has no subscriptions. Add one with `/papers subscribe <words>`.")
    lines = [f"Subscriptions of this channel ({len(subs)}):"]
    for sub in subs:
        lines.append(
            f"#{sub.id} `{sub.query}` · since {sub.created_at:%Y-%m-%d} · {sub.delivered} posted"
        )
    return Reply("\n".join(lines))
