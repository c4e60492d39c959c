"""Value objects: the only things that cross module seams.

No Slack dict or discord.py object ever appears here; adapters translate these
into platform payloads and platform events into these.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import partial
from itertools import accumulate, chain
from json.encoder import encode_basestring, encode_basestring_ascii
from operator import itemgetter
from typing import Callable, Iterable, Mapping, NamedTuple, Union

PLATFORMS = ("console", "slack", "discord")


@dataclass(frozen=True)
class Paper:
    """One paper, keyed by its version-less arXiv id (the same key from every source)."""

    id: str
    title: str
    summary: str
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    source: str = ""  # the source's one name ("huggingface", "arxiv"): where this record was listed
    published: datetime | None = None  # arXiv submission/publication time
    listed_on: date | None = None  # the day of the listing it came from
    upvotes: int | None = None  # Hugging Face upvotes, None when unknown
    thumbnail: str | None = None
    github: str | None = None
    project_page: str | None = None
    ai_summary: str | None = None
    organization: str | None = None  # Hugging Face organization, "Full Name (name)"
    is_update: bool = False  # arXiv "replace" announcement: an old paper revised
    comments: int | None = None  # Hugging Face comment count (numComments), None when unknown
    version: int | None = None  # the arXiv version listed (the N of vN), None when the source does not say

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.id}"

    @property
    def hf_url(self) -> str:
        return f"https://huggingface.co/papers/{self.id}"


@dataclass(frozen=True)
class Validators:
    """What a conditional GET sends back: the ETag / Last-Modified of the last stored listing.

    Passed into a source's fetch and returned with its Listing; the poller stores the
    returned ones only once what they describe is stored. Empty ones are never sent."""

    etag: str | None = None
    last_modified: str | None = None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


@dataclass(frozen=True)
class Listing:
    """What one fetch of a source's listing gave: its papers (None when the server answered
    304, nothing changed), the validators to send next time, and why items were skipped."""

    papers: tuple[Paper, ...] | None
    validators: Validators = Validators()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceStatus:
    """A source's recorded health (storage's `source_state` row)."""

    source: str
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    last_count: int | None = None
    next_poll: datetime | None = None
    validators: Validators = Validators()


CHANNEL_ID_MAX = 80


def _quoted(text: str, limit: int = 60) -> str:
    """Typed text quoted back in an error: repr'd (control characters shown), and bounded."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"


@dataclass(frozen=True)
class ChannelRef:
    """A chat channel: `console:NAME`, `slack:CHANNEL_ID` or `discord:CHANNEL_ID`."""

    platform: str
    channel_id: str

    @property
    def key(self) -> str:
        """The storage key; one format, defined once."""
        return f"{self.platform}:{self.channel_id}"

    @classmethod
    def from_key(cls, key: str) -> ChannelRef:
        """The inverse of `key`, for what storage wrote (user text goes through `parse`)."""
        platform, _, channel_id = key.partition(":")
        return cls(platform, channel_id)

    @classmethod
    def parse(cls, text: str) -> ChannelRef:
        platform, sep, channel_id = text.strip().partition(":")
        platform = platform.lower()
        if not sep or platform not in PLATFORMS or not channel_id:
            raise ValueError(
                f"bad channel {_quoted(text)}: use console:NAME, slack:CHANNEL_ID or discord:CHANNEL_ID"
            )
        if len(channel_id) > CHANNEL_ID_MAX:
            raise ValueError(f"bad channel id {_quoted(channel_id)}: at most {CHANNEL_ID_MAX} characters")
        if not all(c.isalnum() or c in "-_." for c in channel_id):
            raise ValueError(f"bad channel id {_quoted(channel_id)}: letters, digits, '-', '_', '.' only")
        if platform == "discord" and not (channel_id.isascii() and channel_id.isdecimal()):
            # Every send would fail (the id goes into the API's URL as a number), each with a traceback.
            raise ValueError(f"bad channel id {_quoted(channel_id)}: a Discord channel id is a number "
                             "(Developer Mode, then Copy Channel ID)")
        return cls(platform, channel_id)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Subscription:
    id: int
    channel: ChannelRef
    query: str  # normalized form, as the user is shown it
    created_by: str
    created_at: datetime
    delivered: int = 0
    # The query's compiled form as storage keeps it (bot.matching.compile_query), when read
    # for the matching engine; None elsewhere. Not part of the value: equal subscriptions
    # are equal whatever their compiled forms.
    compiled: bytes | None = field(default=None, repr=False, compare=False)


