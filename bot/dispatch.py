"""Dispatch: send due outbox rows through the adapter of their platform, record the result."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from storage import StoreContract

from .adapters import Adapter
from .cards import RANK_ORDER, card_for
from .clock import utcnow
from .digest import DIGEST_MAX, digest_due
from .errors import StorageError
from .followups import reply_for
from .models import BurstPlan, ChannelRef, ChannelSettings, Delivery, Digest, DueChannel, FollowUp, PostResult
from .text import plural

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 8
FOLLOWUPS_PER_SWEEP = 200  # replies in cards' threads a sweep takes on, of all channels
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
# Several deliverers (`papers-bot run --role deliverer`) serve a channel one at a time, so the
# platform's per-channel pace holds: a deliverer holds the channel's lease (Store.lease_channel)
# while it sends there, renewed when half has run out; one that dies loses its channels when
# their leases run out, or sooner: found dead by another (Store.lease_channel), the channel is
# free after the hand-over gap. Done with a channel, a deliverer lets the others have it after
# the platform's gap between two messages of a channel (Slack: about one a second; Discord: 5 in
# 5 seconds).
CHANNEL_LEASE = timedelta(seconds=30)
HANDOVER = {"discord": timedelta(seconds=5)}
HANDOVER_DEFAULT = timedelta(seconds=1)


@dataclass
class DispatchReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    waiting: int = 0  # due, but no adapter for their platform is running
    overflow: int = 0  # past a burst's cards and digest: counted in the digest, not posted

    def add(self, other: DispatchReport) -> None:
        self.sent += other.sent
        self.retrying += other.retrying
        self.failed += other.failed
        self.waiting += other.waiting
        self.overflow += other.overflow

    def line(self) -> str:
        text = f"delivered: {self.sent} sent, {self.retrying} to retry, {self.failed} failed"
        text += f", {self.waiting} waiting for an adapter" if self.waiting else ""
        return text + (f", {self.overflow} over a burst's cap (counted in its digest)" if self.overflow else "")


def retry_delay(attempts: int) -> timedelta:
    return min(BACKOFF_BASE * (2 ** max(attempts - 1, 0)), BACKOFF_MAX)


class Dispatcher:
    def __init__(self, store: StoreContract, adapters: dict[str, Adapter], clock: Callable[[], datetime] = utcnow,
                 *, cards_per_cycle: int = 10, max_concurrent_channels: int = 50):
        self.store = store
        self.adapters = adapters
        self.clock = clock
        self.cards_per_cycle = cards_per_cycle
        self.max_concurrent_channels = max(max_concurrent_channels, 1)
        self._warned: set[str] = set()
        # A channel told to wait (429 Retry-After) is left alone until then, the rest of its
        # burst included, so the next sweeps do not knock again before the time it gave; a
        # platform (keyed by its name) when the wait is for all its channels (a refused token).
        self._paused_until: dict[ChannelRef | str, datetime] = {}
        # What this dispatcher has claimed and not yet recorded: its own sends in flight, which
        # `recover` leaves alone (they carry this store's sender id, as a crash's leftovers would).
        self._sending: set[int] = set()
        self._sending_followups: set[int] = set()
        self._leases: dict[ChannelRef, datetime] = {}  # channel -> until when this dispatcher holds it

    async def dispatch(self) -> DispatchReport:
        """Send what is due, channels side by side: each gets up to `cards_per_cycle` cards, then one digest.

        Each channel's outbox is planned on its own (`Store.plan_burst`): a burst (a big
        listing day, the catch-up after an outage, a resume) reaches a channel as at most
        `cards_per_cycle` cards and one digest of at most DIGEST_MAX papers, which says how
        many more matched; those are settled as 'overflow', never posted, never lost from
        view (`papers-bot status`). However many channels there are, each one is served
        every sweep, and no channel's backlog delays another's share.

        Platforms limit posting per channel (Slack about one message a second, Discord what
        its rate-limit headers say), so a channel's messages go out one after another at that
        pace, while up to `max_concurrent_channels` channels are served at once, the channel
        waiting longest first. A channel told to wait (a 429's Retry-After) stops, and is left
        alone until then; the others go on. What writes (planning a burst, a channel's lease,
        each card's claim and outcome) and counting the due channels run in worker threads
        when the store allows (`reads_off_loop`), each on a connection of its own: a write
        waits for the lock while the poller's transactions hold it, and the loop must not
        wait with it. A delivery is claimed before it is sent and recorded after, so no two
        tasks (or processes) send it.
        """
        report = DispatchReport()
        now = self.clock()
        await self._side_by_side([partial(self._serve_channel, due.channel, due.due, now, report)
                                  for due in await self._due_channels(now)])
        return report

    async def _due_channels(self, now: datetime) -> list[DueChannel]:
        """The store's due channels, counted in a worker thread (a read connection of its own)
        when the store allows: at 200,000 due deliveries counting takes hundreds of ms."""
        if self.store.reads_off_loop():
            return await asyncio.to_thread(self.store.due_channels, now)
        return self.store.due_channels(now)

    async def _off_loop(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)`, one of the store's "any thread" methods, in a worker thread (on a
        connection of its own) when the store allows, else here."""
        if self.store.reads_off_loop():
            return await asyncio.to_thread(func, *args)
        return func(*args)

    async def _plan_burst(self, channel: ChannelRef, now: datetime) -> tuple[BurstPlan, int]:
        """The channel's burst plan (`Store.plan_burst`) and how many rows it settled as
        overflow, made off the loop: a big burst settles thousands of rows as overflow (about
        100 ms of CPU at 2,000), and counting them reads each."""
        def plan() -> tuple[BurstPlan, int]:
            before = self.store.unannounced_overflow(channel).count
            made = self.store.plan_burst(channel, now, self.cards_per_cycle, DIGEST_MAX)
            return made, self.store.unannounced_overflow(channel).count - before
        return await self._off_loop(plan)

    async def _side_by_side(self, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Run `jobs` (one per channel) at most `max_concurrent_channels` at a time, in order.

        One that raises (a busy database, say) lets the ones in flight finish, starts no
        more, and its error is raised. Cancelled (shutdown, a kill), every job is: rows
        mid-send stay 'sending' and `recover` settles them (found sent, or released) at
        the next start."""
        queue = iter(jobs)  # shared by the workers: each job is taken by exactly one
        errors: list[Exception] = []

        async def worker() -> None:
            for job in queue:
                try:
                    await job()
                except Exception as exc:
                    errors.append(exc)
                if errors:
                    return

        await asyncio.gather(*(worker() for _ in range(min(self.max_concurrent_channels, len(jobs)))))
        if errors:
            raise errors[0]

    async def _serve_channel(self, channel: ChannelRef, due: int, now: datetime, report: DispatchReport) -> None:
        """One channel's share of a sweep: its cards one after another, then its digest."""
        adapter = self._adapter(channel)
        if adapter is None:
            report.waiting += due
            return
        if self._waiting(channel, now):
            return
        async with self._serving(channel) as mine:
            if mine:  # else another deliverer serves it now: at its pace
                await self._serve_leased(adapter, channel, now, report)

    async def _serve_leased(self, adapter: Adapter, channel: ChannelRef, now: datetime,
                            report: DispatchReport) -> None:
        plan, overflow = await self._plan_burst(channel, now)
        cards, batch = plan.cards, plan.digest
        report.overflow += overflow
        for delivery in cards:
            if self._waiting(channel.platform, self.clock()):
                return  # another channel learned that the whole platform must wait
            if not await self._lease(channel):
                return  # the lease ran out (a long wait) and another deliverer took the channel
            # In flight from before its claim (the claim commits in a worker thread): `recover`
            # never sees it claimed and not yet in flight.
            self._sending.add(delivery.id)
            try:
                if not await self._off_loop(self.store.claim_delivery, delivery.id, self.clock()):
                    continue
                result = await self._send(adapter, delivery)
                await self._record(delivery, result, report)
            finally:
                self._sending.discard(delivery.id)
            self._pause(channel, result)
            if result.channel_gone or result.retry_after is not None:
                return  # the channel is gone, or told us to wait: the rest waits too
        if batch and not self._waiting(channel.platform, self.clock()) \
                and not self.store.channel_settings(channel).paused:
            await self._post_digest(adapter, channel, batch, "more new paper", report)

    def _pause(self, channel: ChannelRef, result: PostResult) -> None:
        """Told to wait (a 429, a refused token): leave the channel, or its platform, alone until then."""
        if result.retry_after is not None:
            key: ChannelRef | str = channel.platform if result.platform_wide else channel
            self._paused_until[key] = self.clock() + timedelta(seconds=result.retry_after)

    def _waiting(self, key: ChannelRef | str, now: datetime) -> bool:
        """True while a channel, or its platform (a platform's name), must wait: a 429, a refused token."""
        until = self._paused_until.get(key)
        if until is not None and until <= now:
            del self._paused_until[key]
            until = None
        if until is not None:
            return True
        return isinstance(key, ChannelRef) and self._waiting(key.platform, now)

    def _adapter(self, channel: ChannelRef) -> Adapter | None:
        """The adapter for the channel's platform; None (said once per platform) if none runs."""
        adapter = self.adapters.get(channel.platform)
        if adapter is None and channel.platform not in self._warned:
            self._warned.add(channel.platform)
            log.warning("no %s adapter is running: deliveries to %s channels wait in the outbox",
                        channel.platform, channel.platform)
        return adapter

    async def _post_digest(self, adapter: Adapter, channel: ChannelRef, deliveries: list[Delivery], noun: str,
                           report: DispatchReport, heading: str = "") -> bool:
        """Send at most DIGEST_MAX deliveries as one digest message; True if it went out.

        A message must show every paper it marks as sent, and platforms bound a message's
        size, hence the limit; the channel's overflow is named by count in the same message.
        """
        if not await self._lease(channel):
            return False  # another deliverer took the channel: it sends this digest
        candidates = deliveries[:DIGEST_MAX]

        def claim() -> list[Delivery]:  # in one worker thread, one after another
            return [d for d in candidates if self.store.claim_delivery(d.id, self.clock())]
        self._sending.update(d.id for d in candidates)  # in flight from before the claims (see _serve_leased)
        try:
            claimed = await self._off_loop(claim)
            if not claimed:
                return True
            return await self._post_claimed_digest(adapter, channel, claimed, noun, report, heading)
        finally:
            self._sending.difference_update(d.id for d in candidates)

    async def _post_claimed_digest(self, adapter: Adapter, channel: ChannelRef, claimed: list[Delivery], noun: str,
                                   report: DispatchReport, heading: str = "") -> bool:
        overflow = await self._off_loop(self.store.unannounced_overflow, channel)
        more, up_to = overflow.count, overflow.up_to
        note = (f"and {plural(more, 'more paper')} matched, not posted: narrow the subscriptions "
                "(/papers list, /papers mute) or look them up with /papers search") if more else ""
        title = f"{heading}{plural(len(claimed), noun)} for this channel"
        return await self._post_batch(adapter, channel, claimed, title, report, note, up_to if more else None)

    async def recover(self, *, unclaimed: bool = True) -> tuple[int, int]:
        """After a crash: settle every delivery left mid-send. Returns (found sent, released).

        Where the adapter can tell (`find_sent`: on Slack the bot's own message carrying
        the paper's metadata, on Discord its own message with the paper's link, in the
        channel's recent history), a message that went out is recorded as sent;
        everything else (the console cannot tell: None) goes back to pending.

        Mid-send rows are settled when they are this store's (not in flight here), or a dead
        claimer's (adopted first: `Store.adopt_orphans`), or, with `unclaimed` (the sender
        lease's holder), claimed before claimers were recorded; a live deliverer's are its own.
        """
        found = released = 0
        self.store.adopt_orphans()
        for delivery in self.store.unfinished_deliveries():
            if not self._settles(delivery.id in self._sending, delivery.claimed_by, unclaimed):
                continue
            claimed_at = delivery.claimed_at
            adapter = self.adapters.get(delivery.channel.platform)
            message_id = None
            if adapter is not None and claimed_at is not None:
                try:
                    message_id = await adapter.find_sent(delivery.channel, delivery.paper_id, claimed_at)
                except Exception:
                    log.exception("looking for %s in %s failed; it will be sent again", delivery.paper_id,
                                  delivery.channel)
            if message_id:
                await self._off_loop(self.store.mark_sent, delivery.id, message_id, self.clock())
                if delivery.in_digest or self.store.channel_settings(delivery.channel).mode != "instant":
                    # it went out in a digest, which also said how many more had matched
                    overflow = await self._off_loop(self.store.unannounced_overflow, delivery.channel)
                    if overflow.count:
                        await self._off_loop(self.store.announce_overflow, delivery.channel, overflow.up_to,
                                             message_id, self.clock())
                found += 1
            else:
                await self._off_loop(self.store.release_delivery, delivery.id)
                released += 1
        if found or released:
            log.warning("recovered from an interrupted run: %d deliveries had gone out, %d will be sent",
                        found, released)
        await self.recover_followups(unclaimed=unclaimed)
        return found, released

    async def recover_orphans(self) -> tuple[int, int]:
        """Settle what dead deliverers left mid-send, if anything (one cheap read when nothing)."""
        if not self.store.adopt_orphans():
            return 0, 0
        return await self.recover(unclaimed=False)

    def _settles(self, in_flight: bool, claimed_by: str | None, unclaimed: bool) -> bool:
        """Whether `recover` settles a row in 'sending' claimed by `claimed_by`."""
        if in_flight:
            return False
        return unclaimed if claimed_by is None else claimed_by == self.store.sender_id

    @asynccontextmanager
    async def _serving(self, channel: ChannelRef) -> AsyncIterator[bool]:
        """Yields whether this dispatcher holds the channel's lease (so serves it); released after."""
        if not await self._lease(channel):
            yield False
            return
        try:
            yield True
        finally:
            await self._release(channel)

    async def _lease(self, channel: ChannelRef) -> bool:
        """Hold the channel's lease: taken, or renewed once half of it has run out; False when
        another deliverer holds it. Taken off the loop (a write: the lock may be another's)."""
        now = self.clock()
        until = self._leases.get(channel)
        if until is not None and now < until - CHANNEL_LEASE / 2:
            return True
        if not await self._off_loop(self.store.lease_channel, channel, now, now + CHANNEL_LEASE,
                                    self._handover(channel)):
            self._leases.pop(channel, None)
            return False
        self._leases[channel] = now + CHANNEL_LEASE
        return True

    @staticmethod
    def _handover(channel: ChannelRef) -> timedelta:
        return HANDOVER.get(channel.platform, HANDOVER_DEFAULT)

    async def _release(self, channel: ChannelRef) -> None:
        """Let other deliverers have the channel after its platform's gap between two messages."""
        if self._leases.pop(channel, None) is None:
            return
        try:
            await self._off_loop(self.store.release_channel, channel, self.clock() + self._handover(channel))
        except StorageError as exc:  # it runs out by itself
            log.warning("could not hand %s over: %s", channel, exc)

    async def dispatch_digests(self) -> DispatchReport:
        """Send every digest that is due: one message per channel with all it is owed."""
        report = DispatchReport()
        now = self.clock()
        jobs: list[Callable[[], Awaitable[None]]] = []
        for settings in self.store.digest_channels():
            due = digest_due(settings, now)
            if due is None:
                continue
            adapter = self._adapter(settings.channel)
            if adapter is None:
                report.waiting += 1
                continue
            if self._waiting(settings.channel, now):
                continue  # a 429 or a refused token: tried again after the wait, still in this slot
            jobs.append(partial(self._send_digest_leased, adapter, settings, due, report))
        await self._side_by_side(jobs)  # one message per channel: the channels side by side
        return report

    async def _send_digest_leased(self, adapter: Adapter, settings: ChannelSettings, due: datetime,
                                  report: DispatchReport) -> None:
        async with self._serving(settings.channel) as mine:
            if mine:  # else another deliverer serves the channel now, and sends its digest
                await self._send_digest(adapter, settings, due, report)

    async def _send_digest(self, adapter: Adapter, settings: ChannelSettings, due: datetime,
                           report: DispatchReport) -> None:
        # One message a slot: past DIGEST_MAX papers, the rest is counted in it, not posted.
        def hold_back() -> int:  # off the loop: a channel owed thousands rewrites as many rows
            before = self.store.unannounced_overflow(settings.channel).count
            self.store.hold_back(settings.channel, DIGEST_MAX)
            return self.store.unannounced_overflow(settings.channel).count - before
        report.overflow += await self._off_loop(hold_back)
        pending = self.store.pending_for_channel(settings.channel, DIGEST_MAX)
        # Titled as what it is, the channel's daily or weekly digest ("15 more new papers ..." is a burst's).
        heading = f"{settings.mode.capitalize()} digest: "
        if pending and not await self._post_digest(adapter, settings.channel, pending, "new paper", report, heading):
            return  # tried again at the next sweep, still in this slot
        # Due with nothing to send still moves the schedule on, so it fires once per slot.
        # Only last_digest_at: a command may have changed the other settings while this was sent.
        self.store.update_channel_settings(settings.channel, settings.updated_at or due, last_digest_at=due)

    async def _post_batch(self, adapter: Adapter, channel: ChannelRef, claimed: list[Delivery], title: str,
                          report: DispatchReport, note: str = "", overflow_up_to: int | None = None) -> bool:
        """Send claimed deliveries as one digest message; on failure they return to the outbox.

        `note` counts the channel's overflow up to `overflow_up_to`: recorded as announced
        together with the papers marked sent, or not at all."""
        cards = []
        for delivery in claimed:
            paper = self.store.get_paper(delivery.paper_id)
            if paper is not None:
                cards.append(card_for(paper, delivery.matched))
        mentions = self.store.subscribers(sorted({m.subscription_id for d in claimed for m in d.matched}))
        try:
            result = await adapter.post_digest(Digest(channel, title, tuple(cards), note, RANK_ORDER, tuple(mentions)))
        except Exception as exc:
            log.exception("digest for %s raised", channel)
            result = PostResult(ok=False, error=f"{type(exc).__name__}: {exc}", retryable=True)
        now = self.clock()
        self._pause(channel, result)
        if result.channel_gone:
            await self._each_off_loop(self.store.reschedule_delivery,
                                      [(d.id, result.error or "channel gone", now) for d in claimed])
            self._pause_gone(channel, result.error, now)
            report.failed += len(claimed)
            return False
        attempts = max(d.attempts for d in claimed) + 1
        if not result.ok and result.retry_after is None and (not result.retryable or attempts >= MAX_ATTEMPTS):
            # Given up, as for a card: a digest that can never go out must not hold its burst
            # (and so every later paper of the channel) open.
            await self._each_off_loop(self.store.give_up_delivery,
                                      [(d.id, result.error or "digest failed") for d in claimed])
            report.failed += len(claimed)
            log.error("gave up posting a digest to %s: %s", channel, result.error)
            return False
        if not result.ok:
            # The rows go back to pending and the digest is tried again; a rate limit is
            # waited out as asked and never given up for.
            delay = timedelta(seconds=result.retry_after) if result.retry_after is not None else retry_delay(attempts)
            await self._each_off_loop(self.store.reschedule_delivery,
                                      [(d.id, result.error or "digest failed", now + delay) for d in claimed])
            report.retrying += len(claimed)
            log.warning("digest for %s failed (%s); will retry", channel, result.error)
            return False
        def settle() -> None:  # in a worker thread: its transaction is on that thread's connection
            with self.store.transaction():
                for delivery in claimed:
                    self.store.mark_sent(delivery.id, result.message_id, now)
                if overflow_up_to is not None:
                    self.store.announce_overflow(channel, overflow_up_to, result.message_id, now)
        await self._off_loop(settle)
        report.sent += len(claimed)
        log.info("posted a digest of %d papers to %s", len(claimed), channel)
        return True

    def _pause_gone(self, channel: ChannelRef, error: str | None, now: datetime) -> None:
        """Retrying cannot help until someone re-invites the bot: keep the papers (pending),
        pause the channel, and say why in /papers status."""
        self.store.update_channel_settings(channel, now, paused=True, paused_reason=error)
        log.error("paused %s: the platform says %s", channel, error)

    async def _send(self, adapter: Adapter, delivery: Delivery) -> PostResult:
        paper = self.store.get_paper(delivery.paper_id)
        if paper is None:
            return PostResult(ok=False, error="paper missing from storage", retryable=False)
        try:
            card = card_for(paper, delivery.matched, self.store.delivery_subscriptions(delivery.id))
            # Those who subscribed with --me are mentioned: only they, never anyone else.
            mentions = self.store.subscribers(sorted({m.subscription_id for m in delivery.matched}))
            if mentions:
                card = replace(card, mentions=tuple(mentions))
            return await adapter.post(delivery.channel, card)
        except Exception as exc:  # an adapter bug must not stop the other deliveries
            log.exception("posting %s to %s raised", delivery.paper_id, delivery.channel)
            return PostResult(ok=False, error=f"{type(exc).__name__}: {exc}", retryable=True)

    async def _each_off_loop(self, func: Callable[..., object], calls: list[tuple]) -> None:
        """`func(*args)` for each of `calls`, in order, in one worker thread (see `_off_loop`)."""
        def each() -> None:
            for args in calls:
                func(*args)
        await self._off_loop(each)

    async def _record(self, delivery: Delivery, result: PostResult, report: DispatchReport) -> None:
        """Record a card's outcome: in a worker thread when the store allows (see `dispatch`)."""
        now = self.clock()
        if result.ok:
            await self._off_loop(self.store.mark_sent, delivery.id, result.message_id, now)
            report.sent += 1
            log.info("posted %s to %s", delivery.paper_id, delivery.channel)
            return
        attempts = delivery.attempts + 1
        if result.retry_after is not None:
            # A rate limit (or a refused token) is not a failure of this paper: wait as long as
            # asked, and never give up for it.
            await self._off_loop(self.store.reschedule_delivery, delivery.id, result.error or "rate limited",
                                 now + timedelta(seconds=result.retry_after))
            report.retrying += 1
            log.info("posting to %s must wait %.0fs: %s", delivery.channel, result.retry_after,
                     result.error or "rate limited")
            return
        if result.channel_gone:
            await self._off_loop(self.store.reschedule_delivery, delivery.id, result.error or "channel gone", now)
            self._pause_gone(delivery.channel, result.error, now)
            report.failed += 1
            return
        if result.retryable and attempts < MAX_ATTEMPTS:
            await self._off_loop(self.store.reschedule_delivery, delivery.id, result.error or "unknown error",
                                 now + retry_delay(attempts))
            report.retrying += 1
            log.warning("posting %s to %s failed (%s); will retry", delivery.paper_id, delivery.channel, result.error)
        else:
            await self._off_loop(self.store.give_up_delivery, delivery.id, result.error or "unknown error")
            report.failed += 1
            log.error("gave up posting %s to %s: %s", delivery.paper_id, delivery.channel, result.error)

    # ---- follow-ups in the thread ---------------------------------------------------------

    async def dispatch_followups(self) -> DispatchReport:
        """Send the follow-ups due now: each one reply in its card's thread, claimed before
        it is sent and marked after, as a card is. Channels side by side, each one's replies
        one after another (the adapter keeps the platform's pace); a channel told to wait (a
        429's Retry-After), or whose platform must, is left alone until then, its cards too."""
        report = DispatchReport()
        by_channel: dict[ChannelRef, list[FollowUp]] = {}
        for followup in self.store.due_followups(self.clock(), FOLLOWUPS_PER_SWEEP):
            by_channel.setdefault(followup.thread.channel, []).append(followup)
        await self._side_by_side([partial(self._serve_followups, channel, followups, report)
                                  for channel, followups in by_channel.items()])
        return report

    async def _serve_followups(self, channel: ChannelRef, followups: list[FollowUp], report: DispatchReport) -> None:
        adapter = self._adapter(channel)
        if adapter is None:
            report.waiting += len(followups)
            return
        async with self._serving(channel) as mine:
            if mine:  # else another deliverer serves the channel now, and sends these
                await self._serve_followups_leased(adapter, channel, followups, report)

    async def _serve_followups_leased(self, adapter: Adapter, channel: ChannelRef, followups: list[FollowUp],
                                      report: DispatchReport) -> None:
        for followup in followups:
            if self._waiting(channel, self.clock()) or not await self._lease(channel):
                return
            self._sending_followups.add(followup.id)  # in flight from before its claim, as a card
            try:
                if not await self._off_loop(self.store.claim_followup, followup.id, self.clock()):
                    continue
                try:
                    result = await adapter.post_in_thread(followup.thread, reply_for(followup))
                except Exception as exc:  # an adapter bug must not stop the other replies
                    log.exception("replying about %s in %s raised", followup.paper_id, channel)
                    result = PostResult(ok=False, error=f"{type(exc).__name__}: {exc}", retryable=True)
                await self._record_followup(followup, result, report)
            finally:
                self._sending_followups.discard(followup.id)
            self._pause(channel, result)
            if result.channel_gone or result.retry_after is not None:
                return

    async def _record_followup(self, followup: FollowUp, result: PostResult, report: DispatchReport) -> None:
        """Record a reply's outcome: in a worker thread when the store allows, as a card's."""
        now = self.clock()
        what = f"the {followup.kind} follow-up of {followup.paper_id} in {followup.thread.channel}"
        if result.ok:
            await self._off_loop(self.store.mark_followup_sent, followup.id, result.message_id, now)
            report.sent += 1
            log.info("posted %s", what)
        elif result.retry_after is not None:  # a rate limit: waited out, never given up for
            await self._off_loop(self.store.reschedule_followup, followup.id, result.error or "rate limited",
                                 now + timedelta(seconds=result.retry_after))
            report.retrying += 1
        elif result.channel_gone:
            await self._off_loop(self.store.reschedule_followup, followup.id, result.error or "channel gone", now)
            self._pause_gone(followup.thread.channel, result.error, now)
            report.failed += 1
        elif result.retryable and followup.attempts + 1 < MAX_ATTEMPTS:
            await self._off_loop(self.store.reschedule_followup, followup.id, result.error or "unknown error",
                                 now + retry_delay(followup.attempts + 1))
            report.retrying += 1
            log.warning("posting %s failed (%s); will retry", what, result.error)
        else:
            await self._off_loop(self.store.give_up_followup, followup.id, result.error or "unknown error")
            report.failed += 1
            log.error("gave up posting %s: %s", what, result.error)

    async def recover_followups(self, *, unclaimed: bool = True) -> tuple[int, int]:
        """After a crash: settle every follow-up left mid-send, as `recover` does deliveries
        (the adapter's `find_in_thread` tells a reply that went out). Returns (found sent, released)."""
        found = released = 0
        for followup in self.store.unfinished_followups():
            if not self._settles(followup.id in self._sending_followups, followup.claimed_by, unclaimed):
                continue
            adapter = self.adapters.get(followup.thread.channel.platform)
            message_id = None
            if adapter is not None and followup.claimed_at is not None:
                try:
                    message_id = await adapter.find_in_thread(followup.thread, reply_for(followup),
                                                              followup.claimed_at)
                except Exception:
                    log.exception("looking for the %s follow-up of %s in %s failed; it will be sent again",
                                  followup.kind, followup.paper_id, followup.thread.channel)
            if message_id:
                await self._off_loop(self.store.mark_followup_sent, followup.id, message_id, self.clock())
                found += 1
            else:
                await self._off_loop(self.store.release_followup, followup.id)
                released += 1
        if found or released:
            log.warning("recovered from an interrupted run: %d follow-ups had gone out, %d will be sent",
                        found, released)
        return found, released
