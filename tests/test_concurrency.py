"""Many `papers-bot command` processes at once, against one database another process writes to.

Real OS processes, real SQLite locking: each worker process runs several commands through
the real command line (`bot.cli.main`, a fresh connection each, as separate
`papers-bot command` invocations would), all workers started together.
"""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import handlers
from bot.models import ChannelRef, OutboxCounts
from storage import Store

ROOT = Path(__file__).resolve().parent.parent

# argv: go file, config, channel, user, then command texts. Imports, says it is ready
# (go file + ".<pid>"), waits for the go file so that all workers start at once, then
# prints [[exit code, stdout, stderr], ...].
WORKER = textwrap.dedent("""
    import contextlib, io, json, os, sys, time
    from bot.cli import main
    go, config, channel, user, *texts = sys.argv[1:]
    open(f"{go}.{os.getpid()}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.002)
    results = []
    for text in texts:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--config", config, "command", "--channel", channel, "--user", user, text])
            except BaseException:
                import traceback
                traceback.print_exc()
                code = "raised"
        results.append([code, out.getvalue(), err.getvalue()])
    print(json.dumps(results))
""")

# A poll-like writer: many short write transactions (papers stored, source state recorded)
# until the file `stop` exists. Prints how many rounds it wrote.
WRITER = textwrap.dedent("""
    import os, sys, time
    from datetime import datetime, timezone
    from bot.models import Paper
    from storage import Store
    path, stop = sys.argv[1:]
    store = Store(path)
    rounds, deadline = 0, time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        now = datetime.now(timezone.utc)
        papers = [Paper(id=f"2611.{rounds % 500:05d}", title=f"Writer paper {rounds}", summary="x", authors=("A",),
                        categories=("cs.LG",), source="huggingface", upvotes=rounds)]
        store.add_papers(papers, now)
        store.record_source_success("huggingface", now, 1)
        rounds += 1
        time.sleep(0.005)
    print(rounds)
""")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def setup(tmp_path):
    def make(cap: int) -> tuple[Path, Path]:
        db = tmp_path / "bot.db"
        config = tmp_path / "config.toml"
        config.write_text(
            f'[storage]\npath = "{db}"\n'
            "[sources.huggingface]\nenabled = false\n[sources.arxiv]\nenabled = false\n"
            f"[limits]\nmax_subscriptions_per_channel = {cap}\ncommands_per_minute = 1000\n"
        )
        Store(db).close()  # the schema exists: what is tested is the commands, not the first start
        return config, db

    return make


def _start_workers(config: Path, jobs: list[tuple[str, str, list[str]]]) -> list[subprocess.Popen]:
    """Start the workers; once every one has imported the bot, let them all go at once."""
    go = config.parent / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), str(config), channel, user, *texts],
                                cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for channel, user, texts in jobs]
    deadline = time.monotonic() + 60
    while len(list(config.parent.glob("go.*"))) < len(workers) and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), "a worker exited before starting"
        time.sleep(0.01)
    go.touch()
    return workers


def _results(workers: list[subprocess.Popen]) -> list[list]:
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=90)
        assert worker.returncode == 0 and "Traceback" not in err, err[-2000:]
        results += json.loads(out.strip().splitlines()[-1])
    return results


def test_concurrent_subscribes_while_another_process_writes_all_land(setup, tmp_path):
    config, db = setup(cap=100)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the writer is under way
        jobs = [(f"console:team{n % 2}", f"user{n}", [f"subscribe topic{n}x{i}" for i in range(3)]) for n in range(8)]
        results = _results(_start_workers(config, jobs))
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert len(results) == 24
    for code, reply, problems in results:
        assert code == 0 and reply.startswith("Subscribed this channel to `topic"), (code, reply, problems)
        assert "Traceback" not in problems and "locked" not in problems, problems
    assert writer.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert int(out) > 0
    with sqlite3.connect(db) as conn:
        queries = {row[0] for row in conn.execute("SELECT query FROM subscriptions")}
    assert queries == {f"topic{n}x{i}" for n in range(8) for i in range(3)}


def test_the_channel_cap_holds_under_concurrent_subscribes(setup):
    config, db = setup(cap=5)
    # 50 subscribes to one channel at once: 5 processes, 10 different queries each.
    jobs = [("console:capped", f"user{n}", [f"subscribe capped{n}x{i}" for i in range(10)]) for n in range(5)]
    results = _results(_start_workers(config, jobs))
    assert len(results) == 50
    subscribed = [r for r in results if r[1].startswith("Subscribed this channel")]
    refused = [r for r in results if r[1].startswith("This channel already has 5 subscriptions, the limit.")]
    assert len(subscribed) == 5 and all(code == 0 for code, _, _ in subscribed)
    assert len(refused) == 45 and all(code == 1 for code, _, _ in refused)
    assert not any("Traceback" in err for _, _, err in results)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM subscriptions WHERE channel = 'console:capped'").fetchone()[0] == 5


def _hold_write_lock(db: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_database_busy_past_the_timeout_is_a_one_line_try_again(tmp_path, make_config):
    db = tmp_path / "bot.db"
    store = Store(db, busy_timeout=0.2)
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 1000}))
    holder = _hold_write_lock(db)
    try:
        request = handlers.request_from_text(ChannelRef("console", "ml"), "u1", "subscribe diffusion", can_manage=True)
        reply = asyncio.run(handlers.handle(ctx, request))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not reply.ok
    assert reply.text == "The bot's database is busy right now. Try again in a few seconds."
    assert store.subscriptions() == []  # nothing half-written
    store.close()