def stored_subscription(id: int, channel: ChannelRef, query: str, created_by: str,
                        created_at: datetime, delivered: int, compiled: bytes | None) -> Subscription:
    """`Subscription(id, channel, ...)`, the same value in the same layout, made faster: for
    storage reading every subscription at the first index load (100,000 rows). The frozen
    dataclass's `__init__` sets each field through `object.__setattr__` looked up anew
    (`__dataclass_builtins_object__.__setattr__`); this calls it directly. Not setting
    `__dict__` whole, which was as fast but gave each object a dict of its own (272 bytes)
    where the dataclass keeps its fields inline. Keep the fields as they are above."""
    sub = _new(Subscription)
    _setattr(sub, "id", id)
    _setattr(sub, "channel", channel)
    _setattr(sub, "query", query)
    _setattr(sub, "created_by", created_by)
    _setattr(sub, "created_at", created_at)
    _setattr(sub, "delivered", delivered)
    _setattr(sub, "compiled", compiled)
    return sub


_new = object.__new__
_setattr = object.__setattr__


@dataclass(frozen=True)
class SubscriptionRef:
    """A subscription named by id and (current) query: what a card offers to unsubscribe or mute."""

    id: int
    query: str


@dataclass(frozen=True)
class Subscribed:
    """What `add_subscription` did: `created` False when the channel already had this query
    (`subscription` is that one) or was at its limit (`subscription` is None)."""

    subscription: Subscription | None
    created: bool


@dataclass(frozen=True)
class SubscriptionChanges:
    """Subscriptions added or changed after a version, and the newest version among all."""

    subscriptions: list[Subscription]
    version: int


class StoredQuery(NamedTuple):
    """A subscription's id, stored query and channel key (`StoreContract.subscription_queries`)."""

    id: int
    query: str
    channel: str  # ChannelRef.key


class Match(NamedTuple):
    """One subscription matching one paper, with the terms that made it match.

    A NamedTuple rather than a dataclass: the engine makes one per match, hundreds per
    paper, and a tuple is several times cheaper to create.
    """

    subscription_id: int
    channel: ChannelRef
    query: str
    terms: tuple[str, ...]


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class Card:
    """A platform-neutral paper card; texts are plain and already bounded by cards.py."""

    paper_id: str
    title: str
    url: str
    authors: str
    body: str
    links: tuple[Link, ...] = ()
    upvotes: int | None = None
    reason: str | None = None  # why it matched, e.g. '#1 `diffusion`: diffusion in title' (cards.why_matched)
    thumbnail: str | None = None
    source: str = ""
    subscriptions: tuple[SubscriptionRef, ...] = ()  # the subscriptions it answers
    categories: tuple[str, ...] = ()
    organization: str | None = None  # Hugging Face organization, as a label
    listed_on: date | None = None  # the day of the listing it came from
    comments: int | None = None  # Hugging Face comments
    body_label: str = ""  # what `body` is when it is not the abstract: "AI summary"
    snippet: str | None = None  # the abstract's words around the matched terms the card does not show
    project_page: str | None = None  # also among `links`; Slack shows it in the facts line
    mentions: tuple[str, ...] = ()  # user ids of the people who subscribed with --me: the only ones pinged


DIGEST_MODES = ("instant", "daily", "weekly")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ChannelSettings:
    """How a channel receives papers: instant cards or a digest at a local time; paused or not."""

    channel: ChannelRef
    mode: str = "instant"  # instant | daily | weekly
    digest_time: str = "09:00"  # HH:MM, local to `timezone`
    digest_day: str = "mon"  # for weekly digests
    timezone: str = "UTC"
    paused: bool = False
    paused_reason: str | None = None  # set when the platform refused the channel
    last_digest_at: datetime | None = None  # when the previous digest went out (or was due)
    updated_at: datetime | None = None

    def describe(self) -> str:
        if self.mode == "daily":
            text = f"a daily digest at {self.digest_time} ({self.timezone})"
        elif self.mode == "weekly":
            text = f"a weekly digest on {self.digest_day.title()} at {self.digest_time} ({self.timezone})"
        else:
            text = f"instant cards (time zone {self.timezone})"
        if self.paused:
            text += f", paused ({self.paused_reason})" if self.paused_reason else ", paused"
        return text


