"""Cooperating processes: `papers-bot run --role poller|deliverer|frontend` sharing one database.

The leases and claims as storage sees them (two Stores on one database are two processes to
it), then real `papers-bot run --role ...` subprocesses against the fake servers: one poller
elected and replaced after SIGKILL; two deliverers sending one outbox, every delivery once,
each channel at the fake Slack's pace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bench.faults import Listing
from bot.app import App
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Match, OutboxCounts
from fakes.http import Canned, FakeHTTPServer
from fakes.slack import FakeSlack
from storage import Store, open_store

from .fakes import RecordingAdapter, due_now, paper

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
A = ChannelRef("console", "a")


def queued(store, channels, papers: int, now=T0, prefix: str = "2411") -> list[str]:
    """`papers` papers owed to each of `channels` (one subscription each), due at `now`."""
    ids = [f"{prefix}.{n:05d}" for n in range(1, papers + 1)]
    store.add_papers([paper(i, f"Synthetic roles paper {i} on diffusion") for i in ids], now)
    for channel in channels:
        sub = store.add_subscription(channel, "diffusion", "roles-test", now).subscription
        assert sub is not None
        for paper_id in ids:
            store.enqueue(paper_id, [Match(sub.id, channel, "diffusion", ("diffusion in title",))], now)
    return ids


# ---- storage: the poller's lease, senders' liveness, channel leases ------------------------
# Two Stores on one database are two processes to it: each has its own session (PostgreSQL)
# or its own open lock files (SQLite), and closing one is what the death of a process does.

@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    """Where the database is, on each backend (PostgreSQL: a schema of its own, when
    PAPERS_BOT_TEST_DATABASE_URL names a server; skipped otherwise)."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "bot.db")


@pytest.fixture
def process_target(request, tmp_path) -> str:
    """For the tests of whole processes (tens of seconds each): PostgreSQL, the backend the
    roles are for, when PAPERS_BOT_TEST_DATABASE_URL names a server; else SQLite. The storage
    tests above cover both backends' leases and claims."""
    if os.environ.get("PAPERS_BOT_TEST_DATABASE_URL"):
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "bot.db")


def eventually(condition) -> bool:
    """condition(), tried again for a few seconds: PostgreSQL frees a closed session's locks
    when its server process has ended, a moment after the client closed the connection."""
    deadline = time.monotonic() + 10
    while not (met := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(met)


def test_one_poller_lease_at_a_time_and_it_goes_with_its_holder(target):
    first, second = open_store(target), open_store(target)
    try:
        assert first.hold_poller_lease() and first.hold_poller_lease()  # kept
        assert not second.hold_poller_lease()
        first.close()  # as when its process dies: the lock goes with it
        assert eventually(second.hold_poller_lease)
        third = open_store(target)
        assert not third.hold_poller_lease()
        third.close()
    finally:
        second.close()


def test_a_live_senders_claims_are_its_own_and_a_dead_ones_are_adopted_once(target):
    sender, other, third = (open_store(target) for _ in range(3))
    try:
        queued(sender, [A], 2)
        first, second = due_now(sender, T0)
        assert sender.claim_delivery(first.id, T0)
        assert not other.claim_delivery(first.id, T0)  # claimed once
        assert [(d.id, d.claimed_by) for d in other.unfinished_deliveries()] == [(first.id, sender.sender_id)]
        assert other.adopt_orphans() == 0 and third.adopt_orphans() == 0  # its sender lives
        sender.close()  # dies mid-send
        assert eventually(lambda: other.adopt_orphans() == 1)
        assert third.adopt_orphans() == 0  # adopted by one only, and the adopter lives
        assert [d.claimed_by for d in third.unfinished_deliveries()] == [other.sender_id]
        assert third.claim_delivery(second.id, T0)
        other.close()
        assert eventually(lambda: third.adopt_orphans() == 1)
        assert {d.claimed_by for d in third.unfinished_deliveries()} == {third.sender_id}
    finally:
        other.close()
        third.close()


def test_a_channel_is_served_by_one_holder_at_a_time(target):
    one, two = open_store(target), open_store(target)
    try:
        assert one.lease_channel(A, T0, T0 + timedelta(seconds=30))
        assert not two.lease_channel(A, T0 + timedelta(seconds=10), T0 + timedelta(seconds=40))
        assert one.lease_channel(A, T0 + timedelta(seconds=20), T0 + timedelta(seconds=50))  # renewed
        assert not two.lease_channel(A, T0 + timedelta(seconds=40), T0 + timedelta(seconds=70))
        assert two.lease_channel(A, T0 + timedelta(seconds=50), T0 + timedelta(seconds=80))  # ran out
        assert not one.lease_channel(A, T0 + timedelta(seconds=51), T0 + timedelta(seconds=81))
        # Released: the holder may take it again at once, the others after the hand-over gap.
        two.release_channel(A, T0 + timedelta(seconds=52, microseconds=500_000))
        one.release_channel(A, T0 + timedelta(seconds=51))  # not its lease: nothing changes
        assert not one.lease_channel(A, T0 + timedelta(seconds=52), T0 + timedelta(seconds=82))
        assert two.lease_channel(A, T0 + timedelta(seconds=52), T0 + timedelta(seconds=82))
        two.release_channel(A, T0 + timedelta(seconds=52, microseconds=500_000))
        assert one.lease_channel(A, T0 + timedelta(seconds=52, microseconds=500_000), T0 + timedelta(seconds=83))
        assert not two.lease_channel(A, T0 + timedelta(seconds=53), T0 + timedelta(seconds=83))
        one.close()  # a clean stop frees its channels at once
        assert two.lease_channel(A, T0 + timedelta(seconds=53), T0 + timedelta(seconds=83))
    finally:
        one.close()
        two.close()


# A process that takes a channel's lease for 60 seconds and waits to be killed.
HOLDER = """
import sys, time
from datetime import datetime, timedelta, timezone
from bot.models import ChannelRef
from storage import Store, open_store
store = open_store(sys.argv[1])
now = datetime.now(timezone.utc)
assert store.lease_channel(ChannelRef("console", "a"), now, now + timedelta(seconds=60))
print("held", flush=True)
time.sleep(120)
"""


def test_a_killed_holders_channel_is_taken_over_after_the_hand_over_gap(target):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, target], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    me = open_store(target)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        now = datetime.now(timezone.utc)
        gap = timedelta(seconds=2)
        assert not me.lease_channel(A, now, now + timedelta(seconds=30), gap)  # alive: its lease runs
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # Found dead: it keeps the channel for the hand-over gap only, not its 60 seconds.
        assert eventually(lambda: not me.lease_channel(A, now, now + timedelta(seconds=30), gap)
                          and me.lease_channel(A, now + gap, now + gap + timedelta(seconds=30), gap))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        me.close()


