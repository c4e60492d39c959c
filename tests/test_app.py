"""The long-running loop: schedule ticked from the event loop, backoff, clean stop."""

import asyncio
import io
import logging
import random
import threading

import handlers
from bot.app import App, _Runner, backoff_seconds
from bot.cli import RedactSecrets
from bot.config import Secrets, parse_config
from bot.models import ChannelRef, Match
from fakes.http import Canned

from .fakes import RecordingAdapter, hf_json, paper


def make_app(tmp_path, server, clock=None, out=None):
    config = parse_config(
        {
            "storage": {"path": str(tmp_path / "bot.db")},
            "sources": {
                "huggingface": {"base_url": server.url},
                "arxiv": {"enabled": False},
            },
            "delivery": {"max_age_days": 100000},  # the fixture was listed in 2024
        },
        Secrets({}),
    )
    kwargs = {"stdout": out or io.StringIO()}
    if clock is not None:
        kwargs["clock"] = clock
    return App(config, **kwargs)


async def wait_for(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_run_polls_at_start_delivers_and_stops(tmp_path, server):
    server.route("/api/daily_papers", hf_json())
    out = io.StringIO()
    app = make_app(tmp_path, server, out=out)
    await app.handle_command(handlers.request_from_text(ChannelRef("console", "ml"), "u1", "subscribe diffusion"))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop, tick=0.01))
    await wait_for(lambda: out.getvalue().count("[console:ml]") == 2)
    stop.set()
    await asyncio.wait_for(task, 5)
    await app.aclose()
    assert "SMITE: Segment Me In TimE" in out.getvalue()
    assert server.paths() == ["/api/daily_papers"]


async def test_a_failing_source_is_retried_with_backoff_then_recovers(tmp_path, server, clock, caplog):
    server.route("/api/daily_papers", Canned(status=500, body=b""), hf_json())
    app = make_app(tmp_path, server, clock=clock)
    runner = _Runner(app)
    (source,) = app.sources
    runner._start_poll(source)
    await wait_for(lambda: source.name in runner.retry_at)
    await asyncio.gather(*runner.tasks)
    assert "poll failed (1 in a row); retrying in" in caplog.text
    runner._start_poll(source)  # the regular interval firing during backoff does nothing
    runner._retry_due()  # nor does the retry check before the time
    assert len(server.requests) == 1
    clock.advance(seconds=60)
    runner._retry_due()
    await wait_for(lambda: len(server.requests) == 2 and not runner.tasks)
    assert source.name not in runner.retry_at
    assert app.store.source_state("huggingface").consecutive_failures == 0
    await app.aclose()


async def test_a_failing_job_does_not_stop_the_others(tmp_path, server, caplog):
    app = make_app(tmp_path, server)
    runner = _Runner(app)
    ran = []

    def broken():
        raise RuntimeError("job bug")

    runner.scheduler.every(1).seconds.do(runner._safe, broken)
    runner.scheduler.every(1).seconds.do(runner._safe, lambda: ran.append(1))
    runner.scheduler.run_all()
    assert ran == [1] and "scheduled job broken failed" in caplog.text
    await app.aclose()


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    rng = random.Random(7)
    delays = [backoff_seconds(n, 3600, rng) for n in range(1, 8)]
    assert 24 <= delays[0] <= 36 and 48 <= delays[1] <= 72 and 96 <= delays[2] <= 144
    assert backoff_seconds(50, 600, rng) <= 720  # never much beyond the poll interval


def test_tokens_never_reach_the_log(caplog):
    token = "xoxb-1234567890-secret"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets([token]))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        logger.error("slack said invalid_auth for %s", token)
    finally:
        logger.removeHandler(handler)
    assert token not in stream.getvalue() and "[redacted]" in stream.getvalue()


async def test_a_backfill_is_posted_as_part_of_the_command(tmp_path, server):
    server.route("/api/daily_papers", hf_json())
    out = io.StringIO()
    app = make_app(tmp_path, server, out=out)
    await app.poll_once()  # history, stored before any subscription: nothing posted
    assert out.getvalue() == ""
    reply = await app.handle_command(handlers.request_from_text(ChannelRef("console", "ml"), "u1",
                                                    "subscribe diffusion --backfill 5"))
    assert reply.queued == 2 and "Backfill: posting 2 recent matches now." in reply.text
    assert out.getvalue().count("[console:ml]") == 2
    await app.aclose()