@dataclass(frozen=True)
class Digest:
    """Many matched papers in one message."""

    channel: ChannelRef
    title: str
    cards: tuple[Card, ...]
    note: str = ""  # shown after the papers: how many more matched than it lists
    order: str = ""  # one line under the title: how the papers are ordered
    mentions: tuple[str, ...] = ()  # user ids of the --me subscribers of its papers: the only ones pinged


@dataclass(frozen=True)
class SettingsChange:
    """A channel's settings just before and just after one change."""

    before: ChannelSettings
    after: ChannelSettings


@dataclass(frozen=True)
class Delivery:
    """One outbox row: a paper owed to a channel."""

    id: int
    paper_id: str
    channel: ChannelRef
    matched: tuple[Match, ...] = ()  # why: the channel's subscriptions that matched, as they were then
    attempts: int = 0
    in_digest: bool = False  # past its burst's cards: goes out in the burst's one digest, never as a card
    claimed_at: datetime | None = None  # when its last send began (None if never claimed)
    claimed_by: str | None = None  # in 'sending' (unfinished_deliveries): the claimer's Store.sender_id


@dataclass(frozen=True)
class DueChannel:
    """A channel in instant mode, not paused, with `due` deliveries due now."""

    channel: ChannelRef
    due: int


@dataclass(frozen=True)
class BurstPlan:
    """What of a channel's burst is due now, best first (most upvoted, strongest match,
    newest): its cards, and its digest's papers."""

    cards: list[Delivery]
    digest: list[Delivery]


@dataclass(frozen=True)
class Overflow:
    """A channel's overflow that no digest has mentioned yet: how many, and the highest id."""

    count: int
    up_to: int


@dataclass(frozen=True)
class OutboxCounts:
    """Outbox rows by status."""

    pending: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    overflow: int = 0  # settled without being posted: counted in a burst's digest
    unsubscribed: int = 0  # settled without being posted: every subscription it answered was removed first


@dataclass(frozen=True)
class PaperSnapshot:
    """What of a stored paper a later listing may change, to see whether it did."""

    id: str
    upvotes: int | None
    organization: str | None
    first_seen: datetime
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnmatchedPaper:
    """A paper a poll stored (or found changed) and has not matched yet: `since`, only
    subscriptions that existed then may receive it (when it was first stored)."""

    paper: Paper
    since: datetime
    # A paper a listing brought for the first time: the newest subscription id when it was
    # stored. Those up to it receive it (they were committed before it: a subscribe during a
    # poll gets every paper stored after it, and its --backfill sees every one stored before).
    # None (a known paper re-checked): the subscriptions created by `since`.
    upto: int | None = None


