"""Operator tasks: backfill, export, import."""

import io
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

import bot.sources.arxiv
from bot.admin import Progress, backfill, export_toml, import_toml
from bot.cli import main
from bot.errors import ImportFileError
from bot.models import ChannelRef, ChannelSettings, MostSavedSchedule
from bot.query import normalize_query
from bot.sources import ArxivSource, HuggingFaceSource, make_client
from bot.sources.base import Pacer
from fakes.http import Canned
from storage import Store

from .fakes import fixture

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
TODAY = NOW.date()


def hf_for_day(path):
    """The real 2024-10-25 list for one day, an empty weekend list for another, 400 for a third."""
    day = parse_qs(urlsplit(path).query)["date"][0]
    if day == "2026-11-27":
        return Canned(body=fixture("hf_daily_papers_2024-10-25.json"))
    if day == "2026-11-26":
        return Canned(status=400, body=b'{"error":"Invalid date"}')
    return Canned(body=b"[]")


def arxiv_page(path):
    """Synthetic arXiv API pages (documented Atom shape) of 3 results, 2 per page."""
    query = parse_qs(urlsplit(path).query)
    start = int(query["start"][0])
    ids = ["2611.00001", "2611.00002", "2611.00003"][start:start + int(query["max_results"][0])]
    entries = "".join(
        f"<entry><id>http://arxiv.org/abs/{i}v1</id><title>Synthetic backfilled paper {i}</title>"
        f"<summary>Synthetic abstract about diffusion.</summary><published>2026-11-20T10:00:00Z</published>"
        f"<author><name>Ada Example</name></author><category term='cs.LG'/></entry>"
        for i in ids
    )
    return Canned(body=(
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom" '
        'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"><title>q</title>'
        f"<opensearch:totalResults>3</opensearch:totalResults>{entries}</feed>").encode())


async def test_backfill_stores_past_days_and_posts_nothing(store, server, monkeypatch):
    monkeypatch.setattr(bot.sources.arxiv, "ARXIV_PAGE", 2)
    server.route_fn("/api/daily_papers", hf_for_day)
    server.route_fn("/api/query", arxiv_page)
    store.add_subscription(ChannelRef("console", "ml"), "diffusion", "u1", NOW)
    out = io.StringIO()
    sleeps = []
    clock = [0.0]  # a monotonic clock that only the pacer's sleeps move

    async def fake_sleep(seconds):
        sleeps.append(seconds)
        clock[0] += seconds

    async with make_client(2.0) as client:
        sources = [HuggingFaceSource(client, server.url),
                   ArxivSource(client, server.url, ("cs.LG", "cs.CL"), api_url=f"{server.url}/api/query",
                               pacer=Pacer(3.0, monotonic=lambda: clock[0], sleep=fake_sleep))]
        report = await backfill(store, sources, days=4, today=TODAY, now=NOW, progress=Progress(6, out))
    assert report.stored == {"huggingface": 6, "arxiv": 3}
    assert store.count_pending() == 0  # history is never posted
    hf_days = [parse_qs(urlsplit(raw).query)["date"][0]
               for path, raw, _ in server.requests if path == "/api/daily_papers"]
    assert hf_days == ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"]  # not today: the poller's
    arxiv_queries = [parse_qs(urlsplit(raw).query) for path, raw, _ in server.requests if path == "/api/query"]
    # Two days (4 and 3 days back), two pages each; never newer than three days.
    assert [q["start"][0] for q in arxiv_queries] == ["0", "2", "0", "2"]
    assert arxiv_queries[0]["search_query"][0] == \
        "(cat:cs.LG OR cat:cs.CL) AND submittedDate:[202611240000 TO 202611242359]"
    assert sleeps == [3.0, 3.0, 3.0]  # one arXiv request every 3 seconds
    lines = out.getvalue().splitlines()
    assert lines[0] == "backfill [####--------------------] 1/6 huggingface 2026-11-24: 0 listed"
    assert "huggingface 2026-11-26: failed (HTTP 400 from http://127.0.0.1" in lines[2]
    assert lines[-1].startswith("backfill [########################] 6/6 arxiv 2026-11-25: 3 submitted")