async def test_admin_channel_hears_once_of_a_failing_source_and_once_of_its_recovery(tmp_path, server):
    from bot.config import Secrets, parse_config

    from .fakes import RecordingAdapter

    server.route("/api/daily_papers", Canned(status=503, body=b""), Canned(status=503, body=b""),
                 Canned(status=503, body=b""), Canned(status=503, body=b""), Canned(body=b"[]"))
    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                           "sources": {"huggingface": {"base_url": server.url}, "arxiv": {"enabled": False}},
                           "delivery": {"admin_channel": "console:ops", "source_failure_notice_after": 3}},
                          Secrets({}))
    admin = RecordingAdapter()
    app = App(config, adapters={"console": admin})
    for _ in range(5):
        await app.poll_once()
    await app.aclose()
    notices = [text for channel, text in admin.posts]
    assert [c.key for c, _ in admin.posts] == ["console:ops", "console:ops"]
    assert notices[0].startswith("papers-bot: huggingface has failed 3 times in a row (last error: HTTP 503 from")
    assert notices[1] == "papers-bot: huggingface works again, after 4 failed polls."


async def test_conditional_requests_send_the_validators_back(tmp_path, server):
    server.route("/api/daily_papers",
                 Canned(body=b"[]", headers={"ETag": '"v1"', "Last-Modified": "Fri, 27 Nov 2026 10:00:00 GMT"}),
                 Canned(status=304, body=b""))
    app = make_app(tmp_path, server)
    first, _ = await app.poll_once()
    second, _ = await app.poll_once()
    await app.aclose()
    assert server.requests[0][2].get("If-None-Match") is None  # never an empty validator
    assert server.requests[1][2]["If-None-Match"] == '"v1"'
    assert server.requests[1][2]["If-Modified-Since"] == "Fri, 27 Nov 2026 10:00:00 GMT"
    assert second[0].line() == "huggingface: not modified since the last poll"
    # A restarted bot still has them: they are stored.
    again = make_app(tmp_path, server)
    server.route("/api/daily_papers", Canned(status=304, body=b""))
    await again.poll_once()
    await again.aclose()
    assert server.requests[-1][2]["If-None-Match"] == '"v1"'


async def test_health_and_metrics_endpoints(tmp_path, server, unused_tcp_port):
    import aiohttp

    from bot.config import Secrets, parse_config

    server.route("/api/daily_papers", Canned(status=500, body=b""))
    config = parse_config({"storage": {"path": str(tmp_path / "bot.db")},
                           "sources": {"huggingface": {"base_url": server.url}, "arxiv": {"enabled": False}},
                           "metrics": {"port": unused_tcp_port},
                           "delivery": {"source_failure_notice_after": 2}}, Secrets({}))
    app = App(config, stdout=io.StringIO())
    await app.start_frontends()
    base = f"http://127.0.0.1:{unused_tcp_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        await app.poll_once()
        await app.poll_once()
        async with session.get(f"{base}/healthz") as response:
            body = await response.json()
            assert response.status == 503 and body["sources"]["huggingface"]["consecutive_failures"] == 2
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
    await app.stop_frontends()
    await app.aclose()
    assert 'papers_bot_source_consecutive_failures{source="huggingface"} 2.0' in text
    assert 'papers_bot_deliveries{status="pending"} 0.0' in text and "papers_bot_papers 0.0" in text


async def test_metrics_on_a_broken_database_is_a_503_not_a_traceback(make_config, unused_tcp_port, caplog):
    import aiohttp

    from bot.errors import StorageBusy
    from bot.health import start_metrics

    app = App(make_config(metrics={"port": unused_tcp_port}), stdout=io.StringIO())

    def busy(*args, **kwargs):
        raise StorageBusy("the database is busy (another papers-bot process is writing); try again", app.store.path)

    app.store.delivery_counts = busy
    served = await start_metrics(app.store, app.config, unused_tcp_port)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as response:
            assert response.status == 503 and (await response.json())["status"] == "storage"
    await served.cleanup()
    await app.aclose()
    assert not [r for r in caplog.records if r.exc_info] and "busy" in caplog.text


def test_status_command_line(tmp_path, capsys):
    from bot.cli import main

    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "bot.db"}"\n[sources.arxiv]\nenabled = false\n')
    main(["--config", str(config), "command", "--channel", "console:ml", "--user", "u", "subscribe diffusion"])
    capsys.readouterr()
    assert main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "• huggingface: last success never" in out and "• arxiv: disabled" in out
    assert "Queue: 0 pending, 0 sent, 0 failed; last post never." in out
    assert "• console:ml: 1 subscription, instant cards (time zone UTC), 0 pending" in out