async def test_recovery_leaves_a_live_deliverers_sends_and_settles_a_dead_ones(target):
    live, me = open_store(target), open_store(target)
    try:
        queued(live, [A, ChannelRef("console", "b")], 1)
        row_a, row_b = due_now(live, T0)
        assert live.claim_delivery(row_a.id, T0)  # mid-send in another live deliverer
        assert me.claim_delivery(row_b.id, T0)  # this process's own, left by an error
        adapter = RecordingAdapter()
        dispatcher = Dispatcher(me, {"console": adapter}, lambda: T0)
        assert await dispatcher.recover(unclaimed=False) == (0, 1)  # its own only
        assert live.delivery_counts() == OutboxCounts(pending=1, sending=1)
        assert await dispatcher.recover_orphans() == (0, 0)
        live.close()  # that deliverer dies
        assert eventually(lambda: me.adopt_orphans() == 1)
        assert await dispatcher.recover(unclaimed=False) == (0, 1)
        assert me.delivery_counts() == OutboxCounts(pending=2)
        assert (await dispatcher.dispatch()).sent == 2
    finally:
        live.close()
        me.close()


async def test_a_channel_another_deliverer_serves_is_left_to_it(target):
    other, me = open_store(target), open_store(target)
    try:
        now = datetime.now(timezone.utc)
        queued(me, [A, ChannelRef("console", "b")], 2, now)
        assert other.lease_channel(A, now, now + timedelta(seconds=30))  # serving it elsewhere
        adapter = RecordingAdapter()
        report = await Dispatcher(me, {"console": adapter}).dispatch()
        assert report.sent == 2 and {c.channel_id for c, _ in adapter.posts} == {"b"}
        other.close()
        assert (await Dispatcher(me, {"console": adapter}).dispatch()).sent == 2
        assert Counter(c.channel_id for c, _ in adapter.posts) == {"a": 2, "b": 2}
    finally:
        other.close()
        me.close()