@dataclass(frozen=True)
class PaperMatches:
    """One paper and the matches to queue it for (`StoreContract.enqueue_many`)."""

    paper_id: str
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class MatchedBatch:
    """Papers matched by a poll and their matches, for one transaction of the outbox
    (`StoreContract.queue_matched`), encoded once by the thread that matched them: the
    thread that writes only runs SQL, which gives the GIL up.

    `papers`: `[[paper id, since (UTC, ISO seconds), upto or null], ...]`, as
    `UnmatchedPaper` has them (who may receive the paper).
    `matches`: a paper's entries, in the order of `papers`: `[[index into papers, delivery,
    delivery, ...], ...]`, a delivery per channel the paper matched, in the order given. A
    delivery is one match, `[subscription id, query, [terms]]`, when it is the channel's only
    match and its terms are distinct (as a rule: the store queues it as it is, and counts its
    strength in its JSON text); else a list of them, the channel's matches in the order given
    (the store groups them and counts distinct terms). No channel: it is the subscription's
    own, read where it is stored.
    `rows`: the matches in `matches`.
    `settles`: whether this transaction takes `papers` off the unmatched list. A poll splits
    a group of papers' matches into transactions by ranges of channels (`split`); only the
    last one settles the group's papers, so a crash in between leaves them all written down.

    Made with a subscription `version` (`split`), the batch also holds its deliveries as
    the store writes them (`deliveries`), for the papers with an `upto`: flat, four values
    a delivery, `[paper id, channel key, matched (JSON text), strength, ...]`, in the order
    the store would queue them from `matches`, with only the matches of subscriptions up to
    the paper's `upto`. They hold while the subscriptions are as they were at `version`
    (every subscription the engine matched exists, with its channel): a store that finds
    the version unchanged under its write lock inserts them as they are, plus `recheck`
    (`matches`' entries of the papers without an `upto`, read as `matches` is); otherwise it
    reads `matches`, made then (most polls never need it).
    """

    papers: str
    paper_ids: frozenset[str]
    rows: int  # matches in `matches`
    settles: bool = True
    version: int | None = None
    deliveries: list | None = None
    recheck: str = "[]"
    encoded: str | Callable[[], str] = field(default="[]", repr=False, compare=False)

    @property
    def matches(self) -> str:
        return self.encoded if isinstance(self.encoded, str) else self.encoded()

    @classmethod
    def encode(cls, papers: list[UnmatchedPaper], matches: list[tuple[Match, ...]],
               version: int | None = None) -> MatchedBatch:
        """`matches[i]`: what `papers[i]` matched (empty: the paper is settled, nothing
        queued). One transaction for all of them."""
        return cls.split(papers, matches, 0, version)[0]

    @classmethod
    def split(cls, papers: list[UnmatchedPaper], matches: list[tuple[Match, ...]], rows: int,
              version: int | None = None) -> list[MatchedBatch]:
        """`encode`, cut into transactions of about `rows` matches (0: one), each for a range
        of channel keys, in key order; the last one settles every paper. With `version`
        (the subscription version the matches were made at, exactly), each also holds its
        `deliveries`, and `matches` is made only when a store asks for it.

        The outbox's index by channel (`deliveries_outbox`) takes a page a delivery when rows
        come in paper order; a range of channels touches a slice of it, and a transaction
        writes each page it touches once, however many of its rows land there
        (docs/benchmarks.md, "outbox")."""
        # Each match's channel key, a paper's in `keyed`: a ChannelRef's key made once, by its
        # id (the matches hold them alive; a subscription's matches share one), the rest in C.
        channels = list(map(_CHANNEL, chain.from_iterable(matches)))
        at = list(map(id, channels))
        key_of = {i: channel.key for i, channel in dict(zip(at, channels, strict=True)).items()}
        keys = list(map(key_of.__getitem__, at))
        counts = Counter(keys)
        ends = list(accumulate(map(len, matches)))
        keyed = list(map(keys.__getitem__, map(slice, [0, *ends[:-1]], ends)))
        ranges = _channel_ranges(counts, rows)
        count = max(ranges.values(), default=0) + 1
        sizes = [0] * count
        for key, n in counts.items():
            sizes[ranges[key]] += n
        facts = json.dumps([[u.paper.id, u.since.astimezone(timezone.utc).isoformat(timespec="seconds"), u.upto]
                            for u in papers])
        ids = frozenset(u.paper.id for u in papers)
        last = count - 1
        if version is None:
            nested = _nested(matches, keyed, ranges, count, range(len(matches)))
            return [cls(facts, ids, sizes[n], n == last, encoded=nested[n]) for n in range(count)]
        rows_of, since = _deliveries(papers, matches, keyed, ranges, count)
        recheck = _nested(matches, keyed, ranges, count, since)
        later = _Later(matches, keyed, ranges, count)
        return [cls(facts, ids, sizes[n], n == last, version, rows_of[n], recheck[n], partial(later, n))
                for n in range(count)]


_CHANNEL = itemgetter(1)  # a Match's channel


class _Later:
    """A group's `MatchedBatch.matches`, made for all of its transactions the first time one
    is asked for (a store that cannot use the deliveries made beforehand)."""

    def __init__(self, matches: list[tuple[Match, ...]], keyed: list[list[str]], ranges: dict[str, int],
                 count: int):
        self._args: tuple | None = (matches, keyed, ranges, count)
        self._made: list[str] = []

    def __call__(self, n: int) -> str:
        if self._args is not None:
            matches, keyed, ranges, count = self._args
            self._made = _nested(matches, keyed, ranges, count, range(len(matches)))
            self._args = None
        return self._made[n]