def test_papers_bot_command_on_a_busy_database_prints_try_again_and_exits_1(setup, tmp_path):
    config, db = setup(cap=5)
    config.write_text(config.read_text().replace("[storage]\n", "[storage]\nbusy_timeout_seconds = 0.3\n"))
    holder = _hold_write_lock(db)
    try:
        proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(config), "command", "--channel",
                               "console:ml", "--user", "u1", "subscribe diffusion"],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "busy" in lines[0] and "try again" in lines[0].lower(), lines
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0] == 0


@pytest.mark.backends
def test_nested_write_transactions_are_savepoints(store):
    from datetime import datetime, timezone

    now = datetime(2026, 11, 27, tzinfo=timezone.utc)
    channel = ChannelRef("console", "ml")
    with store.transaction():
        store.add_subscription(channel, "kept", "u1", now)
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.add_subscription(channel, "rolled back", "u1", now)
                raise RuntimeError("inner fails")
    assert [s.query for s in store.subscriptions()] == ["kept"]


async def test_a_command_while_a_digest_goes_out_keeps_its_change(store, clock, make_config):
    from datetime import datetime, timezone

    from bot.dispatch import Dispatcher
    from bot.models import ChannelSettings, Match, PostResult

    from .fakes import RecordingAdapter, paper

    ml = ChannelRef("console", "ml")
    clock.now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    store.save_channel_settings(ChannelSettings(ml, mode="daily", digest_time="09:00", last_digest_at=clock()),
                                clock())
    store.add_papers([paper("2411.00001", "First")], clock())
    store.enqueue("2411.00001", [Match(1, ml, "x", ())], clock())
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)
    adapter = RecordingAdapter()

    async def post_digest(digest):  # someone changes the channel while the digest is sent
        reply = await handlers.handle(ctx, handlers.request_from_text(ml, "u1", "timezone Asia/Tokyo", can_manage=True))
        assert reply.ok
        return PostResult(ok=True, message_id="d1")

    adapter.post_digest = post_digest
    clock.now = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)
    assert (await Dispatcher(store, {"console": adapter}, clock).dispatch_digests()).sent == 1
    settings = store.channel_settings(ml)
    assert settings.timezone == "Asia/Tokyo"  # not overwritten by the settings read before sending
    assert settings.last_digest_at == clock()


def test_processes_starting_together_on_a_new_database_apply_the_schema_once(tmp_path):
    db = tmp_path / "new" / "bot.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{db}"\n[sources.huggingface]\nenabled = false\n'
                      "[sources.arxiv]\nenabled = false\n")
    results = _results(_start_workers(config, [("console:ml", f"u{n}", [f"subscribe first{n}"]) for n in range(5)]))
    for code, reply, problems in results:
        assert code == 0 and reply.startswith("Subscribed") and "Traceback" not in problems, (reply, problems)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM _sqlite_migrations WHERE name = 'm001_initial'").fetchone()[0] == 1


@pytest.mark.backends
def test_import_respects_the_channel_cap_all_or_nothing(store):
    from datetime import datetime, timezone

    from bot.admin import import_toml
    from bot.errors import ImportFileError

    now = datetime(2026, 11, 27, tzinfo=timezone.utc)
    store.add_subscription(ChannelRef("console", "ml"), "kept", "u1", now)
    text = '[[channel]]\nchannel = "console:ml"\nsubscriptions = ["a", "b", "c"]\n'
    with pytest.raises(ImportFileError, match="console:ml would have more than 3 subscriptions"):
        import_toml(store, text, now, limit=3)
    assert [s.query for s in store.subscriptions()] == ["kept"]
    assert import_toml(store, text, now, limit=4).added == 3


async def test_a_command_never_resends_what_a_running_bot_is_sending(tmp_path, make_config, clock):
    # `papers-bot command ... resume` runs a delivery sweep of its own. It must not take the
    # sends another live process (run) has under way for a crash's leftovers and post them again.
    from bot.app import App
    from bot.models import Match

    from .fakes import RecordingAdapter, paper

    config = make_config()
    a, b = ChannelRef("console", "a"), ChannelRef("console", "b")
    run = App(config, clock=clock, adapters={"console": RecordingAdapter()})
    await run.handle_command(handlers.request_from_text(b, "u1", "pause", can_manage=True))
    run.store.add_papers([paper("2410.00001"), paper("2410.00002")], clock())
    run.store.enqueue("2410.00001", [Match(1, a, "x", ("x in title",))], clock())
    run.store.enqueue("2410.00002", [Match(2, b, "x", ("x in title",))], clock())
    (row,) = run.store.db.execute("SELECT id FROM deliveries WHERE channel = ?", [a.key]).fetchall()
    assert run.store.hold_sender_lease() and run.store.claim_delivery(row[0], clock())  # run is mid-send to a

    other = RecordingAdapter()
    command = App(config, clock=clock, adapters={"console": other})
    reply = await command.handle_command(handlers.request_from_text(b, "u1", "resume", can_manage=True))
    assert reply.ok and reply.queued == 1
    assert [c.channel_id for c, _ in other.posts] == ["b"]  # what the command queued, and nothing of a's
    assert run.store.delivery_counts() == OutboxCounts(sending=1, sent=1)  # a's send is still run's
    await command.aclose()

    await run.aclose()  # run dies mid-send: the next process to deliver settles it, once
    after = RecordingAdapter()
    restarted = App(config, clock=clock, adapters={"console": after})
    await restarted.deliver()
    assert [c.channel_id for c, _ in after.posts] == ["a"]
    assert restarted.store.delivery_counts() == OutboxCounts(sent=2)
    await restarted.aclose()
