"""digest / timezone / pause / resume / status: how and whether a channel gets papers."""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.digest import (
    DIGEST_MAX,
    canonical_zone,
    digest_due,
    machine_zone,
    next_digest,
    parse_time,
    parse_weekday,
    suggest_zones,
    zone,
)
from bot.models import ChannelSettings, CommandRequest, Reply, SettingsChange, SourceStatus
from bot.text import plural

from .base import Args, Context, Param, command, error, shown


def _update(ctx: Context, req: CommandRequest, **changes) -> SettingsChange:
    """Change only these settings, in one transaction: concurrent commands changing
    others (a time zone and a digest time, say) both stay."""
    return ctx.store.update_channel_settings(req.channel, ctx.clock(), **changes)


_DIGEST_FORMS = "Say `off`, `daily HH:MM` or `weekly DAY HH:MM`."


@command("digest", "digest off / daily HH:MM / weekly DAY HH:MM",
         Param("mode", "instant cards (off), or a daily or weekly digest", required=True,
               choices=("off", "daily", "weekly"), missing=_DIGEST_FORMS),
         Param("day", "for weekly digests", choices=("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
         Param("time", "HH:MM, in the channel's time zone"),
         manage=True)
def digest(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Choose instant cards (off) or one digest message a day or a week, at a local time.

    Times are in the channel's time zone (see `timezone`). Everything matched since the
    previous digest goes into the next one, best first: most upvoted, then the best match,
    then the newest (20 at most, the rest counted).
    Example: `/papers digest daily 09:00` or `/papers digest weekly mon 09:00`.
    """
    mode, day_text, time_text = args.text("mode").lower(), args.text("day"), args.text("time")
    if mode == "off" and not day_text and not time_text:
        saved = _update(ctx, req, mode="instant").after
        return Reply(f"Digests are off: this channel gets {saved.describe()}.")
    if mode == "daily" and time_text and not day_text:
        day = None
    elif mode == "weekly" and time_text and day_text:
        day = parse_weekday(day_text.lower())
        if day is None:
            return error(f"`{shown(day_text, 20)}` is not a weekday (mon, tue, ... sun).", "digest")
    else:
        return error(_DIGEST_FORMS, "digest")
    time = parse_time(time_text.lower())
    if time is None:
        return error(f"`{shown(time_text, 20)}` is not a 24-hour time like 09:00.", "digest")
    # The schedule starts now: no digest for times already past.
    days = {"digest_day": day} if day else {}  # daily keeps the weekday a later `weekly` starts from
    saved = _update(ctx, req, mode=mode, digest_time=time, last_digest_at=ctx.clock(), **days).after
    first = next_digest(saved, ctx.clock())
    local = first.astimezone(zone(saved.timezone))
    return Reply(f"This channel now gets {saved.describe()}. First one: {local:%a %Y-%m-%d %H:%M} {saved.timezone}.")


@command("timezone", "timezone <Area/City>",
         Param("zone", "an IANA time zone, e.g. Europe/Berlin", required=True, complete="time zones"),
         manage=True)
def timezone_command(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Set the channel's time zone for digests (an IANA name).

    Example: `/papers timezone Europe/Berlin`.
    """
    name = args.text("zone")
    if not name:
        settings = ctx.store.channel_settings(req.channel)
        return error(f"Which time zone? This channel uses {settings.timezone}.", "timezone")
    spelt = canonical_zone(name)
    if spelt is None:
        close = suggest_zones(name)
        hint = f" Did you mean {', '.join(close)}?" if close else " Use a name like Europe/Berlin or America/New_York."
        why = ": what it means depends on the machine" if machine_zone(name) else ""
        return error(f"`{shown(name, 40)}` is not a time zone{why}.{hint}", "timezone")
    name = spelt
    saved = _update(ctx, req, timezone=name).after
    return Reply(f"Time zone set to {name}: this channel gets {saved.describe()}.")


@command("pause", "pause", manage=True)
def pause(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Stop posting to this channel for now; matches are kept and posted on `resume`.

    Example: `/papers pause`.
    """
    before = _update(ctx, req, paused=True).before
    if before.paused:
        return Reply("This channel is already paused. `/papers resume` restarts it.")
    return Reply("Paused. New matches are kept and will be posted after `/papers resume`.")


@command("resume", "resume", manage=True)
def resume(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Restart posting to this channel after `pause`, with what matched meanwhile.

    Example: `/papers resume`.
    """
    settings = _update(ctx, req, paused=False, paused_reason=None).before
    if not settings.paused:
        return Reply("This channel is not paused.")
    waiting = ctx.store.count_pending(req.channel)
    instant = settings.mode == "instant"
    # A burst's limit (bot.dispatch): the best as cards (most upvoted first), then one digest that counts the rest.
    cards = ctx.config.delivery.cards_per_cycle if instant else 0
    room = cards + DIGEST_MAX
    how = "now" if instant else "in the next digest"
    if waiting == 0:
        text = "Resumed. Nothing matched while paused."
    elif waiting <= room:
        text = f"Resumed. {plural(waiting, 'paper')} matched while paused will be posted {how}."
    else:
        parts = f"{cards} as cards and {DIGEST_MAX} in a digest" if instant else f"{DIGEST_MAX} of them"
        text = (f"Resumed. {plural(waiting, 'paper')} matched while paused: the best {parts} "
                f"(most upvoted first) will be posted {how}; "
                f"the digest counts the other {waiting - room:,}. Narrow busy subscriptions with `/papers mute`.")
    return Reply(text, queued=waiting if instant else 0)


def _span(seconds: int) -> str:
    """A length of time in its largest whole unit: 3d, 5h, 12m or 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    return "just now" if seconds < 60 else f"{_span(seconds)} ago"


def source_lines(ctx: Context) -> list[str]:
    """Per source: last success, failures and last error, next poll."""
    now = ctx.clock()
    lines = ["Sources:"]
    for name, cfg in ctx.config.sources.items():
        if not cfg.enabled:
            lines.append(f"• {name}: disabled")
            continue
        state = ctx.store.source_state(name) or SourceStatus(name)
        line = f"• {name}: last success {_ago(state.last_success, now)}"
        if state.consecutive_failures:
            line += f"; failing ({state.consecutive_failures} in a row): {state.last_error}"
        # `run` stores its real next attempt (a retry after a failure comes sooner than the
        # interval); without it, the interval from the last attempt.
        upcoming = state.next_poll
        if upcoming is None and state.last_attempt:
            upcoming = state.last_attempt + timedelta(minutes=cfg.interval_minutes)
        if upcoming is not None:
            what = "next retry" if state.next_poll and state.consecutive_failures else "next poll"
            line += f"; {what} {_when(upcoming, now)}"
        lines.append(line)
    return lines


def _when(upcoming: datetime, now: datetime) -> str:
    """"in 45s", "in 12m", "due now", or overdue (then `run` is probably not running)."""
    seconds = int((upcoming - now).total_seconds())
    if seconds > 0:
        return f"in {_span(seconds)}"
    if seconds > -120:  # `run` checks every few seconds
        return "due now"
    return f"overdue since {_ago(upcoming, now)} (is `papers-bot run` running?)"


def bot_status(ctx: Context) -> str:
    """The operator's view (`papers-bot status`): sources, queue, channels."""
    now = ctx.clock()
    lines = source_lines(ctx)
    counts = ctx.store.delivery_counts()
    overflow = f", {counts.overflow} not posted (past a burst's cards and digest)" if counts.overflow else ""
    lines.append(f"Queue: {counts.pending} pending, {counts.sent} sent, "
                 f"{counts.failed} failed{overflow}; last post {_ago(ctx.store.last_sent_at(), now)}.")
    if ctx.config.slack.distribution:  # installed through OAuth: which workspaces (never their tokens)
        installed = ctx.store.slack_installations()
        names = ", ".join(f"{i.team_id} ({i.team_name})" if i.team_name else i.team_id for i in installed)
        lines.append(f"Slack workspaces installed ({len(installed)}){': ' + names if names else ''}.")
    settings = {s.channel: s for s in ctx.store.all_channel_settings()}
    subs: dict = {}
    for sub in ctx.store.subscriptions():
        subs[sub.channel] = subs.get(sub.channel, 0) + 1
    lines.append(f"Channels ({len(set(settings) | set(subs))}):")
    for channel in sorted(set(settings) | set(subs), key=lambda c: c.key):
        described = settings.get(channel, ChannelSettings(channel)).describe()
        lines.append(f"• {channel.key}: {plural(subs.get(channel, 0), 'subscription')}, {described}, "
                     f"{ctx.store.count_pending(channel)} pending")
    return "\n".join(lines)


@command("status", "status")
def status(ctx: Context, req: CommandRequest, args: Args) -> Reply:
    """Health of the sources, the delivery queue, and this channel's settings.

    Example: `/papers status`.
    """
    now = ctx.clock()
    lines = source_lines(ctx)
    settings = ctx.store.channel_settings(req.channel)
    lines.append(f"Queue: {plural(ctx.store.count_pending(), 'delivery', 'deliveries')} pending, "
                 f"{ctx.store.count_pending(req.channel)} for this channel; "
                 f"last post here {_ago(ctx.store.last_sent_at(req.channel), now)}.")
    subs = ctx.store.count_subscriptions(req.channel)
    lines.append(f"This channel: {plural(subs, 'subscription')}, {settings.describe()}.")
    due = digest_due(settings, now)
    if settings.mode != "instant" and not settings.paused:
        upcoming = due or next_digest(settings, settings.last_digest_at or now)
        local = upcoming.astimezone(zone(settings.timezone))
        lines.append(f"Next digest: {local:%a %Y-%m-%d %H:%M} {settings.timezone}.")
    most_saved = ctx.store.most_saved_schedule(req.channel)
    weekly = (f"every {most_saved.day.title()} at {most_saved.time} ({settings.timezone})" if most_saved
              else "off")
    lines.append(f"Follow-ups in card threads: {'on' if ctx.store.followups_enabled(req.channel) else 'off'}; "
                 f"weekly most-saved digest: {weekly}.")
    return Reply("\n".join(lines))
