"""The source registry: a source is one module (a SourceSpec) and one config section.

A synthetic third source, registered here the way bot/sources/__init__.py registers the
real ones, must be configured, polled, reported, backfilled, looked up and queried with
no other change anywhere."""

from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest

import bot.sources
from bot.app import App
from bot.cli import main
from bot.config import SCHEMA, Secrets, parse_config
from bot.errors import ConfigError, QueryError, SourceError
from bot.health import StoreCollector, health
from bot.matching import IndexedMatcher
from bot.models import ChannelRef, Listing, Paper, Subscription, Validators
from bot.query import parse_query
from bot.sources import SOURCES, BackfillPlan, SourceConfig, SourceSpec
from bot.sources.base import UNCONDITIONAL, get_bytes, get_listing, url_problem
from fakes.http import Canned
from handlers import Context
from handlers.channel import source_lines
from storage import Store

from .fakes import FakeSource, paper

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


class SyntheticSource:
    """A third source over HTTP: `/listing` is a JSON array of {id, title}, `/day/YYYY-MM-DD` a past day's."""

    name = "synthetic"

    def __init__(self, client: httpx.AsyncClient, base_url: str):
        self.client, self.base_url = client, base_url

    async def fetch(self, validators: Validators = UNCONDITIONAL) -> Listing:
        body, fresh = await get_listing(self.client, self.name, f"{self.base_url}/listing", validators)
        return Listing(None if body is None else tuple(self._parse(body)), fresh)

    async def fetch_one(self, paper_id: str) -> Paper | None:
        try:
            return self._parse(await get_bytes(self.client, self.name, f"{self.base_url}/paper/{paper_id}"))[0]
        except SourceError as exc:
            if "HTTP 404" in exc.reason:
                return None
            raise

    def backfill_plan(self, days: int, today: date) -> BackfillPlan:
        return BackfillPlan(tuple(today - timedelta(days=n) for n in range(days, 0, -1)), "synthetic: not today")

    async def fetch_day(self, day: date) -> list[Paper]:
        return self._parse(await get_bytes(self.client, self.name, f"{self.base_url}/day/{day}"))

    def _parse(self, body: bytes) -> list[Paper]:
        return [Paper(id=item["id"], title=item["title"], summary="Synthetic abstract.", source=self.name,
                      listed_on=NOW.date()) for item in json.loads(body)]


SPEC = SourceSpec(
    name="synthetic",
    label="Synthetic Papers",
    interval_minutes=5.0,
    settings={"base_url": (str, "http://127.0.0.1:9", url_problem)},
    connect=lambda client, config, max_bytes: SyntheticSource(client, config["base_url"]),
    aliases=("syn",),
)


def listing(*ids: str) -> bytes:
    return json.dumps([{"id": i, "title": f"Synthetic diffusion paper {i}"} for i in ids]).encode()


@pytest.fixture
def registered(monkeypatch):
    """The synthetic source, registered after the real ones."""
    monkeypatch.setattr(bot.sources, "SOURCES", (*SOURCES, SPEC))


def only_synthetic(tmp_path, server, **extra) -> dict:
    return {"storage": {"path": str(tmp_path / "bot.db")},
            "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False},
                        "synthetic": {"base_url": server.url}},
            "delivery": {"source_failure_notice_after": 1}, **extra}


def test_the_real_registry_has_one_name_per_source():
    names = [s.name for s in SOURCES] + [a for s in SOURCES for a in s.aliases]
    assert [s.name for s in SOURCES] == ["huggingface", "arxiv"]  # lookup order: Hugging Face first
    assert len(names) == len(set(names))
    assert [s for s in SCHEMA if s.startswith("sources.")] == ["sources.huggingface", "sources.arxiv"]


def test_its_config_section_comes_from_its_spec(registered, tmp_path, server):
    config = parse_config({"sources": {"synthetic": {"base_url": server.url + "/"}}}, Secrets({}))
    assert config.sources["synthetic"] == SourceConfig(True, 5.0, {"base_url": server.url})
    assert list(config.sources) == ["huggingface", "arxiv", "synthetic"]
    with pytest.raises(ConfigError, match=r"unknown key 'categories' in \[sources.synthetic\]"):
        parse_config({"sources": {"synthetic": {"categories": ["cs.LG"]}}}, Secrets({}))
    with pytest.raises(ConfigError, match=r"\[sources.synthetic\] base_url must be an http"):
        parse_config({"sources": {"synthetic": {"base_url": "ftp://x"}}}, Secrets({}))


def test_without_registration_there_is_no_such_section():
    with pytest.raises(ConfigError, match=r"unknown section \[sources.synthetic\]"):
        parse_config({"sources": {"synthetic": {"enabled": True}}}, Secrets({}))


