"""What the rest of the bot may ask of storage: the Store's whole public surface.

`storage.Store` (SQLite) implements it; a second implementation (PostgreSQL, say) is
written against this file alone, and `tests/test_store_contract.py` checks that the two
name the same methods. The bot (`bot/`, `handlers/`) types against `StoreContract`.

Rules every method keeps, unless its own text says otherwise:

- Values in, values out: arguments and results are the frozen values of `bot/models.py`
  (or str, int, float, bool, datetime, date, and lists or sets of these); never a dict,
  never a bare tuple, never a row, a cursor or a driver's object. Nothing returned is
  chat text: presentation is `bot/cards.py`'s and the handlers'.
- Errors: any failure of the database becomes `StorageError` (its message names the
  database and what to do about it); `StorageBusy`, a StorageError, when another process
  kept the database locked past the busy timeout, and then trying again later works.
  No driver exception (sqlite3.Error, psycopg.Error, ...) ever reaches a caller.
- Atomicity: every method that writes is one transaction: all of it or nothing, also
  when it raises. Writes take the write lock when they begin, so concurrent processes
  (`papers-bot run` and any number of `papers-bot command`) wait their turn rather than
  fail half-way, and decisions made from what a method read (a limit, a burst) hold.
  Inside `transaction()`, methods join the caller's transaction instead.
- Times: aware datetimes in any zone; stored as UTC to the second (what comes back is
  UTC, without the microseconds that went in).
- Channels are identified by `ChannelRef`; a channel needs no row anywhere to exist (its
  settings default to `ChannelSettings(channel)`).
- Calls are synchronous and short (milliseconds). Each Store is used from one thread: the
  event loop's, or the poller's worker thread, which opens a Store of its own on the same
  database; an implementation need not be thread-safe. Except the reads marked "any
  thread": when `reads_off_loop()` is true the bot calls them from worker threads
  (asyncio.to_thread), beside the loop's calls, and each must then use a connection of
  its own (SQLite's are bound to their thread; WAL lets readers run beside the writer).
  Most are reads; `plan_burst`, `hold_back` and `record_command` write, each in one
  transaction as every write method.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Any, Callable, Collection, Protocol

from bot.models import (
    BurstPlan,
    ChannelFeedback,
    ChannelRef,
    ChannelSettings,
    Delivery,
    DueChannel,
    Feedback,
    FollowUp,
    Match,
    MatchedBatch,
    MostSavedSchedule,
    OutboxCounts,
    Overflow,
    Paper,
    PaperMatches,
    PaperSnapshot,
    PreviewCandidates,
    SavedPaper,
    SettingsChange,
    SlackInstallation,
    SourceStatus,
    StoredQuery,
    Subscribed,
    Subscription,
    SubscriptionChanges,
    SubscriptionRef,
    UnmatchedPaper,
    Validators,
)


class StoreContract(Protocol):
    path: str
    """Where the data lives (a file path, ":memory:", or a database URL), for messages."""
    sender_id: str
    """This store's name as a sender, unique among processes and Stores: what its claims
    write as `claimed_by` (`Delivery.claimed_by`), and what holds its channel leases."""

    # ---- the store itself -----------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[object]:
        """Everything written inside happens together or not at all (an exception inside
        rolls it all back, and propagates). The write lock is taken when it begins
        (StorageBusy, nothing written, if another process keeps it past the busy timeout).
        Nested, it is a savepoint of the outer one. Reads inside see the writes made so far.
        Any thread: on the calling thread's connection, so a worker thread's transaction holds
        the "any thread" writes it makes inside (the bot settles a digest's rows so)."""
        ...

    def close(self) -> None:
        """Release the connection, the sender lease, the poller's lease, this sender's
        liveness and the channel leases it holds. Nothing may be called after."""
        ...

    def check_file(self) -> None:
        """Raise StorageError if the database was deleted or replaced under this process
        since it was opened (an implementation with no file to check does nothing). Cheap:
        called every few seconds."""
        ...

    def hold_sender_lease(self) -> bool:
        """True when this process is (now) the one allowed to settle deliveries a crash left
        in 'sending' (`unfinished_deliveries`): no other live process holds the lease. Once
        held it is kept until close(), and released by the system if the process dies."""
        ...

    # ---- cooperating processes (`papers-bot run --role ...`) ----------------------------------
    # Liveness is the system's word, never a timestamp: a lease is a lock held by a session
    # (PostgreSQL: a session-level advisory lock; SQLite: a flock on a file beside the
    # database) and goes with the process, even when it is killed.

    def hold_poller_lease(self) -> bool:
        """True when this process is (now) the one that polls: no other live process holds
        the poller's lease. Never waits. Once held it is kept until close(); a standby calls
        it again (at least once a poll interval) and takes over when the holder dies."""
        ...

    def live_sender_id(self) -> str:
        """`sender_id`, with its liveness lock held from now until close(): rows it claims
        while it lives are its own, and `adopt_orphans` in other processes leaves them alone.
        The claims (`claim_delivery`, `claim_followup`) call it; so may anyone. Any thread:
        the lock is taken once, whichever thread comes first."""
        ...

    def adopt_orphans(self) -> int:
        """Deliveries and follow-ups in 'sending' whose claimer is gone (its liveness lock is
        free: its process died, or closed its store mid-send) become this store's own
        (`claimed_by` = `sender_id`, the liveness lock taken first); returns how many. Each
        dead claimer's rows are adopted by exactly one caller. Rows claimed before claimers
        were recorded (`claimed_by` None) are left to the sender lease's holder."""
        ...

    def lease_channel(self, channel: ChannelRef, now: datetime, until: datetime,
                      handover: timedelta = ...) -> bool:
        """Take or renew the lease on serving `channel` (sending its cards, digests and
        follow-ups) until `until`. Atomic: True when this store now holds it (nobody did, the
        lease ran out at or before `now`, or it was this store's); False while another
        holder's lease runs. A holder found dead (its liveness lock free: see
        `live_sender_id`, which this calls first) keeps it only until `now + handover` (the
        platform's gap between two messages of a channel: its last one may be that recent;
        default 5 seconds), so its channels are taken over soon, and at the platform's pace.
        Any thread (it writes: from a worker thread on a connection of its own, as
        `plan_burst`); the bot leases from a worker thread when `reads_off_loop()`, so the
        loop never waits for the write lock another holds (a poll's transactions)."""
        ...

    def release_channel(self, channel: ChannelRef, until: datetime) -> None:
        """Done serving `channel` for now: its lease (if this store's) runs only until
        `until` (the platform's gap between two messages of a channel), after which anyone
        may take it; this store may take it again at once. A lease held by another is left.
        Any thread, as `lease_channel`."""
        ...

    # ---- papers -----------------------------------------------------------------------------

    def add_papers(self, papers: list[Paper], now: datetime, *, listed: bool = True) -> list[Paper]:
        """Store papers (one transaction); return those no listing had stored before, in input order.

        A paper already stored is not duplicated: the fields it lacked are filled in
        (upvotes, thumbnail, github, project_page, ai_summary, organization, comments;
        upvotes and comments are refreshed; categories when it has none), its title and
        abstract stay, the source is added to its sources.
        `listed=False` stores papers fetched for a lookup: they are not returned as new
        and not searchable as listed, and a later listing of them still returns them as
        new. `now` is their first_seen."""
        ...

    def paper_snapshot(self, paper_ids: list[str]) -> list[PaperSnapshot]:
        """For the listed papers among `paper_ids` that are stored: their upvotes,
        organization, first_seen and categories, in no particular order. Any number of ids."""
        ...

    def mark_unmatched(self, papers: list[UnmatchedPaper]) -> None:
        """Write down stored papers that are still to be matched, each with the moment after
        which subscriptions no longer receive it (`since`), or the newest subscription id that
        receives it (`upto`), kept as given. A paper already written down keeps
        its first entry. Made in the transaction that stores the papers, so that a poll
        interrupted before it queues their deliveries leaves them here for the next one."""
        ...

    def unmatched_papers(self, limit: int, skip: Collection[str] = ()) -> list[UnmatchedPaper]:
        """At most `limit` of the papers written down and not settled, oldest entry first,
        leaving out those of `skip`."""
        ...

    def settle_unmatched(self, paper_ids: list[str]) -> None:
        """Take these papers off the unmatched list (their deliveries are queued); unknown ids are ignored."""
        ...

    def get_paper(self, paper_id: str) -> Paper | None:
        """The stored paper (listed or stored by a lookup), None if there is none.
        `Paper.source` is the first source that listed it."""
        ...

    def papers_listed_since(self, since: datetime, limit: int) -> list[Paper]:
        """Listed papers first stored at or after `since`, newest first (ties by id), at most `limit`."""
        ...

    def reads_off_loop(self) -> bool:
        """True when the "any thread" reads may be called from worker threads (a database
        file); False when they must be called from the loop's thread (an in-memory one)."""
        ...

    def preview_candidates(self, query: str, since: datetime, limit: int | None = None) -> PreviewCandidates:
        """Any thread. For a query (bot/query.py's syntax, valid): the listed papers first
        stored at or after `since`, replacements (`is_update`) left out, that may match it,
        newest first (ties by id): every one that does, and as few others as the store can
        rule out (those lacking a word, phrase, prefix, author name or category the query
        requires, or holding one it excludes; upvote, source and organization terms it
        requires or excludes). No cap, however many are stored. When the store decides the
        query exactly (`exact`; what bot.matching.evaluate would decide: words, phrases,
        prefixes, categories, author names of one or two parts, their OR and NOT, upvotes,
        source, organization) and `limit` is given, only the newest `limit` matches come
        back and `count` says how many there are; otherwise every candidate, for the caller
        to decide with bot.matching.evaluate. Papers the word index has not reached yet
        (after an upgrade, until `index_paper_words(backlog=True)` is done) are candidates
        as they are, and the answer is then not `exact`.
        `stored`: every listed paper first stored at or after `since`, replacements too.
        May first index a few papers stored since the last call (writes, short transactions)."""
        ...

    def index_paper_words(self, stop: Callable[[], bool] | None = None, *, backlog: bool = False) -> int:
        """Any thread. Bring preview's word index up to date with the papers stored since it
        was last (short transactions); with `backlog`, also index the papers stored before
        the index existed (after an upgrade: every stored paper; newest first); how many
        papers it indexed. For doing it ahead, say after a bulk load, or in the background
        at start-up. `stop` is asked before each transaction: when it says so, the rest is
        left to the next call."""
        ...

    def search_papers(self, words: list[str], limit: int, window: int = 5000) -> list[Paper]:
        """Any thread. Full-text search over title, abstract and authors: the papers with every word,
        or, when none has them all, those with any; best match first, at most `limit`.

        Words are plain text, never query syntax of the database (quote them), but one
        ending in "*" is a prefix ("diffus*" finds "diffusion"; the rest is letters and
        digits, as `raw_words` gives them). Stemmed (English: "models" finds "model"). For
        speed only the `window` most recently stored papers containing a word need to be
        ranked. No words: []."""
        ...

    def trending_papers(self, since: date, limit: int) -> list[Paper]:
        """Papers with upvotes listed on `since` or later, most upvoted first (ties by id)."""
        ...

    def recent_papers(self, limit: int) -> list[Paper]:
        """The papers stored last (listed or not), newest first (ties by id)."""
        ...

    def count_papers(self) -> int:
        """Every stored paper, listed or not."""
        ...

    # ---- subscriptions ----------------------------------------------------------------------

    def add_subscription(
        self, channel: ChannelRef, query: str, user_id: str, now: datetime, *, limit: int | None = None
    ) -> Subscribed:
        """Subscribe `channel` to `query` (already normalized), in one transaction.

        The same query again in the same channel returns the existing subscription, not
        created. With `limit`, a channel that already has `limit` subscriptions gets none
        (subscription None); the count and the insert are atomic, so processes adding at
        once never exceed it. Ids are never reused, even after a removal; a new
        subscription gets a higher id and a higher version than every earlier one."""
        ...

    def get_subscription(self, subscription_id: int) -> Subscription | None:
        """With its `delivered` count (deliveries it answers that were sent)."""
        ...

    def remove_subscription(self, channel: ChannelRef, subscription_id: int) -> Subscription | None:
        """Remove a subscription of this channel and return it (as it was); None, nothing
        removed, if the channel has no such id (another channel's id included). In the same
        transaction, the channel's pending deliveries stop naming it, and those it alone
        matched are settled 'unsubscribed', never posted (`unsubscribed_rows`)."""
        ...

    def subscriptions(self, channel: ChannelRef | None = None) -> list[Subscription]:
        """The channel's subscriptions (every channel's, when None) by id, with `delivered` counts."""
        ...

    def subscriptions_changed_since(self, version: int) -> SubscriptionChanges:
        """Subscriptions added or whose query changed after `version` (any order; `delivered`
        is 0, not counted: this must stay cheap for a million rows; each with its stored
        `compiled` form, None where there is none), and the newest version
        among them (`version` itself when there are none). Start from 0. Removals are not
        reported: compare `subscription_ids()`."""
        ...

    def save_compiled_queries(self, compiled: dict[int, tuple[str, bytes]]) -> None:
        """Keep the compiled form of these subscriptions' queries (by id: the query it was
        compiled from, and the form; `compiled` on the Subscriptions
        `subscriptions_changed_since` returns), without changing their version. Ids no longer
        stored are ignored, and so are those whose query is no longer that one (changed
        since it was read: the change stored its own form)."""
        ...

    def subscriptions_created_by(self, ids: list[int], moment: datetime, upto: int | None = None) -> set[int]:
        """Those of `ids` whose subscriptions exist and existed (were created) at `moment`; with
        `upto`, those whose id is at most `upto` instead (committed before a paper was stored:
        `newest_subscription_id`), whatever their creation time."""
        ...

    def newest_subscription_id(self) -> int:
        """The highest subscription id given so far (0: none). Ids are never reused and grow in
        the order subscriptions are committed: inside a transaction, every subscription with an
        id up to it is committed, and every one committed later gets a higher id."""
        ...

    def subscriptions_version(self) -> int:
        """The newest version among subscriptions (`subscriptions_changed_since`): it grows with
        every subscription added, changed or removed, so a cheap way to see that something
        changed (while it is the same, nothing did)."""
        ...

    def subscription_ids(self) -> set[int]:
        """The ids of every subscription of every channel."""
        ...

    def subscription_queries(self, upto: int) -> list[StoredQuery]:
        """The id, query and channel key of every subscription whose version is at most `upto`, in any order
        (for the index kept between runs, bot/index_cache.py: checked against what it was built from)."""
        ...

    def change_subscription_query(
        self, channel: ChannelRef, subscription_id: int, query: str, *, expected: str | None = None
    ) -> Subscription | None:
        """Give a subscription of this channel a new query, keeping its id, in one transaction.

        None if the channel has no such id. The subscription is returned unchanged when,
        with `expected`, its query is no longer `expected`, or when another subscription
        of the channel already has `query`. A change gives it a new, higher version, and, in
        its transaction, the channel's pending deliveries that name the subscription are
        matched again with the new query: its fact in each is the new query's, or dropped where
        it no longer matches; one left with no fact is settled 'unsubscribed' (a `mute`).
        `like:` queries are left to the recommender."""
        ...

    def remove_all_subscriptions(self, channel: ChannelRef) -> list[Subscription]:
        """Remove every subscription of the channel; return them (by id), as they were. Their
        pending deliveries are settled as `remove_subscription` says."""
        ...

    def count_subscriptions(self, channel: ChannelRef) -> int:
        """How many subscriptions the channel has."""
        ...

    # ---- the outbox -------------------------------------------------------------------------
    # A delivery is one paper owed to one channel, written before anything is sent. Status:
    # pending -> sending (claimed) -> sent | failed, or back to pending (retry, release); or
    # overflow: settled without being posted, counted by a digest. Ids grow with time: "oldest
    # first" is by id.

    def enqueue(self, paper_id: str, matches: list[Match], now: datetime) -> int:
        """Owe `paper_id` (stored) to every channel among `matches`, due at `now`; returns how
        many deliveries are new. One transaction.

        At most one delivery per paper and channel, ever: a channel that already has this
        paper (in any status) gets nothing, and several matches of one channel make one
        delivery. The delivery keeps those matches as they are now (`Delivery.matched`: ids,
        queries, terms, in the order given) and remembers which subscriptions it answers."""
        ...

    def enqueue_many(self, items: list[PaperMatches], now: datetime) -> int:
        """`enqueue` for each paper of `items`, all in one transaction; returns how
        many deliveries are new in all."""
        ...

    def for_poll_writes(self) -> None:
        """This Store is the poller's writer's (its thread's, for `queue_matched` alone): SQLite
        stops checking its connection's foreign keys, which only ever find the papers of
        a batch (stored and written down unmatched before they are matched; papers are never
        deleted): a lookup in `papers` a delivery, ~8 % of the writer's instructions. Called
        once, before its first statement of a poll. PostgreSQL: nothing changes."""
        ...

    def takes_made_deliveries(self) -> bool:
        """Whether `queue_matched` can use the deliveries a batch made beforehand
        (`MatchedBatch.deliveries`, `MatchedBatch.split` given a subscription version): if
        not, the poller makes its batches without them (only `matches`)."""
        ...

    def queue_matched(self, batch: MatchedBatch, now: datetime) -> int:
        """The poll's outbox transaction (one, all or nothing): `enqueue` each paper of `batch`
        for the matches whose subscription still exists and may receive it (id at most the
        paper's `upto`; with none, created at or before its `since`), the channel being the
        subscription's, and, if the batch `settles`, `settle_unmatched` every paper of the
        batch, matched or not (a poll splits a group of papers into transactions by ranges of
        channels: only the last one settles them). Returns how many deliveries are new. The
        poller calls it from its writer thread."""
        ...

    def due_channels(self, now: datetime) -> list[DueChannel]:
        """Any thread. Channels in instant mode and not paused with pending deliveries due at
        `now`, and how many; the channel whose oldest due delivery is oldest first. It counts
        every due delivery (a big poll leaves hundreds of thousands): the bot calls it from a
        worker thread when `reads_off_loop()`."""
        ...

    def plan_burst(self, channel: ChannelRef, now: datetime, cards: int, digest_max: int) -> BurstPlan:
        """Any thread (it writes: from a worker thread it uses a connection of its own, and
        its one transaction is serialized with the loop's and other processes' as any write
        is). Decide, once, how the channel's outstanding deliveries go out; return what is due
        now. One transaction, holding the write lock from its first read (two threads or
        processes never plan the same burst twice, and a delivery written meanwhile is either
        seen by the whole decision or by none of it). The bot calls it from a worker thread
        when `reads_off_loop()`: a big burst settles thousands of deliveries as overflow.

        Deliveries are ranked, best first: the paper's Hugging Face upvotes (unknown
        last), then how strongly the channel's queries matched (distinct matched terms found
        in the title, then distinct matched terms), then the newest paper (`published`, else
        `listed_on`), then the oldest delivery. A burst begins when the channel has no digest
        outstanding and more undecided deliveries than room for cards: the best fill the
        `cards` (deliveries made cards earlier and not yet sent count against them), the next
        `digest_max` its one digest (`Delivery.in_digest`), anything further is settled as
        overflow. Until that digest is sent the burst goes on: what arrives meanwhile joins
        the digest while it has room (best first), else the overflow, never the cards. While
        the digest is being sent (claimed), nothing is due and nothing is decided: what
        arrived waits for the next burst. Decisions are never revisited. The result holds the
        due (next attempt at or before `now`) pending cards and digest members, each list
        best first, at most `cards + digest_max` in all. Its cost follows the channel's own
        outstanding deliveries, never the whole outbox."""
        ...

    def hold_back(self, channel: ChannelRef, keep: int) -> None:
        """Any thread (it writes, as `plan_burst`). Settle all but the channel's `keep` best
        pending deliveries (ranked as in `plan_burst`) as overflow (a scheduled digest holds
        `keep` papers and counts the rest). One transaction."""
        ...

    def unannounced_overflow(self, channel: ChannelRef) -> Overflow:
        """Any thread. How many of the channel's overflow deliveries no digest has counted yet,
        and the highest id among them (0 when none)."""
        ...

    def announce_overflow(self, channel: ChannelRef, up_to: int, message_id: str | None, now: datetime) -> None:
        """Record that the digest `message_id` counted the channel's unannounced overflow up
        to id `up_to`; later overflow stays unannounced. Any thread, as `lease_channel`."""
        ...

    def pending_for_channel(self, channel: ChannelRef, limit: int = 1000) -> list[Delivery]:
        """The channel's pending deliveries, due or not, best first (ranked as in
        `plan_burst`), at most `limit`."""
        ...

    def count_pending(self, channel: ChannelRef | None = None) -> int:
        """Pending deliveries of the channel (of every channel, when None), due or not."""
        ...

    def last_sent_at(self, channel: ChannelRef | None = None) -> datetime | None:
        """When a delivery to the channel (to any, when None) was last marked sent."""
        ...

    def claim_delivery(self, delivery_id: int, now: datetime | None = None) -> bool:
        """pending -> sending, counting an attempt and remembering `now` as `claimed_at` and
        `live_sender_id()` as `claimed_by`. Atomic: False, nothing changed, if it was not
        pending (another sender claimed it); concurrent claimers never both get True. Any
        thread, as `lease_channel` (the bot claims each card from a worker thread)."""
        ...

    def unfinished_deliveries(self) -> list[Delivery]:
        """Deliveries in 'sending' (oldest first), with `claimed_at` and `claimed_by` (None if
        claimed before claimers were recorded): those whose send may or may not have gone
        out. A row is settled (`mark_sent` or `release_delivery`) only by its claimer (after
        `adopt_orphans`, the adopter), or, when `claimed_by` is None, the sender lease's holder."""
        ...

    def release_delivery(self, delivery_id: int) -> None:
        """sending -> pending, due as it was, and the interrupted attempt not counted (a
        crash is not the paper's fault). Nothing happens if it is not 'sending'. Any thread."""
        ...

    def mark_sent(self, delivery_id: int, message_id: str | None, now: datetime) -> None:
        """-> sent (from any status), with the platform's message id and `now`; its error is
        cleared. Any thread, as `lease_channel` (the bot records each outcome from a worker thread)."""
        ...

    def reschedule_delivery(self, delivery_id: int, error: str, retry_at: datetime) -> None:
        """A failed attempt to try again: -> pending, due at `retry_at`, `error` kept (cut to 500
        characters). Any thread, as `mark_sent`."""
        ...

    def give_up_delivery(self, delivery_id: int, error: str) -> None:
        """A failed attempt that ends it: -> failed, never due again, `error` kept (cut to 500
        characters). Any thread, as `mark_sent`."""
        ...

    def delivery_subscriptions(self, delivery_id: int) -> list[SubscriptionRef]:
        """The subscriptions the delivery answers that still exist, with their current queries, by id."""
        ...

    def delivery_counts(self) -> OutboxCounts:
        """Deliveries by status, of every channel."""
        ...

    # ---- follow-ups in the thread (storage/followups.py) -------------------------------------
    # `add_papers` queues them, in its transaction: for a paper stored before, each event
    # (github unset -> set; a higher arXiv version, when the stored one is known or the
    # listing is an arXiv replacement; 50, 100, 200 upvotes crossed, the highest crossed in
    # one step sent and the lower ones settled as superseded) is one row per card that
    # posted the paper alone, within the last 60 days, in a channel with follow-ups on
    # (a card still being sent counts). Never two rows for one card and one event.

    def followups_enabled(self, channel: ChannelRef) -> bool:
        """Whether the channel gets follow-ups; True when it never said."""
        ...

    def set_followups(self, channel: ChannelRef, enabled: bool, now: datetime) -> bool:
        """Turn the channel's follow-ups on or off; returns whether they were on before."""
        ...

    def due_followups(self, now: datetime, limit: int) -> list[FollowUp]:
        """At most `limit` pending follow-ups due now, oldest first, of channels not paused.
        Settles as skipped, rather than return, those of a channel that turned follow-ups
        off and those whose card did not go out alone (failed, sent again, in a digest); one
        whose card is still being sent waits."""
        ...

    def claim_followup(self, followup_id: int, now: datetime) -> bool:
        """pending -> sending (its `claimed_at` = `now`, `claimed_by` = `live_sender_id()`);
        False if it was not pending (someone else claimed it). Any thread, as `claim_delivery`."""
        ...

    def unfinished_followups(self) -> list[FollowUp]:
        """Follow-ups in 'sending', oldest first, with `claimed_at` and `claimed_by`; settled as
        `unfinished_deliveries` says."""
        ...

    def release_followup(self, followup_id: int) -> None:
        """sending -> pending, the interrupted attempt not counted: nothing says it went out. Any thread."""
        ...

    def mark_followup_sent(self, followup_id: int, message_id: str | None, now: datetime) -> None:
        """It went out: sent, with the reply's message id. Any thread, as `mark_sent`."""
        ...

    def reschedule_followup(self, followup_id: int, error: str, retry_at: datetime) -> None:
        """A failed attempt to try again: back to pending until `retry_at`. Any thread."""
        ...

    def give_up_followup(self, followup_id: int, error: str) -> None:
        """A failed attempt that ends it: failed for good. Any thread."""
        ...

    # ---- channels ---------------------------------------------------------------------------

    def channel_settings(self, channel: ChannelRef) -> ChannelSettings:
        """The channel's settings; `ChannelSettings(channel)` (the defaults) if never saved."""
        ...

    def save_channel_settings(self, settings: ChannelSettings, now: datetime) -> ChannelSettings:
        """Write all of `settings` (insert or replace), `updated_at` = `now`; return what was
        saved. `paused_reason` is kept only while paused."""
        ...

    def update_channel_settings(self, channel: ChannelRef, now: datetime, **changes: Any) -> SettingsChange:
        """Change these fields of the channel's settings (names of ChannelSettings fields),
        keeping the others as they are in the database at that moment, not as the caller read
        them earlier: read and write are one transaction, so commands changing different
        settings at once both stay. Returns the settings before and after."""
        ...

    def digest_channels(self) -> list[ChannelSettings]:
        """Settings of the channels in daily or weekly mode that are not paused, by channel key."""
        ...

    def all_channel_settings(self) -> list[ChannelSettings]:
        """Every saved channel's settings, by channel key."""
        ...

    # ---- the per-user command rate limit ----------------------------------------------------

    def record_command(self, user: str, now: datetime, limit: int) -> float:
        """Any thread (it writes, as `plan_burst`). Count a command by `user` unless they ran
        `limit` in the 60 seconds before `now`. The bot calls it from a worker thread when
        `reads_off_loop()`: its write waits its turn behind a poll's writes, which the loop
        must not.

        Returns 0.0 when counted, else the seconds (> 0) until the oldest of those leaves
        the window; nothing is recorded then. Atomic across processes: every process counts
        the same commands. Old records are pruned as it goes."""
        ...

    # ---- source health and conditional requests ---------------------------------------------

    def record_source_success(self, source: str, now: datetime, count: int) -> int:
        """A poll of `source` succeeded with `count` papers; returns how many failures in a
        row it ends (0 if none). Clears the planned next poll."""
        ...

    def record_source_failure(self, source: str, now: datetime, error: str) -> int:
        """A poll of `source` failed; returns the failures in a row so far, this one included.
        Clears the planned next poll."""
        ...

    def set_source_next_poll(self, source: str, when: datetime) -> None:
        """When `run` will next poll `source` (status shows it)."""
        ...

    def source_state(self, source: str) -> SourceStatus | None:
        """The source's health record, None if it was never polled."""
        ...

    def source_validators(self, source: str) -> Validators:
        """The ETag / Last-Modified of the source's last stored full response (empty Validators if none)."""
        ...

    def save_source_validators(self, source: str, validators: Validators) -> None:
        """Keep these validators for the next conditional request to `source`."""
        ...

    # ---- people: --me subscriptions --------------------------------------------------------

    def add_subscriber(self, subscription_id: int, user_id: str, now: datetime) -> bool:
        """Mention `user_id` (a platform user id) on the cards of this subscription (`subscribe
        --me`). False, nothing changed, when they already are or the subscription does not
        exist. Removing the subscription removes its people."""
        ...

    def remove_subscriber(self, subscription_id: int, user_id: str) -> bool:
        """Stop mentioning `user_id` on this subscription's cards; False if they were not."""
        ...

    def subscribers(self, subscription_ids: list[int]) -> list[str]:
        """The user ids to mention on a card answering these subscriptions: each once, in the
        order they subscribed. Only these are ever pinged."""
        ...

    def own_subscriptions(self, platform: str, user_id: str, limit: int = 100) -> list[Subscription]:
        """The subscriptions, in channels of `platform`, that `user_id` created or follows with
        --me (their direct-message feed included), by id, with `delivered` counts; at most `limit`."""
        ...

    # ---- feedback: Save / Not relevant, reading lists, the "most saved" digest ------------------

    def record_feedback(self, user_id: str, channel: ChannelRef, paper_id: str, kind: str,
                        now: datetime) -> Feedback:
        """Record that `user_id` gave feedback `kind` ("save" or "not_relevant") on the stored
        paper `paper_id` in `channel` at `now`. Once per person, channel, paper and kind: the
        same press again changes nothing and comes back with `created` False and its first time."""
        ...

    def remove_feedback(self, user_id: str, channel: ChannelRef | None, paper_id: str, kind: str) -> int:
        """Take back that person's feedback of that kind on the paper, in `channel` (in every
        channel when None); how many records went."""
        ...

    def saved_papers(self, *, channel: ChannelRef | None = None, user_id: str | None = None,
                     platform: str | None = None, since: datetime | None = None, limit: int = 20,
                     most_saved: bool = False) -> list[SavedPaper]:
        """Saved papers, each once, at most `limit`: those saved in `channel`, by `user_id`,
        in channels of `platform`, at or after `since` (each filter when given). Newest save
        first; with `most_saved`, most people first, then newest. `saves` counts the people
        who saved it within the filters; `saved_at` is the newest such save."""
        ...

    def channel_feedback(self, channel: ChannelRef, limit: int = 1000) -> ChannelFeedback:
        """The paper ids the channel's people saved, and those they marked not relevant, each
        once, newest first, at most `limit` of each."""
        ...

    def delivered_matches(self, channel: ChannelRef, paper_id: str) -> list[Match]:
        """Why the paper was delivered to the channel (the delivery's matches as they were
        then); [] if it never was."""
        ...

    def most_saved_schedule(self, channel: ChannelRef) -> MostSavedSchedule | None:
        """The channel's weekly "most saved" digest, None when it has none."""
        ...

    def set_most_saved_schedule(self, channel: ChannelRef, schedule: MostSavedSchedule | None,
                                now: datetime) -> MostSavedSchedule | None:
        """Turn the channel's weekly "most saved" digest on (or change it) or, with None, off;
        returns what it was. The schedule counts from its `last_sent_at`, `now` if None (never
        a digest for slots already past)."""
        ...

    def most_saved_schedules(self) -> list[MostSavedSchedule]:
        """Every channel's "most saved" digest, by channel key."""
        ...

    def claim_most_saved(self, channel: ChannelRef, slot: datetime) -> bool:
        """Take the digest of `slot` for sending: True for exactly one caller (any process),
        when the schedule is on and its last slot is before `slot`; that is recorded at once,
        so the slot is never posted twice (nor again, if the post then fails)."""
        ...

    def unclaim_most_saved(self, channel: ChannelRef, slot: datetime, previous: datetime) -> bool:
        """Give back the claim of `slot` (its post failed for a while: a rate limit, an outage)
        so that a later sweep posts it: the last slot goes back to `previous`, when it is still
        `slot`. True if it was given back."""
        ...

    # ---- Slack distribution (the OAuth install flow) --------------------------------------------
    # Tokens arrive sealed (encrypted) in SlackInstallation.sealed: storage keeps the bytes as
    # given and never sees a token in clear. A Slack channel belongs to one workspace, recorded
    # when a command, event or button comes from it (`set_slack_channel_team`); an uninstall
    # pauses the workspace's channels (paused_reason SLACK_UNINSTALLED), a reinstall resumes them.

    def save_slack_installation(self, installation: SlackInstallation, now: datetime) -> list[ChannelRef]:
        """Store a workspace's installation (replacing the one it had, by team_id), and resume
        its channels that its uninstall paused (paused_reason SLACK_UNINSTALLED; a channel paused
        by hand or by the platform stays paused): returns those, by key. One transaction."""
        ...

    def slack_installation(self, team_id: str) -> SlackInstallation | None:
        """The workspace's installation, None when it has none (never installed, or removed)."""
        ...

    def slack_installations(self) -> list[SlackInstallation]:
        """Every installation, by team_id."""
        ...

    def remove_slack_installation(self, team_id: str, now: datetime) -> list[ChannelRef]:
        """Forget the workspace's installation (its tokens with it) and pause each of its channels
        not paused already, with paused_reason SLACK_UNINSTALLED: their deliveries wait in the
        outbox (pending), neither sent nor failed. Returns the channels paused, by key. Done for a
        workspace without an installation too (a repeated uninstall event). One transaction."""
        ...

    def issue_slack_oauth_state(self, state: str, expires_at: datetime, now: datetime) -> None:
        """Any thread. Remember an OAuth `state` handed to a browser by /slack/install, good until
        `expires_at`; states expired before `now` are dropped."""
        ...

    def consume_slack_oauth_state(self, state: str, now: datetime) -> bool:
        """Any thread. True exactly once for a state issued and not expired at `now` (any process); it is
        gone afterwards, whatever the answer. False for an unknown, used or expired one."""
        ...

    def set_slack_channel_team(self, channel: ChannelRef, team_id: str) -> bool:
        """Any thread. Record that the Slack channel is in workspace `team_id` (a later team replaces it);
        True when that changed what was recorded. Cheap when nothing changes (no write)."""
        ...

    def slack_channel_team(self, channel: ChannelRef) -> str | None:
        """Any thread. The workspace recorded for the Slack channel, None when none is."""
        ...
