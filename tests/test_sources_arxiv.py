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


# A process that makes `count` arXiv API requests through a pacer sharing `path` (as the bot's
# processes on one database do): `papers-bot command show` runs and the roles of README "Roles".
_PACED_PROCESS = """
import asyncio, sys
from pathlib import Path
from bot.sources import ArxivSource, make_client
from bot.sources.base import Pacer

async def main(url, path, count):
    go = Path(path).with_name("go")
    while not go.exists():  # all start together
        await asyncio.sleep(0.01)
    async with make_client(5.0) as client:
        source = ArxivSource(client, url, ("cs.LG",), pacer=Pacer(0.4, shared=Path(path)), api_url=url + "/api/query")
        for _ in range(count):
            await source.fetch_one("1111.2011")

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.parametrize("shared", [True, False])
def test_arxiv_requests_of_several_processes_keep_their_interval_together(server, tmp_path, shared):
    import subprocess
    import sys
    import time

    arrived: list[float] = []

    def answer(_path):
        arrived.append(time.monotonic())  # this machine's clock, as the pacers' shared file holds it
        return Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml"), content_type="application/atom+xml")

    server.route_fn("/api/query", answer)
    script = _PACED_PROCESS if shared else _PACED_PROCESS.replace("shared=Path(path)", "")
    procs = [subprocess.Popen([sys.executable, "-c", script, server.url, str(tmp_path / "bot.db.arxiv.pace"), "2"])
             for _ in range(3)]
    time.sleep(1.0)  # their imports
    (tmp_path / "go").touch()
    assert [proc.wait(60) for proc in procs] == [0, 0, 0]
    gaps = [later - earlier for earlier, later in zip(sorted(arrived), sorted(arrived)[1:], strict=False)]
    assert len(arrived) == 6
    if shared:
        # One request every 0.4 s from the three together, each counted from the end of the one
        # before: a request's arrival is recorded before it is answered, the next one's turn
        # comes 0.4 s after its client read that answer, so a busy machine only widens a gap.
        assert min(gaps) >= 0.4 - 0.01, gaps
    else:  # each paced alone: the others' requests come in between
        assert min(gaps) < 0.3, gaps


async def test_a_shared_pacing_file_that_cannot_be_used_leaves_each_process_pacing_alone(server, tmp_path, caplog):
    import logging

    from bot.sources.base import Pacer

    server.route("/api/query", Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml")))
    (tmp_path / "taken").mkdir()  # a directory where the file would be
    pacer = Pacer(0.01, shared=tmp_path / "taken")
    async with make_client(5.0) as client:
        source = ArxivSource(client, server.url, ("cs.LG",), pacer=pacer, api_url=f"{server.url}/api/query")
        with caplog.at_level(logging.WARNING, logger="bot.sources.base"):
            assert (await source.fetch_one("1111.2011")) is not None
            assert (await source.fetch_one("1111.2011")) is not None
    assert caplog.text.count("paced by this process alone") == 1 and pacer.shared is None


async def test_a_shared_pacing_file_of_another_user_is_not_used(tmp_path, monkeypatch, caplog):
    # In a shared temporary directory another user could make it first (PostgreSQL's files are there).
    import logging
    import os

    from bot.sources.base import Pacer

    path = tmp_path / "bot.db.arxiv.pace"
    path.write_bytes(b"1e9")  # it would make every request wait
    monkeypatch.setattr(os, "getuid", lambda: os.stat(path).st_uid + 1)
    pacer = Pacer(3.0, shared=path)
    with caplog.at_level(logging.WARNING, logger="bot.sources.base"):
        async with pacer:
            pass
    assert "belongs to user" in caplog.text and pacer.shared is None


@pytest.mark.parametrize("content, wait", [("", 0.0), ("not a time", 0.0), ("99.0", 0.0), ("99.0 {boot} 1", 0.0),
                                           ("1e12 {before}", 0.0), ("99.0 {before}", 0.0), ("99.0 {boot}", 2.0),
                                           ("90.0 {boot}", 0.0), ("1e3 {boot}", 3.0)])
async def test_a_shared_pacing_file_gives_the_next_free_start(tmp_path, content, wait):
    # Damaged (a crash mid-write), without its boot (the first version's) or written in an
    # earlier boot (the monotonic clock started again): no wait. An end ahead of the clock
    # (none is: a request writes when it ended) waits the interval, no longer.
    from bot.sources.base import Pacer, _boot

    path = tmp_path / "bot.db.arxiv.pace"
    boot = _boot()
    path.write_text(content.format(boot=repr(boot), before=repr(boot - 3600.0)))
    now = [100.0]
    waits: list[float] = []

    async def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    pacer = Pacer(3.0, monotonic=lambda: now[0], sleep=sleep, shared=path)
    async with pacer:
        pass
    assert waits == ([wait] if wait else [])
    start, taken_in = map(float, path.read_text().split())
    assert start == 100.0 + wait and abs(taken_in - boot) < 1.0  # when its request ended, for the next one


async def test_the_bot_paces_arxiv_with_the_file_beside_its_database(tmp_path, server):
    import tempfile
    from pathlib import Path

    from bot.app import beside_database, pacing_files
    from bot.config import Secrets, parse_config

    from .test_app import make_app

    app = make_app(tmp_path, server)
    try:
        (arxiv,) = [source for source in app.lookup.sources if isinstance(source, ArxivSource)]
        assert arxiv.pacer.shared == tmp_path / "bot.db.arxiv.pace"
    finally:
        await app.aclose()
    # PostgreSQL: no file of the bot's own; this machine's processes on that database share one in /tmp.
    postgres = parse_config({"storage": {"url": "postgresql://postgres@127.0.0.1:5432/test"}}, Secrets({}))
    other = parse_config({"storage": {"url": "postgresql://postgres@127.0.0.1:5432/other"}}, Secrets({}))
    assert beside_database(postgres) is None
    assert pacing_files(postgres) == pacing_files(postgres) != pacing_files(other)
    assert Path(pacing_files(postgres)).parent == Path(tempfile.gettempdir())


async def test_pacers_sharing_a_file_asking_together_go_one_at_a_time_an_interval_apart(tmp_path):
    # Four pacers on one file (four processes: four `papers-bot command show` at once; each
    # pacer locks the file through a descriptor of its own, as another process would). The
    # first version took starts ahead in the file, and took the fourth's, two intervals
    # ahead, for one of before a reboot: it went at once, beside the first.
    import asyncio
    import time

    from bot.sources.base import Pacer

    path = tmp_path / "bot.db.arxiv.pace"
    requests: list[tuple[float, float]] = []

    async def request() -> None:
        async with Pacer(0.1, shared=path):
            began = time.monotonic()
            await asyncio.sleep(0.05)
            requests.append((began, time.monotonic()))

    await asyncio.gather(*(request() for _ in range(4)))
    requests.sort()
    assert len(requests) == 4
    # (less a microsecond: asyncio wakes a sleeper up to its clock's resolution early)
    assert all(later[0] - earlier[1] >= 0.1 - 1e-6 for earlier, later in zip(requests, requests[1:], strict=False)), \
        requests


@pytest.mark.parametrize("path", [":memory:", "", "file:bot?mode=memory&cache=shared"])
def test_an_in_memory_database_shares_no_pacing_file(path):
    # No other process opens it: nothing to share with (a file in the temporary directory,
    # named after ":memory:", would pace every in-memory bot and test run of the user together).
    from bot.app import pacing_files
    from bot.config import Secrets, parse_config

    assert pacing_files(parse_config({"storage": {"path": path}}, Secrets({}))) is None


def test_the_pacing_file_of_a_postgres_database_is_named_without_its_password():
    # The temporary directory is listed by every user: a digest of the URL with its password
    # would let one try passwords against it offline. The same database is the same file.
    from bot.app import pacing_files
    from bot.config import Secrets, parse_config

    def name(url: str) -> str | None:
        return pacing_files(parse_config({"storage": {"url": url}}, Secrets({})))

    plain = name("postgresql://papers@db.example:5432/papers")
    assert name("postgresql://papers:hunter2@db.example:5432/papers") == plain
    assert name("postgresql://papers@db.example:5432/papers?password=hunter2&sslmode=require") == \
        name("postgresql://papers@db.example:5432/papers?sslmode=require") != plain
    assert name("postgresql://papers@db.example:5432/other") != plain


async def test_a_shared_pacing_file_that_is_a_hard_link_is_not_written(tmp_path, caplog):
    # In a shared temporary directory, another user could link one of this user's files under
    # its name (where fs.protected_hardlinks is off): it would be truncated and overwritten.
    import logging
    import os

    from bot.sources.base import Pacer

    precious = tmp_path / "precious"
    precious.write_text("this user's own data")
    os.link(precious, tmp_path / "bot.db.arxiv.pace")
    pacer = Pacer(3.0, shared=tmp_path / "bot.db.arxiv.pace")
    with caplog.at_level(logging.WARNING, logger="bot.sources.base"):
        async with pacer:
            pass
    assert precious.read_text() == "this user's own data"
    assert "paced by this process alone" in caplog.text and pacer.shared is None


# Processes that make `count` arXiv API requests each through pacers of `interval` seconds
# sharing `path`, all released together.
_OVERLAP_PROCESS = """
import asyncio, sys
from pathlib import Path
from bot.sources import ArxivSource, make_client
from bot.sources.base import Pacer