async def test_a_front_end_leaves_what_a_command_queued_to_the_deliverers(tmp_path, make_config):
    from handlers import request_from_text

    config = make_config()
    adapter = RecordingAdapter()
    front = App(config, adapters={"console": adapter}, role="frontend")
    try:
        queued(front.store, [A], 1, datetime.now(timezone.utc))
        await front.handle_command(request_from_text(A, "u1", "pause", can_manage=True))
        reply = await front.handle_command(request_from_text(A, "u1", "resume", can_manage=True))
        assert reply.ok and reply.queued == 1
        assert adapter.posts == [] and front.store.count_pending(A) == 1
    finally:
        await front.aclose()
    with pytest.raises(ValueError, match="unknown role"):
        App(config, adapters={"console": adapter}, role="everything")


# ---- processes: real `papers-bot run --role ...` against the fakes ---------------------------

def storage_section(target: str) -> str:
    return f'[storage]\nurl = "{target}"\n' if "://" in target else f'[storage]\npath = "{target}"\n'


def bot_env(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}
    env.update({"SLACK_BOT_TOKEN": "xoxb-roles-test", "PAPERS_BOT_CONFIG": str(workdir / "config.toml"),
                "PYTHONPATH": str(ROOT)})
    return env


def start(workdir: Path, role: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot", "run", "--role", role], cwd=workdir, env=bot_env(workdir),
                            stdout=subprocess.DEVNULL, stderr=open(workdir / f"{name}.log", "w"))


def log(workdir: Path, name: str) -> str:
    return (workdir / f"{name}.log").read_text()


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:.0f}s for {what}")
        time.sleep(0.1)


def stop(*processes: subprocess.Popen) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ELECTED = "is the poller now"


def test_one_poller_polls_and_a_standby_takes_over_when_it_is_killed(tmp_path, process_target):
    target = process_target
    listing = Listing()
    listing.add(3)
    with FakeHTTPServer() as hf:
        hf.route_fn("/api/daily_papers", listing.answer)
        (tmp_path / "config.toml").write_text(
            storage_section(target) +
            f'[sources.huggingface]\nbase_url = "{hf.url}"\ninterval_minutes = 0.02\n'  # 1.2 s
            "[sources.arxiv]\nenabled = false\n[logging]\nlevel = \"INFO\"\n")
        first = start(tmp_path, "poller", "first")
        second = None
        try:
            wait_for(lambda: ELECTED in log(tmp_path, "first"), "the first poller to be elected")
            second = start(tmp_path, "poller", "second")
            wait_for(lambda: "stands by" in log(tmp_path, "second"), "the second poller to stand by")
            polls = log(tmp_path, "first").count("huggingface: ")
            wait_for(lambda: log(tmp_path, "first").count("huggingface: ") >= polls + 3, "three more polls")
            assert "huggingface: " not in log(tmp_path, "second") and ELECTED not in log(tmp_path, "second")
            first.send_signal(signal.SIGKILL)
            first.wait()
            new = listing.add(2)  # listed after the kill: only the standby can store them
            wait_for(lambda: ELECTED in log(tmp_path, "second"), "the standby to take over")
            wait_for(lambda: "2 new" in log(tmp_path, "second"), "the standby to store what was listed since")
            store = open_store(target)
            try:
                assert all(store.get_paper(i) is not None for i in new) and store.count_papers() == 5
                assert store.delivery_counts() == OutboxCounts()  # no subscriptions: nothing queued, nothing sent
            finally:
                store.close()
        finally:
            stop(first, *([second] if second else []))
        assert log(tmp_path, "first").count(ELECTED) == 1 and log(tmp_path, "second").count(ELECTED) == 1


def test_two_deliverers_send_each_delivery_once_at_each_channels_pace(tmp_path, process_target):
    target = process_target
    channels = [ChannelRef("slack", f"C0ROLES{n}") for n in range(6)]
    store = open_store(target)
    with FakeSlack() as slack:
        slack.real_ts, slack.min_interval = True, 1.0  # the Slack adapter's own pace: no 429 if it holds
        (tmp_path / "config.toml").write_text(
            storage_section(target) +
            "[sources.huggingface]\nenabled = false\n[sources.arxiv]\nenabled = false\n"
            f'[slack]\napi_url = "{slack.api_url}"\n'
            # Two channels at a time each: the six are shared between the two deliverers.
            "[delivery]\nsweep_seconds = 1\nmax_concurrent_channels = 2\n"
            "[logging]\nlevel = \"INFO\"\n")
        try:
            ids = queued(store, channels, 4, datetime.now(timezone.utc))
            one, two = start(tmp_path, "deliverer", "one"), start(tmp_path, "deliverer", "two")
            try:
                wait_for(lambda: store.delivery_counts().sent == len(channels) * len(ids), "every delivery sent",
                         120)
                time.sleep(2.0)  # anything sent twice would show now
            finally:
                stop(one, two)
            posted = {c.channel_id: Counter(m["metadata"]["event_payload"]["paper_id"] for m in ms)
                      for c in channels for ms in [slack.messages.get(c.channel_id, [])]}
            assert posted == {c.channel_id: Counter(ids) for c in channels}  # each once, none lost
            assert store.delivery_counts() == OutboxCounts(sent=len(channels) * len(ids))
            # The per-channel gap held across the two deliverers, as the fake saw it.
            assert slack.rate_limited == 0
            assert all(b - a >= slack.min_interval for times in slack.post_times.values()
                       for a, b in zip(times, times[1:], strict=False))
            # Both delivered: the channels were shared.
            assert "posted " in log(tmp_path, "one") and "posted " in log(tmp_path, "two")
            assert "Traceback" not in log(tmp_path, "one") + log(tmp_path, "two")
        finally:
            store.close()


