"""Issue 10, items 2, 6, 7 and part of 10: a poll survives bad listings, stuck sources and
its own storage failing; `status` and `backfill` tell the operator the truth.

Listings are served over HTTP by local fakes and read by the real sources; only the
failures of the bot's own storage are injected (a read-only connection, a full disk).
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlite_utils import Database

from bot.admin import Progress, backfill
from bot.app import App, _Runner
from bot.config import Secrets, parse_config
from bot.errors import SourceError
from bot.health import health
from bot.lookup import PaperLookup
from bot.models import ChannelRef
from bot.poller import Poller
from bot.sources import ArxivSource, HuggingFaceSource, make_client
from bot.sources.base import Pacer
from fakes.drip import DripServer
from fakes.http import Canned
from storage import Store

from .fakes import FakeSource, RecordingAdapter, due_now, fixture, paper, rss

ML = ChannelRef("console", "ml")
HF_IDS = ["2410.17243", "2410.16251", "2410.18538", "2410.18977", "2410.18451", "2410.18362"]


def hf_items() -> list[dict]:
    items = json.loads(fixture("hf_daily_papers_2024-10-25.json"))
    assert [i["paper"]["id"] for i in items] == HF_IDS  # the real fixture, as the tests below assume
    return items


def poisoned_hf_listing() -> bytes:
    """The real 2024-10-25 list with three poisoned items (and the other three intact)."""
    items = hf_items()
    items[1] = copy.deepcopy(items[1])
    items[1]["paper"]["upvotes"] = 2**70  # does not fit SQLite's INTEGER
    items[3]["paper"]["publishedAt"] = "99999-10-24T00:00:00.000Z"  # datetime cannot hold it
    items[4]["paper"]["publishedAt"] = "9999-12-31T23:00:00.000-05:00"  # parses, but not in UTC
    return json.dumps(items).encode()


def config(tmp_path, **sections):
    data = {"storage": {"path": str(tmp_path / "bot.db")}, "sources": {"arxiv": {"enabled": False}}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, Secrets({}))


# ---- item 2: one bad listing item costs that item only ------------------------------------

async def test_a_poisoned_hugging_face_item_costs_only_itself(store, clock, server, caplog):
    caplog.set_level(logging.WARNING)
    server.route("/api/daily_papers", Canned(body=poisoned_hf_listing()))
    store.add_subscription(ML, "reward OR segment", "u1", clock())
    async with make_client(5.0) as client:
        report = await Poller(store, clock, max_age_days=100000).poll(HuggingFaceSource(client, server.url))
    assert report.ok and report.listed == 3 and report.new == 3
    assert report.line() == "huggingface: 3 listed (3 malformed skipped, see the log), 3 new, 1 queued for delivery"
    stored = {HF_IDS[i] for i in (0, 2, 5)}
    assert {p.id for p in store.recent_papers(10)} == stored
    # The valid items are matched and queued: SMITE (segment); Skywork-Reward was poisoned.
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.18538"]
    skipped = [r.getMessage() for r in caplog.records if "skipped item" in r.getMessage()]
    assert len(skipped) == 3  # once per bad item
    assert "skipped item 1: 2410.16251: upvotes 1180591620717411303424 is out of range" in skipped[0]
    assert "skipped item 3: 2410.18977: paper.publishedAt '99999-10-24T00:00:00.000Z' is not an ISO-8601 date" \
        in skipped[1]
    assert "skipped item 4: 2410.18451: paper.publishedAt" in skipped[2]
    assert "cannot be represented in UTC" in skipped[2]
    assert all(len(line) < 400 for line in skipped)  # bounded, whatever the item holds
    assert store.source_state("huggingface").consecutive_failures == 0


async def test_a_number_too_long_for_python_costs_only_its_item(store, clock, server, caplog):
    items = hf_items()[:2]
    body = json.dumps(items).replace(f'"upvotes": {items[0]["paper"]["upvotes"]}', '"upvotes": ' + "9" * 5000, 1)
    server.route("/api/daily_papers", Canned(body=body.encode()))
    async with make_client(5.0) as client:
        report = await Poller(store, clock).poll(HuggingFaceSource(client, server.url))
    assert report.ok and report.listed == 1 and store.get_paper(HF_IDS[1]) is not None
    assert "upvotes is not a whole number (a number of 5000 digits)" in caplog.text


async def test_a_negative_count_or_a_wrong_type_is_a_bad_item(store, clock, server, caplog):
    items = hf_items()[:3]
    items[0]["paper"]["upvotes"] = -3
    items[1]["paper"]["authors"] = "Ada Example"
    server.route("/api/daily_papers", Canned(body=json.dumps(items).encode()))
    async with make_client(5.0) as client:
        report = await Poller(store, clock).poll(HuggingFaceSource(client, server.url))
    assert report.ok and [p.id for p in store.recent_papers(10)] == [HF_IDS[2]]
    assert "upvotes -3 is out of range" in caplog.text and "authors is not a list ('Ada Example')" in caplog.text


async def test_the_poller_checks_what_any_source_gives_it(store, clock, caplog):
    # The last gate before storage, for a source that does not check its items itself.
    source = FakeSource(papers=[paper("2410.00001", upvotes=2**63), paper("2410.00002"),
                                paper("2410.00003",
                                      published=datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))])
    report = await Poller(store, clock).poll(source)
    assert report.ok and report.listed == 1 and store.get_paper("2410.00002") is not None
    assert "fake: skipped paper '2410.00001': upvotes 9223372036854775808 is out of range" in caplog.text
    assert "fake: skipped paper '2410.00003': published" in caplog.text
    assert report.line() == "fake: 1 listed (2 malformed skipped, see the log), 1 new, 0 queued for delivery"


async def test_an_arxiv_item_without_authors_or_date_is_skipped(store, clock, server, caplog):
    body = fixture("arxiv_rss_synthetic.xml")
    body = body.replace(b"<dc:creator>Chris Yuhao Liu", b"<dc:nobody>Chris Yuhao Liu", 1).replace(
        b"Yahui Zhou</dc:creator>", b"Yahui Zhou</dc:nobody>", 1)  # Skywork-Reward loses its authors
    date = b"<pubDate>Fri, 25 Oct 2024 00:00:00 -0400</pubDate>"
    at = body.index(date, body.index(b"<item>"))  # SMITE's
    body = body[:at] + b"<pubDate>Fri, 25 Oct 99999 00:00:00 -0400</pubDate>" + body[at + len(date):]
    server.route("/rss/cs.LG", Canned(body=body, content_type="application/rss+xml"))
    async with make_client(5.0) as client:
        report = await Poller(store, clock).poll(ArxivSource(client, server.url, ("cs.LG",)))
    assert report.ok and report.listed == 3
    assert store.get_paper("2410.18538") is None and store.get_paper("2410.18451") is None
    assert "2410.18538: date 'Fri, 25 Oct 99999 00:00:00 -0400' cannot be read" in caplog.text
    assert "2410.18451 has no authors" in caplog.text


# ---- item 2: any error after the fetch is a recorded failure ------------------------------

async def test_a_full_disk_is_a_recorded_failure_and_nothing_is_lost(tmp_path, store, clock, server, monkeypatch):
    server.route("/api/daily_papers", Canned(body=fixture("hf_daily_papers_2024-10-25.json"), headers={"ETag": '"v1"'}))
    store.add_subscription(ML, "segment", "u1", clock())
    poller = Poller(store, clock, max_age_days=100000)

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    async with make_client(5.0) as client:
        source = HuggingFaceSource(client, server.url)
        with monkeypatch.context() as patch:
            patch.setattr(Store, "add_papers", disk_full)  # the poll writes through a Store of its own
            report = await poller.poll(source)  # must not raise
        assert not report.ok and report.failures == 1
        assert report.error.startswith("storage error: OperationalError: database or disk is full (database ")
        state = store.source_state("huggingface")
        assert state.consecutive_failures == 1 and state.last_error == report.error
        status, body = health(store, config(tmp_path), poller.faults)
        assert status == 503 and body["status"] == "storage"
        assert not store.source_validators("huggingface")  # the unstored response's ETag is not kept
        # The disk has room again: the next poll asks without the ETag, so it gets (and
        # stores, and matches) the listing instead of a 304.
        report = await poller.poll(source)
    assert "If-None-Match" not in server.requests[1][2]
    assert report.ok and report.new == 6 and report.recovered_after == 1
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.18538"]
    assert health(store, config(tmp_path), poller.faults)[0] == 200


async def test_a_read_only_database_fails_the_poll_without_raising(tmp_path, clock, caplog):
    # A real read-only connection: the store cannot even record the failure.
    cfg = config(tmp_path, delivery={"admin_channel": "console:ops", "source_failure_notice_after": 2})
    admin = RecordingAdapter()
    app = App(cfg, adapters={"console": admin}, clock=clock)
    app.store.db = Database(sqlite3.connect(f"file:{tmp_path / 'bot.db'}?mode=ro", uri=True))

    def read_only_store() -> Store:  # the poll's own Store, opened in its worker thread
        worker = Store(tmp_path / "bot.db")
        worker.db.close()
        worker.db = Database(sqlite3.connect(f"file:{tmp_path / 'bot.db'}?mode=ro", uri=True))
        return worker

    app.poller.open_store = read_only_store
    source = FakeSource("huggingface", [paper("2410.00001", "Latent diffusion")])
    reports = []
    for _ in range(2):
        reports.append(await app.poller.poll(source))
        await app.notify(reports[-1])
    assert [r.ok for r in reports] == [False, False]
    assert [r.failures for r in reports] == [1, 2]  # counted in memory when storage cannot count
    assert "is read-only" in reports[0].error and reports[0].error.startswith("storage error")
    assert "could not record this failure in the database either" in caplog.text
    assert [text for _, text in admin.posts] == [
        f"papers-bot: huggingface has failed 2 times in a row (last error: {reports[1].error}). "
        "Papers from it will arrive when it recovers."]
    status, body = health(app.store, cfg, app.poller.faults)
    assert status == 503 and body["status"] == "storage"
    assert "read-only" in body["sources"]["huggingface"]["own_failure"]
    await app.aclose()


async def test_a_bug_after_the_fetch_is_recorded_and_the_next_poll_finishes_the_work(tmp_path, store, clock, caplog):
    store.add_subscription(ML, "diffusion", "u1", clock())
    poller = Poller(store, clock)
    source = FakeSource(papers=[paper("2410.00001", "Latent diffusion")])

    def broken(paper):
        raise RuntimeError("matcher bug")

    poller.sync_subscriptions()
    real_match, poller.matcher.match = poller.matcher.match, broken
    report = await poller.poll(source)
    assert not report.ok and report.error == "internal error: RuntimeError: matcher bug"
    assert store.source_state("fake").consecutive_failures == 1
    # Stored, and written down as not matched yet: the next poll matches it.
    assert [u.paper.id for u in store.unmatched_papers(10)] == ["2410.00001"]
    status, body = health(store, config(tmp_path), poller.faults)
    assert status == 503 and body["status"] == "internal" and "matcher bug" in caplog.text
    poller.matcher.match = real_match
    report = await poller.poll(source)
    assert report.ok and report.new == 0 and report.queued == 1
    assert [d.paper_id for d in due_now(store, clock())] == ["2410.00001"] and not store.unmatched_papers(10)


async def test_an_unreadable_database_is_a_503(tmp_path):
    cfg = config(tmp_path)
    app = App(cfg)
    app.store.db.close()
    status, body = health(app.store, cfg, app.poller.faults)
    assert status == 503 and body["status"] == "storage" and "cannot read the database" in body["error"]
    app.store.db = Database(sqlite3.connect(":memory:"))
    await app.aclose()


# ---- item 6: one deadline for the whole request ---------------------------------------------

async def test_a_dripping_source_is_cut_off_at_the_deadline(store, clock):
    with DripServer(every=0.1, total=30) as drip:  # 3 s of drip if nobody stops it
        url = drip.url
        started = time.monotonic()
        async with make_client(0.5) as client:  # each byte comes well within 0.5 s
            report = await Poller(store, clock).poll(HuggingFaceSource(client, drip.url))
        elapsed = time.monotonic() - started
    assert not report.ok and elapsed < 1.5
    assert report.error == (f"timed out waiting for {url}: no complete response within 0.5s "
                            "(the deadline for the whole request)")
    assert store.source_state("huggingface").consecutive_failures == 1


# ---- item 7: a truncated feed gives nothing -------------------------------------------------

async def test_a_truncated_arxiv_feed_stores_and_posts_nothing(store, clock, server):
    body = fixture("arxiv_rss_synthetic.xml")
    cut = body[: body.index(b"<dc:creator>Chris Yuhao Liu")]  # mid-item: the second has no authors yet
    server.route("/rss/cs.LG", Canned(body=cut, content_type="application/rss+xml"))
    store.add_subscription(ML, "segment OR reward", "u1", clock())
    async with make_client(5.0) as client:
        report = await Poller(store, clock, max_age_days=100000).poll(ArxivSource(client, server.url, ("cs.LG",)))
    assert not report.ok
    assert report.error.startswith("response is not a complete, well-formed feed (no element found at line ")
    assert report.error.endswith("nothing from it was stored")
    assert store.count_papers() == 0 and store.count_pending() == 0
    assert store.source_state("arxiv").consecutive_failures == 1


async def test_the_untruncated_feed_still_parses(server, clock, store):
    server.route("/rss/cs.LG", rss())
    async with make_client(5.0) as client:
        report = await Poller(store, clock).poll(ArxivSource(client, server.url, ("cs.LG",)))
    assert report.ok and report.listed == 5


async def test_a_truncated_arxiv_api_answer_is_a_failed_lookup(server):
    real = fixture("arxiv_api_id_list_1111.2011v2.xml")
    server.route("/api/papers/1111.2011", Canned(status=404, body=b"{}"))
    server.route("/api/query", Canned(body=real[: real.index(b"<author>")], content_type="application/atom+xml"))
    async def no_sleep(seconds):
        pass

    async with make_client(5.0) as client:
        arxiv = ArxivSource(client, server.url, ("cs.LG",), pacer=Pacer(3.0, sleep=no_sleep),
                            api_url=f"{server.url}/api/query")
        lookup = PaperLookup([HuggingFaceSource(client, server.url), arxiv])
        with pytest.raises(SourceError, match="API response is not a complete, well-formed feed"):
            await lookup.fetch("1111.2011")
        server.route("/api/query", Canned(body=real, content_type="application/atom+xml"))
        found = await lookup.fetch("1111.2011")
    assert found.id == "1111.2011" and found.authors and found.published is not None


# ---- item 10: status shows the real next attempt ---------------------------------------------

async def test_status_shows_the_backoff_retry_not_the_interval(tmp_path, clock):
    from handlers import Context
    from handlers.channel import source_lines

    cfg = config(tmp_path)  # Hugging Face every 30 minutes
    app = App(cfg, clock=clock)
    source = FakeSource("huggingface")
    source.fail_with(SourceError("huggingface", "HTTP 503 from http://127.0.0.1:9"))
    runner = _Runner(app)
    await runner._poll(source)
    state = app.store.source_state("huggingface")
    assert state.next_poll == runner.retry_at["huggingface"].replace(microsecond=0)
    assert 24 <= (state.next_poll - clock()).total_seconds() <= 36  # the first retry, not in 30m
    seconds = int((state.next_poll - clock()).total_seconds())
    assert source_lines(Context(app.store, cfg, clock))[1] == (
        f"• huggingface: last success never; failing (1 in a row): HTTP 503 from http://127.0.0.1:9; "
        f"next retry in {seconds}s")
    clock.advance(seconds=40)
    assert source_lines(Context(app.store, cfg, clock))[1].endswith("; next retry due now")  # never "in just now"
    clock.advance(hours=3)
    assert source_lines(Context(app.store, cfg, clock))[1].endswith(
        "; next retry overdue since 3h ago (is `papers-bot run` running?)")
    source.fail_with(None)
    await runner._poll(source)  # a success: the next poll is the interval away
    state = app.store.source_state("huggingface")
    assert (state.next_poll - clock()).total_seconds() == app.interval(source) == 30 * 60
    assert source_lines(Context(app.store, cfg, clock))[1].endswith("last success just now; next poll in 30m")
    # A poll made outside `run` (papers-bot poll from cron) plans nothing: run's old plan is
    # dropped, not shown as "overdue" forever.
    clock.advance(hours=2)
    await app.poller.poll(source)
    assert app.store.source_state("huggingface").next_poll is None
    assert source_lines(Context(app.store, cfg, clock))[1].endswith("last success just now; next poll in 30m")
    await app.aclose()


# ---- item 10: backfill names failed days and what it leaves out --------------------------------

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def hf_day(path):
    from urllib.parse import parse_qs, urlsplit

    day = parse_qs(urlsplit(path).query)["date"][0]
    if day == "2026-11-26":
        return Canned(status=400, body=b'{"error":"Invalid date"}')
    return Canned(body=fixture("hf_daily_papers_2024-10-25.json") if day == "2026-11-27" else b"[]")


async def test_backfill_names_each_failed_day_and_what_it_leaves_to_the_poller(store, server):
    import io

    real = fixture("arxiv_api_id_list_1111.2011v2.xml")
    server.route_fn("/api/daily_papers", hf_day)
    server.route("/api/query", Canned(body=real[: real.index(b"<author>")]), Canned(body=real))

    async def no_sleep(seconds):
        pass

    async with make_client(2.0) as client:
        sources = [HuggingFaceSource(client, server.url),
                   ArxivSource(client, server.url, ("cs.LG",), pacer=Pacer(3.0, sleep=no_sleep),
                               api_url=f"{server.url}/api/query")]
        report = await backfill(store, sources, days=4, today=NOW.date(), now=NOW, progress=Progress(6, io.StringIO()))
    assert [(s, str(d)) for s, d, _ in report.failed] == [("huggingface", "2026-11-26"), ("arxiv", "2026-11-24")]
    assert "HTTP 400" in report.failed[0][2] and "not a complete, well-formed feed" in report.failed[1][2]
    lines = report.lines()
    assert lines[0] == "backfill: stored 6 new papers from Hugging Face and 1 from arXiv"
    assert lines[1] == ("backfill: not fetched: Hugging Face today (2026-11-28): its list is still growing; "
                        "the poller stores it")
    assert lines[2].startswith("backfill: not fetched: arXiv 2026-11-26 to 2026-11-28: submissions of the last "
                               "3 days may not be announced yet")
    assert lines[3] == ("backfill: 2 days failed (run the backfill again to retry; stored papers are never "
                        "doubled):")
    assert lines[4].startswith("  huggingface 2026-11-26: HTTP 400 from http://127.0.0.1")
    assert lines[5].startswith("  arxiv 2026-11-24: API response is not a complete, well-formed feed")


def test_cli_backfill_exits_1_when_a_day_failed(tmp_path, capsys, server):
    from bot.cli import main

    server.route("/api/daily_papers", Canned(body=b"[]"), Canned(status=503, body=b""), Canned(body=b"[]"))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\npath = "{tmp_path / "a.db"}"\n[sources.huggingface]\nbase_url = "{server.url}"\n'
                   "[sources.arxiv]\nenabled = false\n")
    assert main(["--config", str(cfg), "backfill", "--days", "3"]) == 1
    out = capsys.readouterr().out
    day = datetime.now(timezone.utc).date() - timedelta(days=2)  # the second day asked for
    assert f"  huggingface {day}: HTTP 503 from {server.url}" in out
    assert "backfill: 1 day failed" in out and "not fetched: Hugging Face today" in out
