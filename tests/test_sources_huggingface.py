import json

import pytest

from bot.errors import SourceError
from bot.sources import HuggingFaceSource, make_client
from bot.sources.huggingface import parse_daily_papers
from fakes.http import Canned

from .fakes import fixture, hf_json


async def fetch(server, timeout=5.0, max_bytes=20 * 1024 * 1024):
    async with make_client(timeout) as client:
        return list((await HuggingFaceSource(client, server.url, max_bytes).fetch()).papers)


async def test_real_legacy_response_is_parsed(server):
    server.route("/api/daily_papers", hf_json())
    papers = await fetch(server)
    assert [p.id for p in papers] == ["2410.17243", "2410.16251", "2410.18538",
                                      "2410.18977", "2410.18451", "2410.18362"]
    first = papers[0]
    # paper.title is hard-wrapped in this capture; the item title is clean.
    assert first.title == "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss"
    assert first.upvotes == 64
    assert first.authors[:2] == ("Zesen Cheng", "Hang Zhang") and len(first.authors) == 9
    assert "\n" not in first.summary and first.summary.startswith("Contrastive loss is a powerful approach")
    assert first.thumbnail == "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2410.17243.png"
    # Legacy items have no submittedOnDailyAt: the list date comes from the item's publishedAt.
    assert str(first.listed_on) == "2024-10-25"
    assert first.source == "huggingface" and first.github is None and first.ai_summary is None


async def test_real_current_item_keeps_fields_that_live_under_paper(server):
    server.route("/api/daily_papers", hf_json("hf_daily_papers_2026-03-06_item.json"))
    (paper,) = await fetch(server)
    assert paper.id == "2602.23229"
    assert paper.github == "https://github.com/marco-garosi/CIRCLE"
    assert paper.project_page == "https://circle-lmm.github.io/"
    assert paper.ai_summary.startswith("Large Multimodal Models demonstrate superior performance")
    assert paper.upvotes == 10
    assert paper.comments == 1  # the item's numComments
    assert str(paper.listed_on) == "2026-03-06"  # submittedOnDailyAt, not the arXiv date
    assert str(paper.published.date()) == "2026-02-26"


async def test_request_carries_user_agent_and_limit(server):
    server.route("/api/daily_papers", Canned(body=b"[]"))
    await fetch(server)
    path, raw, headers = server.requests[0]
    assert raw == "/api/daily_papers?limit=100"
    assert headers["User-Agent"].startswith("papers-bot/")


async def test_empty_list_is_not_an_error(server):
    server.route("/api/daily_papers", Canned(body=b"[]"))
    assert await fetch(server) == []


@pytest.mark.parametrize(
    "canned, message",
    [
        (Canned(status=500, body=b"oops"), "HTTP 500 from http://127.0.0.1"),
        (Canned(status=429, body=b"{}", headers={"Retry-After": "60"}), "HTTP 429 from http://127.0.0.1:"),
        (Canned(body=b"<html>not json</html>"), "not valid JSON"),
        (Canned(body=b'{"error": "Invalid date"}'), "expected a JSON array"),
    ],
)
async def test_failures_are_source_errors_with_a_reason(server, canned, message):
    server.route("/api/daily_papers", canned)
    with pytest.raises(SourceError) as err:
        await fetch(server)
    assert message in str(err.value)
    assert err.value.source == "huggingface"


async def test_rate_limit_reports_retry_after(server):
    server.route("/api/daily_papers", Canned(status=429, body=b"{}", headers={"Retry-After": "60"}))
    with pytest.raises(SourceError, match=r"retry after 60s"):
        await fetch(server)


async def test_timeout_is_reported(server):
    server.route("/api/daily_papers", Canned(body=b"[]", delay=1.0))
    with pytest.raises(SourceError, match="timed out waiting for http://127.0.0.1"):
        await fetch(server, timeout=0.2)