@pytest.fixture
def setup(store):
    ml, bots = ChannelRef("console", "ml"), ChannelRef("slack", "C123")
    for channel, query in ((ml, "diffusion"), (ml, '"large language model" -video'), (bots, 'author:"Yann LeCun"')):
        store.add_subscription(channel, normalize_query(query), "u1", NOW)
    store.save_channel_settings(ChannelSettings(bots, mode="weekly", digest_day="fri", digest_time="16:00",
                                                timezone="Europe/Berlin", paused=True), NOW)
    return store


def test_export_then_import_into_an_empty_store_is_the_same(setup, tmp_path):
    text = export_toml(setup, NOW)
    assert '[[channel]]\nchannel = "slack:C123"\nmode = "weekly"' in text
    assert '    "\\"large language model\\" -video",' in text
    fresh = Store(tmp_path / "fresh.db")
    report = import_toml(fresh, text, NOW)
    assert report.line() == "imported 2 channels: 3 subscriptions added, 0 already present"
    assert [(s.channel.key, s.query) for s in fresh.subscriptions()] == \
        [(s.channel.key, s.query) for s in setup.subscriptions()]
    settings = fresh.channel_settings(ChannelRef("slack", "C123"))
    assert (settings.mode, settings.digest_day, settings.digest_time, settings.timezone, settings.paused) == (
        "weekly", "fri", "16:00", "Europe/Berlin", True)
    assert export_toml(fresh, NOW) == text
    again = import_toml(fresh, text, NOW)  # idempotent
    assert (again.added, again.present) == (0, 3) and len(fresh.subscriptions()) == 3
    fresh.close()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[channel]\n", "not valid TOML"),
        ('version = 2\n', "unknown top-level key 'version'"),
        ('[[channel]]\nchannel = "irc:x"\n', "channel entry 1: bad channel 'irc:x'"),
        ('[[channel]]\nchannel = "console:a"\ncolour = "red"\n', "channel entry 1: unknown key 'colour'"),
        ('[[channel]]\nchannel = "console:a"\nmode = "hourly"\n', "channel console:a: mode must be one of"),
        ('[[channel]]\nchannel = "console:a"\ntimezone = "Mars/Base"\n', "unknown time zone 'Mars/Base'"),
        ('[[channel]]\nchannel = "console:a"\ntimezone = "localtime"\n', "unknown time zone 'localtime'"),
        ('[[channel]]\nchannel = "console:a"\ndigest_time = "25:00"\n', "digest_time must be HH:MM"),
        ('[[channel]]\nchannel = "console:a"\npaused = "no"\n', "paused must be true or false"),
        ('[[channel]]\nchannel = "console:a"\nsubscriptions = "diffusion"\n', "must be a list of strings"),
        ('[[channel]]\nchannel = "console:a"\nsubscriptions = ["ok", "(broken"]\n',
         "subscription '(broken': unclosed ("),
        ("channel = 3\n", "channel must be [[channel]] tables"),  # was a TypeError's traceback
        ('[channel]\nchannel = "console:a"\n', "channel must be [[channel]] tables"),
        ('[[channel]]\nchannel = "console:first"\nmode = "daily"\n', "channel console:first: listed twice"),
    ],
)
@pytest.mark.backends
def test_bad_imports_name_the_entry_and_write_nothing(store, text, message):
    good = '[[channel]]\nchannel = "console:first"\nsubscriptions = ["diffusion"]\n\n'
    with pytest.raises(ImportFileError) as err:
        import_toml(store, good + text if text.startswith("[[channel]]\n") else text, NOW)
    assert message in str(err.value).replace("channel entry 2", "channel entry 1")
    assert store.subscriptions() == [] and store.all_channel_settings() == []