def test_health_says_the_role_and_whether_a_poller_polls(tmp_path, make_config):
    from bot.health import health

    config = make_config(sources={"arxiv": {"enabled": False}})
    store = Store(tmp_path / "bot.db")
    try:
        for _ in range(config.delivery.source_failure_notice_after):
            store.record_source_failure("huggingface", T0, "down")
        assert health(store, config)[0] == 503  # `all`: a failing source is its concern
        status, body = health(store, config, role="poller", polling=False)
        assert status == 503 and body["role"] == "poller" and body["polling"] is False
        status, body = health(store, config, role="deliverer")
        assert (status, body) == (200, {"status": "ok", "role": "deliverer", "pending_deliveries": 0})
        assert health(store, config, role="frontend")[1]["role"] == "frontend"
    finally:
        store.close()
    status, body = health(store, config, role="deliverer")  # closed: the database cannot be read
    assert status == 503 and body["status"] == "storage"


def test_run_refuses_an_unknown_role_and_a_bad_metrics_port(capsys):
    from bot.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "--role", "everything"])
    assert exited.value.code == 2 and "invalid choice: 'everything'" in capsys.readouterr().err
    assert main(["run", "--role", "deliverer", "--metrics-port", "70000"]) == 2
    assert "--metrics-port must be from 0 to 65535" in capsys.readouterr().err


def test_senders_lock_files_do_not_pile_up(tmp_path):
    stores = [Store(tmp_path / "bot.db") for _ in range(3)]
    for store in stores:
        store.live_sender_id()

    def locks() -> list[str]:
        return sorted(p.name for p in tmp_path.glob("bot.db.sender-*.lock"))

    assert len(locks()) == 3
    stores[0].close()  # a clean close removes its own
    assert locks() == sorted(f"bot.db.sender-{s.sender_id}.lock" for s in stores[1:])
    os.close(stores[1]._alive)  # as if killed: its lock is free, its file left behind
    stores[1]._alive = None
    assert stores[2].adopt_orphans() == 0  # nothing to adopt, and the dead one's file goes
    assert locks() == [f"bot.db.sender-{stores[2].sender_id}.lock"]
    stores[1].close()
    stores[2].close()
    assert locks() == []


TWICE = "another process polls this database already"


def test_a_second_run_on_one_database_says_it_doubles_the_polling(tmp_path, process_target):
    # Two `papers-bot run` on one database both polled, without a word: nothing doubled, but the
    # work was. The first takes the poller's lease (so a `--role poller` beside it stands by).
    with FakeHTTPServer() as hf:
        hf.route("/api/daily_papers", Canned(body=b"[]"))
        (tmp_path / "config.toml").write_text(
            storage_section(process_target) +
            f'[sources.huggingface]\nbase_url = "{hf.url}"\ninterval_minutes = 0.02\n'
            "[sources.arxiv]\nenabled = false\n[logging]\nlevel = \"INFO\"\n")
        first = start(tmp_path, "all", "first")
        others: list[subprocess.Popen] = []
        try:
            wait_for(lambda: "huggingface: " in log(tmp_path, "first"), "the first run to poll")
            others.append(start(tmp_path, "all", "second"))
            wait_for(lambda: "huggingface: " in log(tmp_path, "second"), "the second run to poll")
            assert TWICE in log(tmp_path, "second") and TWICE not in log(tmp_path, "first")
            others.append(start(tmp_path, "poller", "poller"))
            wait_for(lambda: "stands by" in log(tmp_path, "poller"), "a poller beside them to stand by")
        finally:
            stop(first, *others)
        assert "huggingface: " not in log(tmp_path, "poller")
