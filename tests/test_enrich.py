"""Hugging Face papers get arXiv's categories before matching (bot/enrich.py), through the
one ArxivSource and its 3-second pacer, against the fake arXiv API; `cat:` then matches
them. When arXiv fails, they are matched without and filled in at the next poll."""

import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

from bot.enrich import CategoryFiller
from bot.models import ChannelRef, Paper
from bot.poller import Poller
from bot.sources import ArxivSource, HuggingFaceSource, make_client
from bot.sources.base import Pacer
from fakes.http import Canned

from .fakes import arxiv_id_list, due_now, hf_json

HF_IDS = ["2410.17243", "2410.16251", "2410.18538", "2410.18977", "2410.18451", "2410.18362"]
CATEGORIES = {"2410.17243": ("cs.CV", "cs.LG"), "2410.16251": ("cs.CL",), "2410.18538": ("cs.CV",),
              "2410.18977": ("cs.CV", "cs.GR"), "2410.18451": ("cs.AI", "cs.CL")}  # 2410.18362: unknown to arXiv


class PacerClock:
    """The pacer's time: sleeping moves it, and every wait is recorded."""

    def __init__(self):
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def id_lists(server) -> list[list[str]]:
    return [parse_qs(urlsplit(full).query)["id_list"][0].split(",")
            for path, full, _ in server.requests if path == "/api/query"]


async def poll_hf(store, clock, server, pacer_clock, **poller_kw):
    async with make_client(5.0) as client:
        arxiv = ArxivSource(client, server.url, ("cs.LG",), api_url=f"{server.url}/api/query",
                            pacer=Pacer(3.0, monotonic=pacer_clock.monotonic, sleep=pacer_clock.sleep))
        poller = Poller(store, clock, max_age_days=100_000, complete=CategoryFiller(arxiv, store).complete,
                        **poller_kw)
        try:
            return await poller.poll(HuggingFaceSource(client, server.url))
        finally:
            poller.close()


async def test_hugging_face_papers_get_arxiv_categories_and_cat_queries_match_them(store, clock, server):
    server.route("/api/daily_papers", hf_json())
    server.route_fn("/api/query", arxiv_id_list(CATEGORIES))
    cv, nlp = ChannelRef("console", "cv"), ChannelRef("console", "nlp")
    store.add_subscription(cv, "cat:cs.CV", "u", clock())
    store.add_subscription(nlp, "cat:cs.CL", "u", clock())
    clock.advance(minutes=1)
    report = await poll_hf(store, clock, server, PacerClock())
    assert report.ok and report.new == 6
    assert id_lists(server) == [HF_IDS]  # one request for the listing
    stored = {i: store.get_paper(i).categories for i in HF_IDS}
    assert stored == {**CATEGORIES, "2410.18362": ()}
    assert {d.paper_id for d in due_now(store, clock()) if d.channel == cv} == {"2410.17243", "2410.18538",
                                                                                "2410.18977"}
    assert {d.paper_id for d in due_now(store, clock()) if d.channel == nlp} == {"2410.16251", "2410.18451"}
    # Polled again: nothing stored lacks categories that arXiv has, but the paper arXiv does not know.
    server.requests.clear()
    await poll_hf(store, clock, server, PacerClock())
    assert id_lists(server) == [["2410.18362"]]


async def test_a_hundred_ids_a_request_each_waiting_its_turn_at_the_pacer(store, clock, server):
    items = json.loads(hf_json().body)
    template = items[0]
    listing = []
    for n in range(250):
        item = json.loads(json.dumps(template))
        item["paper"]["id"] = f"2411.{n:05d}"
        item["title"] = f"Synthetic paper {n}"
        listing.append(item)
    server.route("/api/daily_papers", Canned(body=json.dumps(listing).encode()))
    server.route_fn("/api/query", arxiv_id_list({f"2411.{n:05d}": ("cs.CL",) for n in range(250)}))
    pacer_clock = PacerClock()
    report = await poll_hf(store, clock, server, pacer_clock)
    assert report.new == 250
    assert [len(ids) for ids in id_lists(server)] == [100, 100, 50]
    assert pacer_clock.waits == [3.0, 3.0]  # the first goes at once, the next two 3 s apart
    assert all(store.get_paper(f"2411.{n:05d}").categories == ("cs.CL",) for n in range(250))


async def test_when_arxiv_fails_papers_are_matched_without_and_filled_at_the_next_poll(store, clock, server):
    server.route("/api/daily_papers", hf_json())
    server.route("/api/query", Canned(status=503, body=b"busy"))
    cv, motion = ChannelRef("console", "cv"), ChannelRef("console", "motion")
    store.add_subscription(cv, "cat:cs.CV", "u", clock())
    store.add_subscription(motion, "motion", "u", clock())
    clock.advance(minutes=1)
    report = await poll_hf(store, clock, server, PacerClock())
    assert report.ok and report.new == 6 and report.queued == 1  # matched anyway: `motion` got its paper
    assert store.get_paper("2410.18977").categories == ()
    assert [d.paper_id for d in due_now(store, clock()) if d.channel == cv] == []

    clock.advance(minutes=30)
    server.route_fn("/api/query", arxiv_id_list(CATEGORIES))
    report = await poll_hf(store, clock, server, PacerClock())
    assert report.ok and report.new == 0
    assert store.get_paper("2410.18977").categories == ("cs.CV", "cs.GR")
    assert {d.paper_id for d in due_now(store, clock()) if d.channel == cv} == {"2410.17243", "2410.18538",
                                                                                "2410.18977"}
    # The other channel's paper is not queued twice.
    assert [d.paper_id for d in due_now(store, clock()) if d.channel == motion] == ["2410.18977"]


async def test_papers_stored_with_categories_are_not_asked_for(store, clock, server):
    server.route("/api/daily_papers", hf_json())
    server.route_fn("/api/query", arxiv_id_list(CATEGORIES))
    # arXiv's own listing stored these two with their categories first.
    store.add_papers([Paper(id=i, title="t", summary="s", categories=("cs.CV",), source="arxiv")
                      for i in HF_IDS[:2]], clock() - timedelta(hours=1))
    await poll_hf(store, clock, server, PacerClock())
    assert id_lists(server) == [HF_IDS[2:]]
    assert store.get_paper(HF_IDS[0]).categories == ("cs.CV",)  # arXiv's listing's, kept