async def test_a_command_is_answered_even_when_sending_what_it_queued_fails(tmp_path, make_config, caplog):
    from bot.errors import StorageBusy

    app = App(make_config(), adapters={"console": RecordingAdapter()})
    await app.handle_command(handlers.request_from_text(ChannelRef("console", "ml"), "u1", "pause", can_manage=True))
    app.store.add_papers([paper("2410.00001")], app.clock())
    app.store.enqueue("2410.00001", [Match(1, ChannelRef("console", "ml"), "x", ("x in title",))], app.clock())

    async def busy():
        raise StorageBusy("the database is busy; try again", app.store.path)

    app.deliver = busy  # the resume itself is stored; only the sending right after fails
    request = handlers.request_from_text(ChannelRef("console", "ml"), "u1", "resume", can_manage=True)
    reply = await app.handle_command(request)
    assert reply.ok and reply.text.startswith("Resumed.")
    assert not app.store.channel_settings(ChannelRef("console", "ml")).paused
    assert "waits for the next sweep" in caplog.text and "Traceback" not in caplog.text
    await app.aclose()


async def test_a_busy_database_during_a_sweep_is_one_line_not_a_traceback(make_config, caplog):
    from bot.errors import StorageBusy

    app = App(make_config(), adapters={"console": RecordingAdapter()})

    async def busy():
        raise StorageBusy("the database is busy (another papers-bot process is writing); try again", app.store.path)

    app.deliver = busy
    await _Runner(app)._dispatch()
    (record,) = [r for r in caplog.records if r.name == "bot.app"]
    assert record.levelname == "WARNING" and record.exc_info is None and "busy" in record.getMessage()
    await app.aclose()


async def test_sweeps_of_one_process_never_overlap_and_calls_during_one_coalesce(make_config):
    # The schedule's ticks, the sweep after a poll and a command's sending all call deliver();
    # overlapping sweeps served more channels at once than max_concurrent_channels allows.
    from bot.dispatch import DispatchReport

    app = App(make_config(), adapters={"console": RecordingAdapter()})
    running, most, sweeps = 0, 0, 0
    release = asyncio.Event()

    async def slow_sweep():
        nonlocal running, most, sweeps
        running += 1
        most = max(most, running)
        sweeps += 1
        await release.wait()
        running -= 1
        return DispatchReport(sent=1)

    app._sweep = slow_sweep
    first = asyncio.create_task(app.deliver())
    await wait_for(lambda: sweeps == 1)
    second = asyncio.create_task(app.deliver())  # waits for the first, then sweeps
    await asyncio.sleep(0.05)
    third = await app.deliver()  # one already waits: returns at once, with nothing done
    assert third == DispatchReport() and sweeps == 1
    release.set()
    assert (await first).sent == 1 and (await second).sent == 1
    assert sweeps == 2 and most == 1
    await app.aclose()


def test_the_loops_worker_threads_are_all_started_before_any_call_needs_one():
    # asyncio's default executor starts a thread on demand, on the loop, which then waits for
    # it to get a CPU and the GIL: 1.2 s once in bench.pipeline, while the matcher held the GIL.
    from bot.app import WORKER_THREADS, start_worker_threads

    def workers() -> set[int]:
        return {t.ident or 0 for t in threading.enumerate() if t.name.startswith("papers-bot-worker")}

    async def main() -> set[int]:
        await start_worker_threads()
        started = workers()
        assert len(started) == WORKER_THREADS
        # As many blocking calls at once as there are threads, and more: none starts a thread.
        gate = threading.Event()
        calls = [asyncio.ensure_future(asyncio.to_thread(gate.wait, 10)) for _ in range(WORKER_THREADS + 2)]
        await asyncio.sleep(0.1)
        assert workers() == started
        gate.set()
        assert all(await asyncio.gather(*calls))
        await start_worker_threads()  # once per loop
        assert workers() == started
        return started

    started = asyncio.run(main())
    assert not workers() & started  # shut down with the loop


async def test_run_starts_the_worker_threads_first_and_shortens_the_switch_interval_while_it_runs(tmp_path, server):
    import sys

    from bot.app import SWITCH_INTERVAL

    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL
    app = make_app(tmp_path, server)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop, tick=0.05))
    try:
        await wait_for(lambda: any(t.name.startswith("papers-bot-worker") for t in threading.enumerate()))
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    finally:
        stop.set()
        await task
        await app.aclose()
    assert sys.getswitchinterval() == before
