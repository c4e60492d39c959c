"""Poller: fetch a source, store what is new, match it, queue deliveries. Never raises.

Whatever goes wrong in a poll ends as a failed SourceReport and a recorded source failure
(so `run` backs off, the admin hears after N failures, `/healthz` and `status` show it):
the source's own failures (network, HTTP, an unreadable listing) and the bot's own (its
storage full or read-only, a bug in matching). One malformed item is skipped and logged;
the rest of its listing is stored and matched.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Sequence

from storage import Store

from .clock import utcnow
from .errors import QueryError, SourceError, StorageError
from .matching import IndexedMatcher
from .models import Paper
from .sources import Source
from .sources.base import bounded_repr, check_paper

log = logging.getLogger(__name__)

HISTORY_FOR_ANCHORS = 1000

# How the reason of a failure that is the bot's own, not the source's, begins.
STORAGE_ERROR = "storage error: "
INTERNAL_ERROR = "internal error: "


@dataclass
class SourceReport:
    source: str
    ok: bool
    listed: int = 0
    new: int = 0
    queued: int = 0
    error: str | None = None
    failures: int = 0  # consecutive failures, this one included
    not_modified: bool = False  # HTTP 304: nothing new since the last poll
    recovered_after: int = 0  # failures in a row that this success ended
    skipped: int = 0  # malformed items of the listing, skipped (each logged with its reason)

    def line(self) -> str:
        if not self.ok:
            return f"{self.source}: FAILED: {self.error}"
        if self.not_modified:
            return f"{self.source}: not modified since the last poll"
        skipped = f" ({self.skipped} malformed skipped, see the log)" if self.skipped else ""
        return f"{self.source}: {self.listed} listed{skipped}, {self.new} new, {self.queued} queued for delivery"


class Poller:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow, *, max_age_days: int = 7):
        self.store = store
        self.clock = clock
        self.max_age = timedelta(days=max_age_days)
        self.matcher = IndexedMatcher()
        self._version = 0  # the newest subscription version the engine has seen
        self._failures: dict[str, int] = {}  # failures in a row, for when storage cannot count them

    def sync_subscriptions(self) -> None:
        """Bring the engine in step with storage: add new subscriptions, drop removed ones.

        Commands may run in another process (`papers-bot command`), so storage is the
        truth; the engine is updated by difference, never rebuilt.
        """
        current = self.store.subscription_ids()
        known = self.matcher.ids()
        if not known and current and not self._version:
            # First load: recent papers' word counts let the index anchor on rare words.
            self.matcher = IndexedMatcher(papers=self.store.recent_papers(HISTORY_FOR_ANCHORS))
        for gone in known - current:
            self.matcher.remove(gone)
        changed, self._version = self.store.subscriptions_changed_since(self._version)
        for sub in changed:
            try:
                self.matcher.add(sub)  # replaces the old query of a changed subscription
            except QueryError as exc:  # stored by an older version with other rules
                self.matcher.remove(sub.id)
                log.error("subscription #%s (%r) cannot be parsed, skipped: %s", sub.id, sub.query, exc)
        if len(changed) > 10_000:
            # Millions of long-lived query tuples would otherwise be rescanned by every full
            # garbage collection while papers are matched (measured: about 2x slower).
            gc.freeze()

    async def poll(self, source: Source) -> SourceReport:
        """Poll one source. Never raises: every failure is a failed, recorded SourceReport."""
        try:
            return await self._poll(source)
        except Exception as exc:
            # Nothing of the response was stored, its validators included: the next poll
            # sends the stored ones, which describe what is stored, and gets it again.
            if isinstance(exc, StorageError):  # the Store's own words: they name the file and what to do
                log.error("%s: poll failed on the bot's own database: %s", source.name, exc)
                reason = f"{STORAGE_ERROR}{exc}"
            elif isinstance(exc, sqlite3.Error):
                log.error("%s: poll failed on the bot's own database %s: %s", source.name, self.store.path, exc)
                reason = f"{STORAGE_ERROR}{type(exc).__name__}: {exc} (database {self.store.path})"
            else:
                log.exception("%s: poll failed after the fetch", source.name)
                reason = f"{INTERNAL_ERROR}{type(exc).__name__}: {exc}"
            return self._failed(source.name, reason, own=True)

    async def _poll(self, source: Source) -> SourceReport:
        validators = self.store.source_validators(source.name)
        try:
            listing = await source.fetch(validators)
        except SourceError as exc:
            return self._failed(source.name, exc.reason)
        except Exception as exc:  # a parser bug must not stop the bot or the other sources
            log.exception("%s: unexpected error while fetching", source.name)
            return self._failed(source.name, f"unexpected error: {type(exc).__name__}: {exc}")
        now = self.clock()
        if listing.papers is None:  # 304: the listing has not changed since the last poll
            recovered = self.store.record_source_success(source.name, now, 0)
            return self._succeeded(SourceReport(source.name, True, not_modified=True, recovered_after=recovered))
        papers = self._valid(source.name, listing.papers)
        skipped = len(listing.skipped) + len(listing.papers) - len(papers)
        # One transaction: a failure anywhere below (a full disk, a matcher bug) leaves
        # nothing half-done, so the next poll stores and matches the same papers again.
        with self.store.transaction():
            before = self.store.paper_snapshot([p.id for p in papers])
            new = self.store.add_papers(papers, now)
            # Only papers stored just now are matched, so a subscription never receives
            # papers stored before it was created.
            self.sync_subscriptions()
            queued = 0
            for paper in new:
                if paper.is_update:  # a revised old paper is stored, never announced as news
                    continue
                if paper.listed_on and now.date() - paper.listed_on > self.max_age:
                    continue  # listed long ago (a late listing, a backfill): stored, not posted
                matches = self.matcher.match(paper)
                if matches:
                    queued += self.store.enqueue(paper.id, matches, now)
            queued += self._recheck(papers, before, now)
            recovered = self.store.record_source_success(source.name, now, len(papers))
            if listing.validators != validators:  # only once what they describe is stored
                self.store.save_source_validators(source.name, listing.validators)
        if not papers:
            log.info("%s: empty listing (normal on weekends and holidays)", source.name)
        return self._succeeded(SourceReport(source.name, True, listed=len(papers), new=len(new), queued=queued,
                                            recovered_after=recovered, skipped=skipped))

    def _valid(self, name: str, papers: Sequence[Paper]) -> list[Paper]:
        """The papers that can be stored as they are; each other one is logged once and skipped."""
        valid = []
        for paper in papers:
            try:
                check_paper(paper)
            except ValueError as exc:
                log.warning("%s: skipped paper %s: %s", name, bounded_repr(paper.id), str(exc)[:300])
                continue
            valid.append(paper)
        return valid

    def _recheck(self, papers: list[Paper], before: dict, now: datetime) -> int:
        """Known papers whose upvotes (or organization) changed may now match more queries,
        such as `upvotes>=50`: deliver them then, once, within max_age_days, and only to
        subscriptions that already existed when the paper was first stored."""
        queued = 0
        for listed in papers:
            if listed.id not in before:
                continue
            upvotes, organization, first_seen = before[listed.id]
            changed = (listed.upvotes is not None and listed.upvotes != upvotes) or (
                listed.organization is not None and organization is None)
            if not changed or now - first_seen > self.max_age:
                continue
            paper = self.store.get_paper(listed.id)
            matches = self.matcher.match(paper) if paper is not None and not paper.is_update else []
            if not matches:
                continue
            existed = self.store.subscriptions_created_by([m.subscription_id for m in matches], first_seen)
            matches = [m for m in matches if m.subscription_id in existed]
            if matches:
                queued += self.store.enqueue(listed.id, matches, now)  # unique per paper x channel: once
        return queued

    def _succeeded(self, report: SourceReport) -> SourceReport:
        self._failures.pop(report.source, None)
        self.store.poll_faults.pop(report.source, None)
        return report

    def _failed(self, name: str, reason: str, *, own: bool = False) -> SourceReport:
        """Record a failed poll; `own` when the bot failed (its storage or code), not the source."""
        reason = reason[:500]
        failures = self._failures[name] = self._failures.get(name, 0) + 1
        if own:
            self.store.poll_faults[name] = reason  # /healthz reads it, even if recording fails below
        else:
            self.store.poll_faults.pop(name, None)
        try:
            failures = self._failures[name] = self.store.record_source_failure(name, self.clock(), reason)
        except Exception as exc:  # the database that just failed may well refuse this too
            log.error("%s: could not record this failure in the database either (%s: %s)",
                      name, type(exc).__name__, str(exc)[:200])
        if not own:  # the bot's own failures were logged where they happened
            log.warning("%s: %s", name, reason)
        return SourceReport(name, False, error=reason, failures=failures)
