"""followups: whether a channel's cards get replies in their thread when a paper has news."""

from __future__ import annotations

from bot.models import CommandRequest, Reply

from .base import Args, Context, Param, command, error, shown

NEWS = "code released on Hugging Face, a new arXiv version, 50, 100 or 200 upvotes crossed"


@command("followups", "followups [on/off]",
         Param("state", "on: replies in a card's thread when its paper has news; off: none",
               choices=("on", "off")),
         manage=True)
def followups(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Turn on or off replies in cards' threads when their papers have news (on by default).

    The news: code released (a GitHub link appears on Hugging Face), a new arXiv version,
    50, 100 or 200 upvotes crossed (one reply for the highest crossed at once). One reply
    per event and card, for cards of the last 60 days. Without `on` or `off`, says which.

    Example: `/papers followups off`.
    """
    state = args.text("state").lower()
    if not state:
        on = ctx.store.followups_enabled(req.channel)
        return Reply(f"Follow-ups are {'on' if on else 'off'} in this channel: "
                     f"{'replies in' if on else 'no replies in'} a card's thread for its news ({NEWS}). "
                     f"`/papers followups {'off' if on else 'on'}` changes it.")
    if state not in ("on", "off"):
        return error(f"Say `on` or `off`, not `{shown(state, 20)}`.", "followups")
    on = state == "on"
    before = ctx.store.set_followups(req.channel, on, ctx.clock())
    if on:
        again = "already on" if before else "on"
        return Reply(f"Follow-ups are {again}: a card's thread gets a reply when its paper has news ({NEWS}).")
    again = "already off" if not before else "off"
    return Reply(f"Follow-ups are {again}: no replies in cards' threads. Any not sent yet are dropped.")
