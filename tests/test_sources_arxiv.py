import pytest

from bot.errors import SourceError
from bot.sources import ArxivSource, make_client
from bot.sources.arxiv import parse_rss
from fakes.http import Canned

from .fakes import fixture, rss


async def fetch(server, categories=("cs.CV", "cs.LG")):
    async with make_client(5.0) as client:
        return list((await ArxivSource(client, server.url, categories).fetch()).papers)


async def test_one_request_for_all_categories(server):
    server.route("/rss/cs.CV+cs.LG", rss())
    await fetch(server)
    assert server.paths() == ["/rss/cs.CV+cs.LG"]


async def test_items_are_parsed_with_versionless_ids(server):
    server.route("/rss/cs.CV+cs.LG", rss())
    papers = {p.id: p for p in await fetch(server)}
    assert set(papers) == {"2410.18538", "2410.18451", "2410.99901", "2009.13987", "2205.06398"}
    smite = papers["2410.18538"]
    assert smite.title == "SMITE: Segment Me In TimE"
    assert smite.summary.startswith("Segmenting an object in a video")  # preamble stripped
    assert smite.authors[0] == "Amirhossein Alimohammadi" and len(smite.authors) == 6
    assert smite.categories == ("cs.CV",)
    assert str(smite.listed_on) == "2024-10-25" and smite.source == "arxiv"
    synthetic = papers["2410.99901"]
    assert synthetic.title == "Synthetic Diffusion-based Planning for Fixture Robots"
    assert "& report results on synthetic <benchmarks>." in synthetic.summary


async def test_new_and_cross_are_news_replacements_are_updates(server):
    server.route("/rss/cs.CV+cs.LG", rss())
    papers = {p.id: p for p in await fetch(server)}
    assert not papers["2410.18538"].is_update  # new
    assert not papers["2410.18451"].is_update  # cross
    assert papers["2009.13987"].is_update  # replace
    assert papers["2205.06398"].is_update  # replace-cross


async def test_weekend_empty_channel_is_not_an_error(server):
    server.route("/rss/cs.CV+cs.LG", rss("arxiv_rss_weekend_synthetic.xml"))
    assert await fetch(server) == []


@pytest.mark.parametrize(
    "canned, message",
    [
        (Canned(status=503, body=b"busy", headers={"Retry-After": "120"}), "HTTP 503 from http://127.0.0.1"),
        (Canned(body=b"<html><body>Maintenance</body></html>", content_type="text/html"), "not an RSS/Atom feed"),
        (Canned(body=b"\x00\x01 definitely not xml"), "not an RSS/Atom feed"),
        (Canned(status=406, body=b""), "HTTP 406"),
    ],
)
async def test_failures_are_source_errors(server, canned, message):
    server.route("/rss/cs.CV+cs.LG", canned)
    with pytest.raises(SourceError) as err:
        await fetch(server)
    assert message in str(err.value) and err.value.source == "arxiv"


def test_a_truncated_feed_gives_nothing():
    # Issue 10, item 7: the items before the cut used to be kept, the last one half-read.
    # tests/test_poller_robustness.py covers the whole path (nothing stored, a failed poll).
    body = fixture("arxiv_rss_synthetic.xml")
    cut = body[: body.index(b"<title>Synthetic Diffusion-based")]
    with pytest.raises(SourceError, match="not a complete, well-formed feed"):
        parse_rss(cut)


def test_items_without_id_or_with_unknown_type_are_skipped(caplog):
    body = b"""<?xml version='1.0'?><rss xmlns:arxiv="http://arxiv.org/schemas/atom" version="2.0"><channel>
    <title>t</title>
    <item><title>No link</title><description>x</description></item>
    <item><title>Weird</title><link>https://arxiv.org/abs/2410.00009</link><arxiv:announce_type>bogus</arxiv:announce_type></item>
    <item><title>Fine</title><link>https://arxiv.org/abs/2410.00010</link><arxiv:announce_type>new</arxiv:announce_type>
      <dc:creator xmlns:dc="http://purl.org/dc/elements/1.1/">A. Author</dc:creator>
      <pubDate>Fri, 25 Oct 2024 00:00:00 -0400</pubDate></item>
    </channel></rss>"""
    assert [p.id for p in parse_rss(body)] == ["2410.00010"]
    assert "no arXiv id" in caplog.text and "unknown announce type" in caplog.text


def test_a_paper_listed_twice_in_one_feed_is_returned_once():
    item = (
        b"<item><title>Twice</title><link>https://arxiv.org/abs/2410.00011</link>"
        b"<author>a@example.org (A. Author)</author>"
        b"<pubDate>Fri, 25 Oct 2024 00:00:00 -0400</pubDate><arxiv:announce_type>new</arxiv:announce_type></item>"
    )
    body = (b'<rss xmlns:arxiv="http://arxiv.org/schemas/atom" version="2.0"><channel><title>t</title>'
            + item * 2 + b"</channel></rss>")
    assert len(parse_rss(body)) == 1


def test_an_empty_body_is_a_source_error():
    # Found by tests/test_hostile.py: feedparser gives no `version` at all for b"".
    import pytest as _pytest

    with _pytest.raises(SourceError, match="not an RSS/Atom feed"):
        parse_rss(b"")


async def test_arxiv_requests_keep_three_seconds_apart(server):
    from bot.lookup import PaperLookup
    from bot.sources import HuggingFaceSource
    from bot.sources.base import Pacer

    server.route("/rss/cs.LG", rss("arxiv_rss_weekend_synthetic.xml"))
    server.route("/api/papers/2411.00001", Canned(status=404, body=b"{}"))
    server.route("/api/query", Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml")))
    now = [100.0]
    waits = []

    async def sleep(seconds):
        waits.append(round(seconds, 3))
        now[0] += seconds

    pacer = Pacer(3.0, monotonic=lambda: now[0], sleep=sleep)
    async with make_client(5.0) as client:
        source = ArxivSource(client, server.url, ("cs.LG",), pacer=pacer, api_url=f"{server.url}/api/query")
        lookup = PaperLookup([HuggingFaceSource(client, server.url), source])  # the bot's one arXiv client
        await source.fetch()
        now[0] += 1.0
        await lookup.fetch("2411.00001")
        await source.fetch()
    assert waits == [2.0, 3.0]  # one arXiv request every 3 seconds, polls and lookups together