def _nested(matches: list[tuple[Match, ...]], keyed: list[list[str]], ranges: dict[str, int], count: int,
            which: Iterable[int]) -> list[str]:
    """`MatchedBatch.matches` of each range, for the papers `which` (indices, in order)."""
    entries: list[list[list]] = [[] for _ in range(count)]
    for i in which:
        found, mine = matches[i], keyed[i]
        if not found:
            continue
        here: dict[int, list] = {}  # range -> this paper's entry in it
        if len(set(mine)) == len(mine):  # a match a channel: a delivery a match
            for (sub, _, query, terms), key in zip(found, mine, strict=True):
                n = ranges[key]
                entry = here.get(n)
                if entry is None:
                    entry = here[n] = [i]
                entry.append([sub, query, terms] if len(terms) < 2 or len(set(terms)) == len(terms)
                             else [[sub, query, terms]])
        else:
            channels: dict[str, list] = {}  # key -> the channel's matches (a delivery)
            for match, key in zip(found, mine, strict=True):
                one = [match[0], match[2], match[3]]
                many = channels.get(key)
                if many is not None:
                    many.append(one)
                    continue
                many = channels[key] = [one]
                entry = here.get(ranges[key])
                if entry is None:
                    entry = here[ranges[key]] = [i]
                entry.append(many)
            for entry in here.values():
                for n, many in enumerate(entry[1:], 1):
                    if len(many) == 1 and len(set(many[0][2])) == len(many[0][2]):
                        entry[n] = many[0]
        for n, entry in here.items():
            entries[n].append(entry)
    return [json.dumps(entry) for entry in entries]


def _deliveries(papers: list[UnmatchedPaper], matches: list[tuple[Match, ...]], keyed: list[list[str]],
                ranges: dict[str, int], count: int) -> tuple[list[list], list[int]]:
    """`MatchedBatch.deliveries` of each range, and the papers without an `upto` (indices).

    A delivery's `matched` is the text SQLite writes for it (storage/deliveries.py):
    `[{"id":1,"query":"...","terms":["..."]},...]`, compact, the query as `json_object`
    renders a text (non-ASCII as it is), the terms as `json.dumps` gave them (ASCII); its
    strength is `match_strength`'s (a delivery of one match with distinct terms: its terms
    ending with " in title" are the texts ` in title"` in its JSON, less the query's own:
    a quote inside a string is escaped). A paper with a NUL in a query or a term goes with
    those without an `upto` (SQLite's JSON functions cut the text at it: the store's SQL
    makes those rows)."""
    out: list[list] = [[] for _ in range(count)]
    place_of = {key: out[n] for key, n in ranges.items()}  # a channel's range's rows
    since: list[int] = []
    text, terms_text = encode_basestring, encode_basestring_ascii
    for i, (unmatched, found, mine) in enumerate(zip(papers, matches, keyed, strict=True)):
        if not found:
            continue
        upto = unmatched.upto
        if upto is None:
            since.append(i)
            continue
        paper_id = unmatched.paper.id
        marks = list(map(len, out))
        nul = False
        many: dict[str, list | None] | None = None  # the channels matched more than once (a delivery of several)
        if len(set(mine)) != len(mine):
            seen: set[str] = set()
            many = {}
            for key in mine:
                if key in seen:
                    many[key] = None
                else:
                    seen.add(key)
        for (sub, _, query, terms), key in zip(found, mine, strict=True):
            if sub > upto:  # committed after the paper was stored: not for it
                if many is not None and many.get(key, ()) is None:
                    # A channel's several matches are one delivery where its first match is,
                    # as the SQL queues it, even when that one is not for the paper.
                    place = place_of[key]
                    many[key] = [place, len(place), [], set()]
                    place.extend((paper_id, key, None, None))
                continue
            n = len(terms)
            if n == 1:
                listed = terms_text(terms[0])
            elif n == 2:
                listed = f"{terms_text(terms[0])},{terms_text(terms[1])}"
            else:
                listed = ",".join(map(terms_text, terms))
            # `matched` of the match alone, brackets and all (a channel's several matches take
            # it without them); an f-string, not %-formatting, which parsed its format a row.
            fact = f'[{{"id":{sub},"query":{text(query)},"terms":[{listed}]}}]'
            if "\\u0000" in fact:
                nul = True
            if many is None or key not in many:
                # The strength as the SQL counts it in the JSON text (` in title"` less the
                # query's own), that is the terms' ` in title"` (a quote in a string is
                # escaped: each one ends a term); fewer than 999 terms, no cap applies.
                if n < 999 and (n < 2 or (terms[0] != terms[1] if n == 2 else len(set(terms)) == n)):
                    strength = 1000 * listed.count(' in title"') + n
                else:
                    strength = terms_strength(set(terms))
                place_of[key].extend((paper_id, key, fact, strength))
                continue
            slot = many[key]
            if slot is None:  # its place: where the channel's first match is
                place = place_of[key]
                many[key] = [place, len(place), [fact[1:-1]], set(terms)]
                place.extend((paper_id, key, None, None))
            else:
                slot[2].append(fact[1:-1])
                slot[3].update(terms)
        if nul:  # its rows are left to the store's SQL
            for place, mark in zip(out, marks, strict=True):
                del place[mark:]
            since.append(i)
            continue
        if many:
            empty = []  # (none of the channel's matches is for the paper)
            for slot in many.values():
                if slot is not None:
                    place, at, facts, all_terms = slot
                    if not facts:
                        empty.append(slot)
                        continue
                    place[at + 2] = "[" + ",".join(facts) + "]"
                    place[at + 3] = terms_strength(all_terms)
            for place, at, _, _ in sorted(empty, key=itemgetter(1), reverse=True):
                del place[at:at + 4]
    return out, since