async def test_unreachable_server_is_reported():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with make_client(2.0) as client:
        with pytest.raises(SourceError, match=f"cannot reach http://127.0.0.1:{port}"):
            await HuggingFaceSource(client, f"http://127.0.0.1:{port}").fetch()


async def test_oversized_response_is_rejected(server):
    server.route("/api/daily_papers", hf_json())
    with pytest.raises(SourceError, match="over the 1000-byte limit"):
        await fetch(server, max_bytes=1000)


def test_malformed_items_are_skipped_not_fatal(caplog):
    items = json.loads(fixture("hf_daily_papers_2024-10-25.json"))[:2]
    body = json.dumps(
        ["not an object", {"paper": {"id": "nope", "title": "x"}}, {"paper": {"id": "2410.00001"}}, *items]
    ).encode()
    papers = parse_daily_papers(body)
    assert [p.id for p in papers] == ["2410.17243", "2410.16251"]
    assert "skipped item 0" in caplog.text and "no arXiv id" in caplog.text and "has no title" in caplog.text


def test_hidden_authors_odd_types_and_zero_upvotes(caplog):
    body = json.dumps(
        [
            {
                "paper": {
                    "id": "2410.00002v2",
                    "title": "Synthetic  title\n  wrapped",
                    "summary": "s",
                    "upvotes": 0,
                    "authors": [{"name": "Shown"}, {"name": "Hidden", "hidden": True}, "junk"],
                    "githubRepo": "javascript:alert(1)",
                }
            },
            {"paper": {"id": "2410.00003", "title": "T", "upvotes": None, "authors": None}},
            {"paper": {"id": "2410.00004", "title": "T", "upvotes": "1.2k"}},  # malformed: skipped, logged
        ]
    ).encode()
    first, second = parse_daily_papers(body)
    assert "skipped item 2: 2410.00004: upvotes is not a whole number ('1.2k')" in caplog.text
    assert first.id == "2410.00002" and first.title == "Synthetic title wrapped"
    assert first.upvotes == 0  # zero is a count, not "unknown"
    assert first.authors == ("Shown",)
    assert first.github is None  # only http(s) links are kept
    assert second.upvotes is None and second.authors == ()


def test_links_a_button_cannot_carry_are_dropped():
    # Discord refuses a whole message whose link button's URL is not well formed.
    def links(github, page):
        (item,) = parse_daily_papers(json.dumps([{"paper": {"id": "2410.00001", "title": "T",
                                                              "githubRepo": github, "projectPage": page}}]).encode())
        return item.github, item.project_page

    assert links("https://github.com/a b", "https://") == (None, None)
    assert links("http://[oops", "https://x.org/\u0007") == (None, None)
    assert links(" https://github.com/x/y ", "https://x.org/p?q=1") == ("https://github.com/x/y", "https://x.org/p?q=1")
    assert links("https://x.org/<!channel>", "https://x.org/café?a=b%20c&d=é") == (
        "https://x.org/%3C!channel%3E", "https://x.org/caf%C3%A9?a=b%20c&d=%C3%A9")


def test_comment_counts_are_range_checked(caplog):
    body = json.dumps([
        {"paper": {"id": "2410.00001", "title": "T"}, "numComments": 4},
        {"paper": {"id": "2410.00002", "title": "T"}},  # absent: unknown
        {"paper": {"id": "2410.00003", "title": "T"}, "numComments": -3},
        {"paper": {"id": "2410.00004", "title": "T"}, "numComments": 2**70},
        {"paper": {"id": "2410.00005", "title": "T"}, "numComments": "many"},
    ]).encode()
    papers = parse_daily_papers(body)
    assert [(p.id, p.comments) for p in papers] == [("2410.00001", 4), ("2410.00002", None)]
    assert "2410.00003: numComments -3 is out of range" in caplog.text
    assert "2410.00004: numComments" in caplog.text and "2410.00005: numComments is not a whole number" in caplog.text