async def test_it_is_polled_on_its_interval_and_reported_everywhere(registered, tmp_path, server, clock):
    server.route("/listing", Canned(body=listing("2611.00001", "2611.00002"), headers={"ETag": '"s1"'}),
                 Canned(status=304), Canned(status=503))
    config = parse_config(only_synthetic(tmp_path, server), Secrets({}))
    app = App(config, stdout=io.StringIO(), clock=clock)
    app.store.add_subscription(ChannelRef("console", "ml"), "diffusion source:syn", "u1", clock())
    assert [s.name for s in app.sources] == ["synthetic"]  # the disabled real ones are not polled
    assert app.interval(app.sources[0]) == 5 * 60
    (first,), _ = await app.poll_once()
    assert first.line() == "synthetic: 2 listed, 2 new, 2 queued for delivery"
    assert app.store.get_paper("2611.00001").source == "synthetic"
    assert app.store.source_validators("synthetic") == Validators('"s1"')
    (second,), _ = await app.poll_once()
    assert second.not_modified and server.requests[1][2]["If-None-Match"] == '"s1"'
    clock.advance(minutes=1)
    (third,), _ = await app.poll_once()
    assert not third.ok and third.error.startswith("HTTP 503 from")
    status, body = health(app.store, config, app.poller.faults)
    assert status == 503 and list(body["sources"]) == ["synthetic"]  # its only enabled source is failing
    assert body["sources"]["synthetic"]["consecutive_failures"] == 1
    lines = source_lines(Context(app.store, config, clock))
    assert lines[1:3] == ["• huggingface: disabled", "• arxiv: disabled"]
    assert lines[3].startswith("• synthetic: last success 1m ago; failing (1 in a row): HTTP 503 from")
    metrics = {m.name: m.samples for m in StoreCollector(app.store, config).collect()}
    failures = {s.labels["source"]: s.value for s in metrics["papers_bot_source_consecutive_failures"]}
    assert failures == {"huggingface": 0, "arxiv": 0, "synthetic": 1}
    await app.aclose()


async def test_show_asks_it_after_the_real_sources(registered, tmp_path, server):
    server.route("/api/papers/2611.00009", Canned(status=404, body=b"{}"))
    server.route("/api/query", Canned(body=b'<feed xmlns="http://www.w3.org/2005/Atom"><title>q</title></feed>',
                                      content_type="application/atom+xml"))
    server.route("/paper/2611.00009", Canned(body=listing("2611.00009")))
    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                           "sources": {"huggingface": {"base_url": server.url},
                                       "arxiv": {"api_url": f"{server.url}/api/query"},
                                       "synthetic": {"base_url": server.url, "enabled": False}}}, Secrets({}))
    app = App(config, stdout=io.StringIO())
    found = await app.lookup.fetch("2611.00009")  # a disabled source is not polled, but still asked
    await app.aclose()
    assert app.lookup.labels() == ("Hugging Face", "arXiv", "Synthetic Papers")
    assert found is not None and found.source == "synthetic"
    assert [path for path, _, _ in server.requests] == ["/api/papers/2611.00009", "/api/query", "/paper/2611.00009"]


def test_backfill_fetches_its_days(registered, tmp_path, server, capsys):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "a.db"}"\n[sources.huggingface]\nenabled = false\n'
                      f'[sources.arxiv]\nenabled = false\n[sources.synthetic]\nbase_url = "{server.url}"\n')
    today = datetime.now(timezone.utc).date()
    for n in (1, 2, 3):
        server.route(f"/day/{today - timedelta(days=n)}", Canned(body=listing(f"2611.0001{n}")))
    assert main(["--config", str(config), "backfill", "--days", "3"]) == 0
    out = capsys.readouterr().out
    assert "backfill: stored 3 new papers from Synthetic Papers\n" in out
    assert "backfill: not fetched: synthetic: not today" in out
    store = Store(tmp_path / "a.db")
    assert store.count_papers() == 3 and store.count_pending() == 0
    store.close()


def test_queries_name_it_by_its_name_or_alias(registered):
    assert parse_query("source:synthetic") == parse_query("source:SYN") == ("source", "synthetic")
    with pytest.raises(QueryError, match='source must be huggingface or arxiv or synthetic, not "reddit"'):
        parse_query("source:reddit")
    matcher = IndexedMatcher()
    matcher.add(Subscription(1, ChannelRef("console", "ml"), "source:syn", "u1", NOW))
    (match,) = matcher.match(paper("2611.00001", source="synthetic"))
    assert match.terms == ("listed on Synthetic Papers",)
    assert matcher.match(paper("2611.00002", source="arxiv")) == []


async def test_the_poller_passes_the_stored_validators_in_and_stores_what_comes_back(store, clock):
    from bot.poller import Poller

    store.save_source_validators("fake", Validators('"old"', "Thu, 26 Nov 2026 10:00:00 GMT"))
    source = FakeSource(papers=[paper("2611.00001")])
    report = await Poller(store, clock).poll(source)
    assert report.ok and source.seen == [Validators('"old"', "Thu, 26 Nov 2026 10:00:00 GMT")]
    # FakeSource answers with the validators it was given: unchanged, nothing rewritten.
    assert store.source_validators("fake") == Validators('"old"', "Thu, 26 Nov 2026 10:00:00 GMT")
