"""Test helpers: synthetic papers, a scriptable Source and Adapter, canned source responses.

The fake servers themselves live in the top-level `fakes` package (benchmarks use them too)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from bot.adapters import CommandHandler, Running
from bot.errors import SourceError
from bot.models import (
    Card,
    ChannelRef,
    Delivery,
    Digest,
    Listing,
    Paper,
    PostResult,
    ThreadRef,
    ThreadReply,
    Validators,
)
from fakes.http import Canned

FIXTURES = Path(__file__).parent / "fixtures"


def due_now(store, now, cards: int = 1000, digest_max: int = 1000) -> list[Delivery]:
    """What the dispatcher's path offers now, oldest first: every channel of `due_channels`,
    each planned with `plan_burst`. With room for all (fewer than `cards` outstanding in a
    channel) the plan decides nothing: no digest, no overflow, nothing written."""
    due: list[Delivery] = []
    for channel in store.due_channels(now):
        plan = store.plan_burst(channel.channel, now, cards, digest_max)
        due += plan.cards + plan.digest
    return sorted(due, key=lambda d: d.id)


def sql(store, text: str, params=()) -> list[tuple]:
    """A statement on the store's database, either backend: `?` placeholders (PostgreSQL's %s)."""
    if type(store).__name__ == "PgStore":
        cursor = store.db.execute(text.replace("?", "%s"), list(params))
        return list(cursor.fetchall()) if cursor.description else []
    return list(store.db.execute(text, list(params)).fetchall())


def stored(store, *papers: Paper, now: datetime = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)) -> None:
    """Store papers for deliveries to refer to (either backend)."""
    store.add_papers(list(papers), now)


def subscribed(store, channel: ChannelRef, query: str,
               now: datetime = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)) -> int:
    """A new subscription of `channel` to `query`; its id."""
    return int(store.add_subscription(channel, query, "u1", now).subscription.id)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def hf_json(name: str = "hf_daily_papers_2024-10-25.json") -> Canned:
    return Canned(body=fixture(name))


def rss(name: str = "arxiv_rss_synthetic.xml") -> Canned:
    return Canned(body=fixture(name), content_type="application/rss+xml")


def paper(paper_id: str, title: str = "A synthetic paper", summary: str = "Synthetic abstract.", **kw) -> Paper:
    """A clearly synthetic Paper for unit tests."""
    return Paper(id=paper_id, title=title, summary=summary, source=kw.pop("source", "arxiv"), **kw)


class FakeSource:
    """A scriptable Source: `.papers` to list, or `.fail_with(exc)`."""

    def __init__(self, name: str = "fake", papers: list[Paper] | None = None):
        self.name = name
        self.papers = papers or []
        self.error: Exception | None = None
        self.calls = 0
        self.seen: list[Validators] = []  # the validators each fetch was given

    def fail_with(self, error: Exception | None) -> None:
        self.error = error

    async def fetch(self, validators: Validators = Validators()) -> Listing:  # noqa: B008  (a frozen value)
        self.calls += 1
        self.seen.append(validators)
        if self.error is not None:
            raise self.error
        return Listing(tuple(self.papers), validators)


def source_error(message: str = "cannot reach http://127.0.0.1:9 (ConnectError)") -> SourceError:
    return SourceError("fake", message)


class RecordingAdapter:
    """Keeps what it was asked to post; scriptable results. A whole bot.adapters.Adapter
    (tests/test_adapters.py checks), with no front-end and no history to look in."""

    def __init__(self, platform: str = "console", results: list[PostResult] | None = None):
        self.platform = platform
        self.posts: list[tuple[ChannelRef, Card]] = []
        self.digests: list[Digest] = []
        self.replies: list[tuple[ThreadRef, ThreadReply]] = []  # post_in_thread
        self.reply_results: list[PostResult | Exception] = []  # scripted results of post_in_thread
        self.results = list(results or [])
        self.closed = False

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        self.posts.append((channel, text))
        return PostResult(ok=True, message_id=f"t{len(self.posts)}")

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        self.posts.append((channel, card))
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, Exception):
                raise result
            return result
        return PostResult(ok=True, message_id=f"m{len(self.posts)}")

    async def post_digest(self, digest: Digest) -> PostResult:
        self.digests.append(digest)
        return PostResult(ok=True, message_id=f"d{len(self.digests)}")

    async def post_in_thread(self, thread: ThreadRef, reply: ThreadReply) -> PostResult:
        self.replies.append((thread, reply))
        if self.reply_results:
            result = self.reply_results.pop(0)
            if isinstance(result, Exception):
                raise result
            return result
        return PostResult(ok=True, message_id=f"r{len(self.replies)}")

    async def find_in_thread(self, thread: ThreadRef, reply: ThreadReply, since: datetime) -> str | None:
        return None

    async def find_sent(self, channel: ChannelRef, paper_id: str, since: datetime) -> str | None:
        return None

    async def start(self, on_command: CommandHandler) -> Running | None:
        return None

    async def close(self) -> None:
        self.closed = True


def arxiv_id_list(categories: dict[str, tuple[str, ...]]):
    """A fake arXiv API `id_list` answer (for `FakeHTTPServer.route_fn`): the real Atom
    response in tests/fixtures, its one entry repeated for each requested id that
    `categories` knows, with that id and those categories. Ids it does not know are left
    out, as arXiv leaves out what it does not have."""
    import re
    from urllib.parse import parse_qs, urlsplit

    from fakes.http import Canned

    real = fixture("arxiv_api_id_list_1111.2011v2.xml").decode()
    head, rest = real.split("<entry>", 1)
    entry, tail = rest.split("</entry>", 1)
    entry = re.sub(r'\s*<(?:arxiv:primary_category|category) [^>]*/>', "", entry)

    def answer(path: str) -> Canned:
        query = parse_qs(urlsplit(path).query)
        ids = [i for i in ",".join(query.get("id_list", [])).split(",") if i]
        entries = []
        for paper_id in ids:
            if paper_id in categories:
                tags = "".join(f'\n    <category term="{c}" scheme="http://arxiv.org/schemas/atom"/>'
                               for c in categories[paper_id])
                entries.append("<entry>" + entry.replace("1111.2011", paper_id) + tags + "\n  </entry>")
        body = head.replace("<opensearch:totalResults", "<opensearch:totalResults", 1) + "".join(entries) + tail
        return Canned(body=body.encode(), content_type="application/atom+xml")

    return answer


def record_threads(store, monkeypatch, *names):
    """Which threads call these store methods: {name: [thread idents]}."""
    called_from: dict[str, list[int]] = {name: [] for name in names}
    for name in names:
        method = getattr(store, name)

        def recorded(*args, _method=method, _name=name):
            called_from[_name].append(threading.get_ident())
            return _method(*args)

        monkeypatch.setattr(store, name, recorded)
    return called_from