async def main(url, path, count, interval):
    go = Path(path).with_name("go")
    while not go.exists():
        await asyncio.sleep(0.01)
    async with make_client(10.0) as client:
        pacer = Pacer(interval, shared=Path(path))
        source = ArxivSource(client, url, ("cs.LG",), pacer=pacer, api_url=url + "/api/query")
        for _ in range(count):
            await source.fetch_one("1111.2011")

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def test_arxiv_requests_of_several_processes_are_one_at_a_time_and_an_interval_after_the_last_ended(
        server, tmp_path):
    # arXiv's terms: one request every 3 seconds, and a single connection at a time. A request
    # that takes longer than the interval is over before another process's begins, as in one
    # process (measured from the end of the last: its answer is read in full first).
    import subprocess
    import sys
    import threading
    import time

    served: list[tuple[float, float]] = []
    lock = threading.Lock()

    def answer(_path):
        came = time.monotonic()
        time.sleep(0.5)  # a slow answer: longer than the interval
        with lock:
            served.append((came, time.monotonic()))
        return Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml"), content_type="application/atom+xml")

    server.route_fn("/api/query", answer)
    procs = [subprocess.Popen([sys.executable, "-c", _OVERLAP_PROCESS, server.url, str(tmp_path / "bot.db.arxiv.pace"),
                               "2", "0.2"]) for _ in range(2)]
    time.sleep(1.0)  # their imports
    (tmp_path / "go").touch()
    assert [proc.wait(60) for proc in procs] == [0, 0]
    served.sort()
    assert len(served) == 4
    # Each came after the one before was answered, and at least the interval after (the
    # client reads the answer after the server sent it: lateness only widens the gap).
    assert all(later[0] - earlier[1] >= 0.2 - 0.01 for earlier, later in zip(served, served[1:], strict=False)), served


@pytest.mark.parametrize("holder", [True, False])
async def test_a_request_cancelled_while_waiting_its_turn_leaves_both_locks_free(tmp_path, holder):
    # Cancelled while another process's request holds the file (`holder`), or while waiting
    # the interval after the last one with the file locked: the file's lock and the pacer's
    # own are both let go (a leaked one would stop every process's requests for good).
    import asyncio
    import fcntl
    import os

    from bot.sources.base import Pacer

    path = tmp_path / "bot.db.arxiv.pace"
    first, second = Pacer(0.3, shared=path), Pacer(0.3, shared=path)
    async with first:
        pass
    other = os.open(path, os.O_RDWR)
    try:
        if holder:
            fcntl.flock(other, fcntl.LOCK_EX)  # another process's request under way
        waiting = asyncio.create_task(second.__aenter__())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        if holder:
            fcntl.flock(other, fcntl.LOCK_UN)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises BlockingIOError if it were held
        fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(other)
    async with second:  # its own lock free too
        assert second.shared == path
