"""The weekly "most saved" digest: per channel that asked for it (`/papers most-saved weekly`),
one message with the papers its people saved most in the week before the slot."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Mapping

from storage import StoreContract

from .adapters import Adapter
from .cards import card_for
from .digest import next_digest
from .models import ChannelRef, ChannelSettings, Digest, MostSavedSchedule, PostResult
from .text import plural

log = logging.getLogger(__name__)

WEEK = timedelta(days=7)
RETRY_WAIT = timedelta(minutes=1)  # a failed post that may go through later is tried again after this


def slot_due(schedule: MostSavedSchedule, timezone: str, now: datetime) -> datetime | None:
    """The latest weekly slot at or before `now` not yet posted, or None (never one from
    before the digest was turned on: the schedule counts from `last_sent_at`)."""
    if schedule.last_sent_at is None:
        return None
    as_weekly = ChannelSettings(schedule.channel, mode="weekly", digest_time=schedule.time,
                                digest_day=schedule.day, timezone=timezone)
    slot = next_digest(as_weekly, schedule.last_sent_at)
    if slot > now:
        return None
    while (later := next_digest(as_weekly, slot)) <= now:  # down for weeks: one message, for the last slot
        slot = later
    return slot


async def dispatch_most_saved(store: StoreContract, adapters: Mapping[str, Adapter], now: datetime,
                              papers: int, waits: dict[ChannelRef, datetime] | None = None) -> int:
    """Post every "most saved" digest that is due; how many went out.

    Each slot is claimed in storage before its message is sent, so no two processes (nor
    two sweeps) post it twice. A post that may go through later (a rate limit, Slack or
    Discord unreachable, a workspace not known yet) gives its claim back and is tried again
    after the platform's Retry-After, or a minute (`waits`, kept by the caller between
    sweeps: channel -> not before); any other failure is logged and that week's message
    skipped. A kill between claim and post skips it too: never posted twice."""
    sent = 0
    waits = {} if waits is None else waits
    for schedule in store.most_saved_schedules():
        adapter = adapters.get(schedule.channel.platform)
        settings = store.channel_settings(schedule.channel)
        if adapter is None or settings.paused or now < waits.get(schedule.channel, now):
            continue
        slot = slot_due(schedule, settings.timezone, now)
        previous = schedule.last_sent_at
        if slot is None or previous is None or not store.claim_most_saved(schedule.channel, slot):
            continue
        saved = store.saved_papers(channel=schedule.channel, since=slot - WEEK, limit=papers, most_saved=True)
        if not saved:
            continue  # a quiet week: no message
        cards = tuple(card_for(item.paper) for item in saved)
        counts = ", ".join(str(item.saves) for item in saved)
        digest = Digest(schedule.channel, f"Most saved this week: {plural(len(cards), 'paper')}", cards,
                        note=f"Ordered by how many people saved each ({counts}), then the newest save.")
        try:
            result = await adapter.post_digest(digest)
        except Exception as exc:  # an adapter bug must not stop the other channels
            log.exception("most-saved digest for %s raised", schedule.channel)
            result = PostResult(ok=False, error=type(exc).__name__)
        if result.ok:
            sent += 1
            waits.pop(schedule.channel, None)
            log.info("posted the most-saved digest (%d papers) to %s", len(cards), schedule.channel)
        elif (result.retryable or result.retry_after is not None) and not result.channel_gone:
            wait = max(RETRY_WAIT, timedelta(seconds=result.retry_after or 0))
            waits[schedule.channel] = now + wait
            store.unclaim_most_saved(schedule.channel, slot, previous)
            log.warning("the most-saved digest for %s was not posted (%s); trying again in %d s",
                        schedule.channel, result.error, wait.total_seconds())
        else:
            log.warning("the most-saved digest for %s was not posted (%s); the next comes next week",
                        schedule.channel, result.error)
    return sent