def terms_strength(terms: set[str]) -> int:
    """How strongly a channel's queries matched a paper, for ranking (higher is stronger), out
    of the distinct terms they matched: 1000 x those found in the title, plus all of them
    (storage.deliveries.match_strength, of Matches)."""
    return 1000 * min(sum(term.endswith(" in title") for term in terms), 999) + min(len(terms), 999)


def _channel_ranges(counts: dict[str, int], rows: int) -> dict[str, int]:
    """Channel key -> the number of its range: consecutive keys, about `rows` of their
    `counts` a range; 0 for all when `rows` is 0."""
    if rows <= 0:
        return dict.fromkeys(counts, 0)
    ranges, n, filled = {}, 0, 0
    for key in sorted(counts):
        if filled >= rows:
            n, filled = n + 1, 0
        ranges[key] = n
        filled += counts[key]
    return ranges


@dataclass(frozen=True)
class ThreadRef:
    """A message the bot posted, as a thread to reply in: Slack's ts, Discord's message id."""

    channel: ChannelRef
    message_id: str


@dataclass(frozen=True)
class ThreadReply:
    """A short reply in a thread: plain `text` (the adapter escapes it) and an optional link.

    `key` names it among the bot's own replies in that thread (`Adapter.find_in_thread`),
    the same for every attempt: after a crash mid-send it tells one that went out."""

    key: str
    text: str
    link: Link | None = None


FOLLOWUP_KINDS = ("code", "version", "upvotes")


@dataclass(frozen=True)
class FollowUp:
    """One follow-up outbox row: news about a paper (code, a new arXiv version, an upvote
    threshold crossed), owed as one reply in the thread of the card that posted it."""

    id: int
    paper_id: str
    thread: ThreadRef
    kind: str  # FOLLOWUP_KINDS
    value: int = 0  # the version (version), the threshold (upvotes); 0 for code
    url: str | None = None  # the code's address (code)
    attempts: int = 0
    claimed_at: datetime | None = None  # when its last send began (None if never claimed)
    claimed_by: str | None = None  # in 'sending' (unfinished_followups): the claimer's Store.sender_id


@dataclass(frozen=True)
class PostResult:
    ok: bool
    message_id: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None  # seconds the platform asked us to wait (HTTP 429)
    channel_gone: bool = False  # archived, deleted, or the bot was removed: pause the channel
    platform_wide: bool = False  # retry_after holds for every channel of the platform (a refused token)


@dataclass(frozen=True)
class PreviewCandidates:
    """What `preview` reads: the listed papers of a window that may match a query (newest
    first; replacements left out) and how many listed papers the window holds in all.
    `exact`: the store matched the query exactly, and `papers` are the newest of `count`
    matches (when not, `papers` are every candidate, and `count` their number)."""

    papers: list[Paper]
    stored: int
    count: int
    exact: bool = False


ArgValue = Union[str, int]


@dataclass(frozen=True)
class CommandRequest:
    """What every front-end (Slack, Discord, CLI) turns a /papers command into.

    `args` are named after the command's declared parameters (handlers.base.Param) and
    checked against them by handlers.handle. Typed front-ends (Discord options, Slack
    buttons) fill them directly; text front-ends get them from handlers.parse_text.
    """

    channel: ChannelRef
    user_id: str
    verb: str
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    can_manage: bool = True  # set by the adapter from platform permissions
    text: str = ""  # the line as typed, from text front-ends: for the length limit and logs only
    # A subscribe form's preview as its query is typed (Slack's modal): not counted against
    # commands_per_minute (the adapter runs at most one at a time per user); `preview` only.
    live_preview: bool = False