def test_cli_export_and_import(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "a.db"}"\n')
    assert main(["--config", str(config), "command", "--channel", "console:ml", "--user", "u",
                 "subscribe diffusion"]) == 0
    exported = tmp_path / "subs.toml"
    assert main(["--config", str(config), "export", "--output", str(exported)]) == 0
    other = tmp_path / "other.toml"
    other.write_text(f'[storage]\npath = "{tmp_path / "b.db"}"\n')
    capsys.readouterr()
    assert main(["--config", str(other), "import", str(exported)]) == 0
    assert capsys.readouterr().out.strip() == "imported 1 channel: 1 subscription added, 0 already present"
    assert main(["--config", str(other), "export"]) == 0
    assert 'channel = "console:ml"' in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[channel]]\nchannel = "nope"\n')
    assert main(["--config", str(other), "import", str(bad)]) == 1
    assert "nothing was imported" in capsys.readouterr().err
    assert main(["--config", str(other), "import", str(tmp_path / "missing.toml")]) == 2


def test_cli_backfill_checks_days(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "a.db"}"\n')
    assert main(["--config", str(config), "backfill", "--days", "0"]) == 2
    assert "--days must be from 1 to 90" in capsys.readouterr().err


def test_cli_backfill_runs_against_the_configured_sources(tmp_path, capsys, server):
    # The command backfills the days before today's (UTC) date, whatever it is: the real list
    # is served for the first of the two, an empty one for the second.
    first = (datetime.now(timezone.utc) - timedelta(days=2)).date().isoformat()

    def hf_two_days_back(path):
        day = parse_qs(urlsplit(path).query)["date"][0]
        return Canned(body=fixture("hf_daily_papers_2024-10-25.json")) if day == first else Canned(body=b"[]")

    server.route_fn("/api/daily_papers", hf_two_days_back)
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "a.db"}"\n[sources.huggingface]\nbase_url = "{server.url}"\n'
                      "[sources.arxiv]\nenabled = false\n")
    assert main(["--config", str(config), "backfill", "--days", "2"]) == 0
    captured = capsys.readouterr()
    assert "backfill: stored 6 new papers from Hugging Face\n" in captured.out  # arXiv is disabled: not named
    assert "2/2" in captured.err


def test_the_weekly_most_saved_digest_is_exported_and_imported(setup, tmp_path):
    bots = ChannelRef("slack", "C123")
    setup.set_most_saved_schedule(bots, MostSavedSchedule(bots, "fri", "16:00"), NOW)
    text = export_toml(setup, NOW)
    assert 'channel = "slack:C123"' in text and 'most_saved = "fri 16:00"' in text and 'most_saved = "off"' in text
    fresh = Store(tmp_path / "fresh.db")
    import_toml(fresh, text, NOW)
    assert [(m.channel, m.day, m.time) for m in fresh.most_saved_schedules()] == [(bots, "fri", "16:00")]
    assert export_toml(fresh, NOW) == text
    import_toml(fresh, text.replace('most_saved = "fri 16:00"', 'most_saved = "off"'), NOW)
    assert fresh.most_saved_schedules() == []
    with pytest.raises(ImportFileError, match="most_saved must be"):
        import_toml(fresh, text.replace('most_saved = "off"', 'most_saved = "someday"'), NOW)
    fresh.close()


def test_followups_off_survives_export_and_import(setup, tmp_path):
    """`followups off` is a channel setting: an export keeps it, an import restores it."""
    bots = ChannelRef("slack", "C123")
    setup.set_followups(bots, False, NOW)
    text = export_toml(setup, NOW)
    assert text.count("followups = false") == 1 and text.count("followups = true") == 1
    fresh = Store(tmp_path / "fresh.db")
    import_toml(fresh, text, NOW)
    assert fresh.followups_enabled(bots) is False and fresh.followups_enabled(ChannelRef("console", "ml")) is True
    assert export_toml(fresh, NOW) == text
    import_toml(fresh, text.replace("followups = false", "followups = true"), NOW)
    assert fresh.followups_enabled(bots) is True
    import_toml(fresh, text.replace("followups = false\n", ""), NOW)  # absent: left as it is
    assert fresh.followups_enabled(bots) is True
    with pytest.raises(ImportFileError, match="followups must be true or false"):
        import_toml(fresh, text.replace("followups = false", 'followups = "off"'), NOW)
    fresh.close()