@dataclass(frozen=True)
class Reply:
    text: str
    cards: tuple[Card, ...] = field(default_factory=tuple)
    ephemeral: bool = True
    ok: bool = True
    queued: int = 0  # deliveries the command put in the outbox (e.g. --backfill): send them now
    form: SubscribeForm | None = None  # a subscribe form to show where the platform has forms (see SubscribeForm)
    actions: tuple[Action, ...] = ()  # buttons under the reply, each running a command for whoever presses it


@dataclass(frozen=True)
class QueryPreview:
    """What a query typed into the subscribe form would have matched: its parse error, or
    the query as understood, the estimate sentence and the newest matches. Texts are plain
    (the renderers escape them); `query` is as typed, bounded."""

    query: str
    normalized: str = ""  # "" when it does not parse
    error: str | None = None  # why it does not parse, e.g. "unclosed quote at column 11"
    estimate: str = ""  # "In the last 30 days it would have matched 12 of 2,000 stored papers."
    examples: tuple[Card, ...] = ()  # the newest matching papers


@dataclass(frozen=True)
class SubscribeForm:
    """The subscribe form (Slack modal, Discord modal): its words come from handlers, the
    platforms render it. A reply carries one when `subscribe` was given no query (open
    it: `ok` is False, `text` says what was missing for platforms without forms) and from
    `preview` (its `preview` filled in, to update or confirm the form)."""

    channel: ChannelRef  # where submitting subscribes
    title: str  # at most 24 characters (Slack's limit for a modal title)
    label: str  # the query field's label
    placeholder: str
    hint: str  # a short reminder of the query syntax
    submit: str  # the submit button
    max_length: int  # of the query
    waiting: str  # what the preview says before a query is typed
    query: str = ""  # the query typed so far
    preview: QueryPreview | None = None


# ---- people and feedback ----------------------------------------------------------------------

FEEDBACK_KINDS = ("save", "not_relevant")


@dataclass(frozen=True)
class Action:
    """A button that runs one command as whoever presses it (with their rights, rate limit and
    checks: what comes back from the platform is as untrusted as typed text)."""

    label: str
    verb: str
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Feedback:
    """One press of Save or Not relevant: who, where, which paper, which kind, when.
    `created` False: that person had already given this feedback on this paper there."""

    user_id: str
    channel: ChannelRef
    paper_id: str
    kind: str  # one of FEEDBACK_KINDS
    at: datetime
    created: bool = True


@dataclass(frozen=True)
class SavedPaper:
    """A paper on a reading list: when it was last saved, and by how many people (in that scope)."""

    paper: Paper
    saved_at: datetime
    saves: int = 1


@dataclass(frozen=True)
class ChannelFeedback:
    """A channel's feedback as paper ids, newest first: what its people saved, and what they
    marked not relevant (the recommendations read it)."""

    saved: tuple[str, ...] = ()
    not_relevant: tuple[str, ...] = ()


@dataclass(frozen=True)
class MostSavedSchedule:
    """A channel's weekly "most saved" digest: on `day` at `time` in the channel's time zone."""

    channel: ChannelRef
    day: str = "mon"
    time: str = "09:00"
    last_sent_at: datetime | None = None  # the slot last posted (or since when it is on)


@dataclass(frozen=True)
class SlackInstallation:
    """One Slack workspace (or Enterprise Grid organization) that installed the app through
    the OAuth flow. `sealed` holds its tokens, encrypted (Fernet) before they reach storage:
    storage never sees a token in clear. The rest is what Slack says of the installation."""

    team_id: str  # the workspace's id (T...), or the organization's (E...) for an org-wide install
    sealed: bytes  # the encrypted tokens (bot.adapters.slack_oauth seals and opens them)
    installed_at: datetime
    enterprise_id: str = ""
    team_name: str = ""
    app_id: str = ""
    bot_id: str = ""
    bot_user_id: str = ""
    bot_scopes: str = ""  # comma-separated, as Slack gives them
    installer_user_id: str = ""
    is_enterprise_install: bool = False


# Why a Slack channel is paused when its workspace uninstalled the app (or revoked its token);
# installing the app there again resumes exactly the channels paused for this reason.
SLACK_UNINSTALLED = "the Slack app was uninstalled from this workspace; installing it again resumes the channel"