EMPTY_FEED = b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>x</title></feed>'


def test_cli_import_looks_up_like_examples_as_subscribe_does_and_refuses_unknown_ones(tmp_path, capsys):
    # `subscribe like:ID` looks up an example it has not stored and refuses one nobody knows;
    # import took any id and stored a subscription that could never match anything.
    import json

    from fakes.http import FakeHTTPServer

    hf_paper = json.loads(fixture("hf_daily_papers_2026-03-06_item.json"))[0]["paper"]  # 2602.23229
    with FakeHTTPServer() as server:
        config = tmp_path / "config.toml"
        config.write_text(f'[storage]\npath = "{tmp_path / "a.db"}"\n'
                          f'[sources.huggingface]\nbase_url = "{server.url}"\n'
                          f'[sources.arxiv]\nbase_url = "{server.url}"\napi_url = "{server.url}/api/query"\n')
        server.route("/api/papers/2602.23229", Canned(body=json.dumps(hf_paper).encode()))
        server.route("/api/papers/2411.99999", Canned(status=404, body=b"{}"))
        server.route("/api/query", Canned(body=EMPTY_FEED))

        def imported(*queries: str) -> tuple[int, str, str]:
            path = tmp_path / "subs.toml"
            path.write_text('[[channel]]\nchannel = "console:ml"\nsubscriptions = [%s]\n'
                            % ", ".join(json.dumps(q) for q in queries))
            code = main(["--config", str(config), "import", str(path)])
            out, err = capsys.readouterr()
            return code, out, err

        code, _, err = imported("diffusion", "like:2411.99999")
        assert code == 1 and err.strip().endswith(
            "channel console:ml: subscription 'like:2411.99999': the example 2411.99999 is unknown "
            "(neither Hugging Face nor arXiv knows it); nothing was imported")
        code, _, err = imported("like:9913.99999")  # a typo: not worth a request
        assert code == 1 and "'like:9913.99999': 9913.99999 is not an arXiv id: 9913 is no year and month" in err
        assert server.paths().count("/api/papers/9913.99999") == 0
        server.route("/api/papers/2411.88888", Canned(status=500, body=b""))
        server.route("/api/query", Canned(status=503, body=b""))
        code, _, err = imported("like:2411.88888")
        assert code == 1 and "could not look up the example 2411.88888 right now (" in err and "try again later" in err
        # Its arXiv requests keep the pace of every process on this database (bot.app.pacing_files).
        assert (tmp_path / "a.db.arxiv.pace").exists()
        store = Store(str(tmp_path / "a.db"))
        assert store.subscriptions() == []  # all or nothing: not even `diffusion`

        code, out, _ = imported("diffusion", "like:2602.23229")  # known to Hugging Face: stored, as subscribe does
        assert code == 0 and out.strip() == "imported 1 channel: 2 subscriptions added, 0 already present"
        assert store.get_paper("2602.23229") is not None
        assert [s.query for s in store.subscriptions()] == ["diffusion", "like:2602.23229"]
        requests = len(server.requests)
        assert imported("diffusion", "like:2602.23229")[0] == 0 and len(server.requests) == requests  # stored now
        store.close()


@pytest.mark.backends
def test_import_refuses_a_like_example_the_store_lacks(store):
    text = '[[channel]]\nchannel = "console:ml"\nsubscriptions = ["diffusion", "like:2411.99999 -survey"]\n'
    with pytest.raises(ImportFileError, match="'like:2411.99999 -survey': the example 2411.99999 is unknown "
                                              r"\(not stored\)"):
        import_toml(store, text, NOW)
    assert store.subscriptions() == []
