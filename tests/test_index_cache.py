"""The built index kept beside the database (bot/index_cache.py) and loaded at the next start."""

import asyncio
import io
import logging
import os
import pickle
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot import index_cache
from bot.app import index_cache_path
from bot.config import Secrets, parse_config
from bot.errors import StorageError
from bot.matching import IndexedMatcher, NaiveMatcher
from bot.models import ChannelRef, Subscription
from bot.poller import Poller
from bot.sharded import ShardedMatcher
from storage import Store

from .fakes import FakeSource, hf_json, paper
from .test_app import make_app

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
WORDS = ["diffusion", "model", "language", "agent", "graph", "neural", "vision", "robot", "planning", "reward",
         "transformer", "video", "speech", "protein", "sparse", "retrieval", "memory", "kernel", "quantum", "policy"]
CHANNELS = [ChannelRef("slack", f"C{i:03d}") for i in range(40)]


def queries(rng: random.Random, count: int) -> list[str]:
    """Queries of every shape the engine indexes differently (words, pairs, prefixes, OR groups,
    exclusions, phrases, title words), many of them repeated (an entry with several subscriptions)."""
    shapes = [
        lambda: rng.choice(WORDS),
        lambda: f"{rng.choice(WORDS)} {rng.choice(WORDS)}",
        lambda: f"{rng.choice(WORDS)[:4]}*",
        lambda: f"{rng.choice(WORDS)[:5]}* {rng.choice(WORDS)}",
        lambda: f"({rng.choice(WORDS)} OR {rng.choice(WORDS)}) {rng.choice(WORDS)}",
        lambda: f"{rng.choice(WORDS)} -{rng.choice(WORDS)}",
        lambda: f'"{rng.choice(WORDS)} {rng.choice(WORDS)}"',
        lambda: f"title:{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(WORDS)}",
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def fill(store: Store, texts: list[str]) -> None:
    for n, text in enumerate(texts):
        store.add_subscription(CHANNELS[n % len(CHANNELS)], text, "u1", T0)


def papers(rng: random.Random, count: int) -> list:
    return [paper(f"2411.{n:05d}", " ".join(rng.sample(WORDS, 3)), " ".join(rng.choices(WORDS, k=12)) + ".")
            for n in range(count)]


def assert_matches_storage(matcher, store: Store, sample: list) -> None:
    """The engine matches as a naive loop over every stored subscription does."""
    naive = NaiveMatcher(store.subscriptions())
    for p in sample:
        assert sorted(matcher.match(p)) == sorted(naive.match(p)), p.title


async def kept_by_a_poll(store: Store, path, clock) -> Poller:
    """A poller that keeps its index (at any size) after a poll, as the bot's does at 10,000."""
    poller = Poller(store, clock, index_cache=path)
    poller.INDEX_SAVE_MIN, poller.INDEX_SAVE_DELAY = 1, 0
    await poller.poll(FakeSource(papers=[paper("2411.99999", "Nothing new")]))
    assert poller.index_saving is not None
    poller.index_saving.result(timeout=60)
    poller.close()
    assert path.exists()
    return poller


def loads_from(store: Store, monkeypatch) -> list[int]:
    """The versions the next sync asks storage for (0: it reads every subscription and builds)."""
    asked: list[int] = []
    read = store.subscriptions_changed_since
    monkeypatch.setattr(store, "subscriptions_changed_since", lambda version: (asked.append(version), read(version))[1])
    return asked


async def test_a_kept_index_is_loaded_and_follows_the_changes_made_since(tmp_path, clock, monkeypatch):
    rng = random.Random(5)
    store = Store(tmp_path / "bot.db")
    path = tmp_path / "bot.db.index"
    fill(store, queries(rng, 2500))  # more than a chunk (index_cache.CHUNK) of entries and ids
    monkeypatch.setattr(index_cache, "CHUNK", 300)
    first = await kept_by_a_poll(store, path, clock)
    kept = first._version
    # Between the runs: added, removed, changed.
    fill(store, ["quantum kernel", "spars*", "graph -neural"])
    for sub_id in (3, 10, 11, 700):
        store.remove_subscription(store.get_subscription(sub_id).channel, sub_id)
    sub = store.get_subscription(20)
    store.change_subscription_query(sub.channel, 20, "protein retrieval")

    poller = Poller(store, clock, index_cache=path)
    asked = loads_from(store, monkeypatch)
    poller.sync_subscriptions(store)
    assert asked == [kept] and poller.index_from_file  # from the file, then what changed since
    assert poller.matcher.ids() == store.subscription_ids()
    sample = papers(rng, 150)
    assert_matches_storage(poller.matcher, store, sample)

    # The loaded engine changes as a built one does: its prefix tables (and what they found
    # for each word, kept across papers) included.
    fill(store, ["robo*", "speec* memory"])
    store.remove_subscription(store.get_subscription(1).channel, 1)
    poller.sync_subscriptions(store)
    assert_matches_storage(poller.matcher, store, sample + [paper("2411.88888", "Robots", "speeches memory")])
    poller.close()
    store.close()


async def test_a_kept_index_is_deleted_once_the_index_is_in_worker_processes(tmp_path, clock, caplog):
    # Never read with worker processes, and stale by a switch back: not left behind.
    rng = random.Random(8)
    store = Store(tmp_path / "bot.db")
    path = tmp_path / "bot.db.index"
    fill(store, queries(rng, 300))
    await kept_by_a_poll(store, path, clock)
    poller = Poller(store, clock, index_cache=path, match_worker=True)
    try:
        with caplog.at_level(logging.INFO, logger="bot.poller"):
            poller.sync_subscriptions(store)
        assert not path.exists() and "deleted: the index is in worker processes now" in caplog.text
        assert not poller.index_from_file and poller.matcher.ids() == store.subscription_ids()
    finally:
        poller.close()
        store.close()


async def test_auto_reads_a_kept_index_below_its_threshold_and_deletes_it_from_there(tmp_path, clock,
                                                                                     monkeypatch):
    # `[matching] worker_process = "auto"`, decided at the first load by the subscriptions found.
    import bot.poller

    monkeypatch.setattr(bot.poller, "_cores", lambda: 2)
    rng = random.Random(9)
    store = Store(tmp_path / "bot.db")
    path = tmp_path / "bot.db.index"
    fill(store, queries(rng, 300))
    await kept_by_a_poll(store, path, clock)
    sample = papers(rng, 80)
    count = len(store.subscription_ids())
    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", count + 1)
    poller = Poller(store, clock, index_cache=path, match_worker="auto")
    try:
        poller.sync_subscriptions(store)
        assert poller.index_from_file and isinstance(poller.matcher, IndexedMatcher) and path.exists()
    finally:
        poller.close()
    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", count)
    poller = Poller(store, clock, index_cache=path, match_worker="auto")
    try:
        poller.sync_subscriptions(store)
        assert isinstance(poller.matcher, ShardedMatcher) and len(poller.matcher._procs) == 1
        assert not poller.index_from_file and not path.exists()
        assert_matches_storage(poller.matcher, store, sample)
    finally:
        poller.close()
        store.close()


async def test_a_kept_index_of_another_database_is_not_used(tmp_path, clock, monkeypatch, caplog):
    rng = random.Random(6)
    store = Store(tmp_path / "a.db")
    fill(store, queries(rng, 300))
    await kept_by_a_poll(store, tmp_path / "a.db.index", clock)
    store.close()
    # The same ids and versions (and more), other queries: the file beside it describes another database.
    other = Store(tmp_path / "b.db")
    fill(other, queries(random.Random(7), 400))
    assert other.subscriptions_version() >= index_cache.load(tmp_path / "a.db.index").version
    shutil.copy(tmp_path / "a.db.index", tmp_path / "b.db.index")
    poller = Poller(other, clock, index_cache=tmp_path / "b.db.index")
    asked = loads_from(other, monkeypatch)
    with caplog.at_level(logging.WARNING):
        poller.sync_subscriptions(other)
    assert asked == [0] and "describes another database" in caplog.text
    assert_matches_storage(poller.matcher, other, papers(rng, 100))
    poller.close()
    other.close()


async def test_a_kept_index_newer_than_a_restored_database_is_not_used(tmp_path, clock, monkeypatch, caplog):
    # Restored from a backup taken before the index was kept: the subscriptions added since
    # are gone, and the versions they had are given again to new ones.
    store = Store(tmp_path / "bot.db")
    fill(store, ["diffusion", "agent*", "graph neural"])
    store.close()
    shutil.copy(tmp_path / "bot.db", tmp_path / "backup.db")
    store = Store(tmp_path / "bot.db")
    fill(store, ["robot planning", "speech"])
    await kept_by_a_poll(store, tmp_path / "bot.db.index", clock)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"bot.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", tmp_path / "bot.db")
    store = Store(tmp_path / "bot.db")
    poller = Poller(store, clock, index_cache=tmp_path / "bot.db.index")
    with caplog.at_level(logging.WARNING):
        poller.sync_subscriptions(store)
    assert not poller.index_from_file and "newer than the database" in caplog.text
    fill(store, ["quantum kernel"])  # the version "robot planning" had
    poller._sync_if_changed(store)
    assert poller.matcher.ids() == store.subscription_ids()
    assert_matches_storage(poller.matcher, store, [paper("2411.00001", "Quantum kernels", "A kernel.")])
    poller.close()
    store.close()


@pytest.mark.parametrize("damage", ["truncated", "not an index", "other code", "code in the pickle"])
async def test_a_damaged_file_or_one_of_other_code_is_ignored(tmp_path, clock, monkeypatch, damage):
    rng = random.Random(8)
    store = Store(tmp_path / "bot.db")
    path = tmp_path / "bot.db.index"
    fill(store, queries(rng, 200))
    await kept_by_a_poll(store, path, clock)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not an index":
        path.write_bytes(b"SQLite format 3\x00" + bytes(100))
    elif damage == "code in the pickle":  # a file that would run code when unpickled is refused
        class Run:
            def __reduce__(self):
                return os.system, ("touch " + str(tmp_path / "ran"),)

        path.write_bytes(index_cache.MAGIC + pickle.dumps(Run()))
    else:
        monkeypatch.setattr(index_cache, "code_digest", lambda: "another version")
    poller = Poller(store, clock, index_cache=path)
    asked = loads_from(store, monkeypatch)
    poller.sync_subscriptions(store)
    assert asked == [0] and not (tmp_path / "ran").exists()
    assert_matches_storage(poller.matcher, store, papers(rng, 50))
    poller.close()
    store.close()


class LikeRecommender:
    """Stands in for bot.recommend.Recommender: keeps the like: subscriptions it is given;
    `failures`: how many syncs raise first (as its read of the examples' papers may)."""

    def __init__(self, failures: int = 0):
        self.subs: dict[int, str] = {}
        self.failures = failures

    def __len__(self):
        return len(self.subs)

    def sync(self, store, current, changed):
        if self.failures:
            self.failures -= 1
            raise StorageError("the database is busy", "bot.db")
        self.subs.update({s.id: s.query for s in changed if s.query.startswith("like:")})
        return [s for s in changed if not s.query.startswith("like:")]


async def kept_with_a_like_subscription(tmp_path, clock) -> tuple[Store, Subscription]:
    """A store of a few keyword subscriptions and one like:, its index kept by a poll."""
    store = Store(tmp_path / "bot.db")
    store.add_papers([paper("2410.00001", "Latent diffusion")], T0)
    fill(store, ["diffusion", "agent*"])
    like = store.add_subscription(CHANNELS[0], "like:2410.00001", "u1", T0).subscription
    assert like is not None
    await kept_by_a_poll(store, tmp_path / "bot.db.index", clock)
    return store, like


async def test_like_subscriptions_of_a_kept_index_reach_the_recommender(tmp_path, clock):
    store, like = await kept_with_a_like_subscription(tmp_path, clock)
    recommender = LikeRecommender()
    poller = Poller(store, clock, index_cache=tmp_path / "bot.db.index", recommender=recommender)  # type: ignore[arg-type]
    poller.sync_subscriptions(store)
    assert recommender.subs == {like.id: "like:2410.00001"}
    assert poller.matcher.ids() == store.subscription_ids() - {like.id}
    poller.close()
    store.close()


async def test_like_subscriptions_of_a_kept_index_reach_the_recommender_after_a_sync_that_failed(tmp_path, clock):
    # The kept index's version was the engine's as soon as the file was loaded: a sync that
    # failed after that (here the recommender's read) left the next one reading only what
    # changed since the file, so the file's like: subscriptions never reached the recommender
    # (nothing recommended to them until they changed), and the engine was taken as exact.
    store, like = await kept_with_a_like_subscription(tmp_path, clock)
    recommender = LikeRecommender(failures=1)
    poller = Poller(store, clock, index_cache=tmp_path / "bot.db.index", recommender=recommender)  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        poller.sync_subscriptions(store)
    poller.sync_subscriptions(store)
    assert recommender.subs == {like.id: "like:2410.00001"}
    assert poller.matcher.ids() == store.subscription_ids() - {like.id}
    poller.close()
    store.close()


def test_a_save_stops_when_asked_and_leaves_no_file(tmp_path):
    store = Store(tmp_path / "bot.db")
    fill(store, queries(random.Random(9), 1500))
    matcher = IndexedMatcher(store.subscriptions())
    path = tmp_path / "bot.db.index"
    assert not index_cache.save(path, matcher, 1, [], stop=lambda: True)
    assert not [f for f in tmp_path.iterdir() if ".index" in f.name]
    store.close()


async def test_the_index_is_kept_a_while_after_a_poll_when_no_poll_is_under_way(tmp_path, clock):
    # The sources are polled one after another: the next one's poll must not wait for the writing.
    import asyncio

    store = Store(tmp_path / "bot.db")
    fill(store, queries(random.Random(10), 50))
    path = tmp_path / "bot.db.index"
    poller = Poller(store, clock, index_cache=path)
    poller.INDEX_SAVE_MIN, poller.INDEX_SAVE_DELAY = 1, 0.3
    await poller.poll(FakeSource(papers=[paper("2411.00001", "Diffusion")]))
    assert poller.index_saving is None  # not yet
    poller._polls += 1  # a poll under way when the delay is over: not then
    await asyncio.sleep(0.5)
    assert poller.index_saving is None
    poller._polls -= 1
    await poller.poll(FakeSource(papers=[paper("2411.00002", "Agents")]))  # its end asks again
    await asyncio.sleep(0.5)
    assert poller.index_saving is not None
    await asyncio.wrap_future(poller.index_saving)
    assert path.exists()
    # Closing cancels a save still waiting for its delay.
    store.add_subscription(CHANNELS[0], "graph", "u1", T0)
    poller.INDEX_SAVE_EVERY = 0
    before = path.stat().st_mtime_ns
    await poller.poll(FakeSource(papers=[paper("2411.00003", "Graphs")]))
    poller.close()
    await asyncio.sleep(0.5)
    assert path.stat().st_mtime_ns == before
    store.close()


async def test_a_small_index_is_not_kept(tmp_path, clock):
    store = Store(tmp_path / "bot.db")
    fill(store, ["diffusion"])
    poller = Poller(store, clock, index_cache=tmp_path / "bot.db.index")
    await poller.poll(FakeSource(papers=[paper("2411.00001", "Diffusion")]))
    poller.close()
    assert poller.index_saving is None and not (tmp_path / "bot.db.index").exists()
    store.close()


def test_the_index_is_kept_beside_a_sqlite_file_only(tmp_path):
    secrets = Secrets({})
    sqlite = parse_config({"storage": {"path": str(tmp_path / "x.db")}}, secrets)
    assert index_cache_path(sqlite) == tmp_path / "x.db.index"
    assert index_cache_path(parse_config({"storage": {"path": ":memory:"}}, secrets)) is None
    postgres = parse_config({"storage": {"url": "postgresql://u@h/db"}}, secrets)
    assert index_cache_path(postgres) is None


@pytest.mark.backends
def test_subscription_queries_up_to_a_version(store):
    first = store.add_subscription(CHANNELS[0], "diffusion", "u1", T0).subscription
    second = store.add_subscription(CHANNELS[1], "agent*", "u1", T0).subscription
    upto = store.subscriptions_version()
    third = store.add_subscription(CHANNELS[1], "graph", "u1", T0).subscription
    assert sorted(store.subscription_queries(upto)) == [(first.id, "diffusion", "slack:C000"),
                                                        (second.id, "agent*", "slack:C001")]
    store.change_subscription_query(CHANNELS[0], first.id, "latent diffusion")  # a new version: beyond `upto`
    assert store.subscription_queries(upto) == [(second.id, "agent*", "slack:C001")]
    assert sorted(store.subscription_queries(store.subscriptions_version())) == [
        (first.id, "latent diffusion", "slack:C000"), (second.id, "agent*", "slack:C001"),
        (third.id, "graph", "slack:C001")]
    assert store.subscription_queries(0) == []


def _global_call(module: str, name: str, arg: str) -> bytes:
    """A pickle (protocol 4) that calls `module`.`name`(arg): what a planted file would hold."""
    def text(value: str) -> bytes:
        return b"\x8c" + bytes([len(value.encode())]) + value.encode()  # SHORT_BINUNICODE
    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."  # STACK_GLOBAL, TUPLE1, REDUCE


@pytest.mark.parametrize("where", ["header", "after the header"])
def test_a_planted_file_runs_no_code(tmp_path, where):
    # Pickle's own find_class reads a dotted name attribute by attribute (protocol 4):
    # bot.matching imports logging, which imports os.
    ran = tmp_path / "ran"
    exploit = _global_call("bot.matching", "logging.os.system", f"touch {ran}")
    path = tmp_path / "bot.db.index"
    if where == "header":
        path.write_bytes(index_cache.MAGIC + exploit)
    else:
        header = pickle.dumps({"format": index_cache.FORMAT, "code": index_cache.code_digest(), "version": 1})
        path.write_bytes(index_cache.MAGIC + header + exploit)
    assert index_cache.load(path) is None
    assert not ran.exists()


@pytest.mark.parametrize("module, name", [
    ("bot.matching", "logging.os.system"),  # dotted: an attribute of an attribute
    ("bot.models", "ChannelRef.from_key"),
    ("bot.query", "sys"),  # a module a module imports
    ("bot.matching", "compile_query"),  # a function, not a class
    ("bot.matching", "ProcessPoolExecutor"),  # a class it imports, not its own
    ("bot.matching", "Counter"),  # the same, even if harmless
    ("copyreg", "add_extension"),  # changes pickle's registry for the whole process
    ("builtins", "bytes"),  # bytes(10**12): memory
    ("builtins", "getattr"),
    ("collections", "namedtuple"),
    ("os", "system"),
])
def test_a_file_names_only_the_engines_classes_and_containers(module, name):
    unpickler = index_cache._Unpickler(io.BytesIO(), index_cache._shared_types(), {})
    with pytest.raises(pickle.UnpicklingError):
        unpickler.find_class(module, name)
    # What an index is made of is found.
    for module, name in [("bot.matching", "_Entry"), ("bot.matching", "_PrefixHits"), ("bot.models", "ChannelRef"),
                         ("collections", "Counter"), ("builtins", "frozenset")]:
        assert isinstance(unpickler.find_class(module, name), type)


async def test_an_engine_behind_storage_is_not_kept_as_in_step(tmp_path, clock, monkeypatch):
    # A sync that failed half way (here the recommender's storage read) has taken the newest
    # version without adding what changed: the file must not say that engine holds them
    # (its queries are storage's), or every later start would load it without them.
    rng = random.Random(11)
    store = Store(tmp_path / "bot.db")
    path = tmp_path / "bot.db.index"
    fill(store, queries(rng, 200))
    poller = Poller(store, clock, index_cache=path)
    poller.INDEX_SAVE_MIN, poller.INDEX_SAVE_DELAY = 1, 0
    poller.sync_subscriptions(store)
    fill(store, ["quantum kernel", "protein -graph"])
    sync = poller.recommender.sync

    def fails_once(*args):
        monkeypatch.setattr(poller.recommender, "sync", sync)
        raise StorageError("database is locked")
    monkeypatch.setattr(poller.recommender, "sync", fails_once)
    with pytest.raises(StorageError):
        poller.sync_subscriptions(store)
    await poller.poll(FakeSource(papers=[paper("2411.99999", "Nothing new")]))
    if poller.index_saving is not None:
        poller.index_saving.result(timeout=60)
    poller.close()

    again = Poller(store, clock, index_cache=path)
    again.sync_subscriptions(store)
    assert again.matcher.ids() == store.subscription_ids()
    assert_matches_storage(again.matcher, store, [paper("2411.00001", "Quantum kernels", "A kernel for proteins.")])
    again.close()
    store.close()


def test_a_save_is_asked_whether_to_stop_at_every_chunk(tmp_path, monkeypatch):
    # Closing the bot stops a save under way: it used to be asked only every 1,000 entries
    # and channels numbered, which all come in the first tables (then 0.5 s and more without).
    store = Store(tmp_path / "bot.db")
    fill(store, queries(random.Random(12), 1500))
    matcher = IndexedMatcher(store.subscriptions())
    monkeypatch.setattr(index_cache, "CHUNK", 100)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 5
    path = tmp_path / "bot.db.index"
    assert not index_cache.save(path, matcher, store.subscriptions_version(), store.subscription_queries(
        store.subscriptions_version()), stop=stop)
    assert not [f for f in tmp_path.iterdir() if ".index" in f.name]
    store.close()


def test_a_save_removes_what_a_crashed_save_left(tmp_path):
    store = Store(tmp_path / "bot.db")
    fill(store, queries(random.Random(13), 100))
    matcher = IndexedMatcher(store.subscriptions())
    path = tmp_path / "bot.db.index"
    crashed, under_way, other = (tmp_path / "bot.db.index.4242.tmp", tmp_path / "bot.db.index.4343.tmp",
                                 tmp_path / "other.db.index.4242.tmp")
    for f in (crashed, under_way, other):
        f.write_bytes(b"half an index")
    old = time.time() - 2 * index_cache.STALE_SECONDS
    os.utime(crashed, (old, old))
    os.utime(other, (old, old))
    version = store.subscriptions_version()
    assert index_cache.save(path, matcher, version, store.subscription_queries(version))
    assert not crashed.exists() and under_way.exists() and other.exists()  # another process's may be under way
    assert index_cache.load(path) is not None
    store.close()


def test_the_file_is_as_private_as_the_database(tmp_path):
    # It holds every subscription's query and channel: a database only its owner reads
    # is not copied beside it for everyone to read.
    store = Store(tmp_path / "bot.db")
    fill(store, queries(random.Random(14), 50))
    matcher = IndexedMatcher(store.subscriptions())
    version = store.subscriptions_version()
    os.chmod(tmp_path / "bot.db", 0o600)
    path = tmp_path / "bot.db.index"
    assert index_cache.save(path, matcher, version, store.subscription_queries(version))
    assert path.stat().st_mode & 0o077 == 0
    os.chmod(tmp_path / "bot.db", 0o640)
    assert index_cache.save(path, matcher, version, store.subscription_queries(version))
    assert path.stat().st_mode & 0o027 == 0
    store.close()


async def test_a_kept_index_of_the_same_queries_in_other_channels_is_not_used(tmp_path, clock, monkeypatch, caplog):
    # The database made anew from an export whose channels were changed (a workspace moved,
    # say) and the old file left beside it: the same ids, versions and queries; the kept
    # index would post every match to the old channels.
    texts = queries(random.Random(15), 300)
    store = Store(tmp_path / "bot.db")
    fill(store, texts)
    await kept_by_a_poll(store, tmp_path / "bot.db.index", clock)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"bot.db{suffix}").unlink(missing_ok=True)
    store = Store(tmp_path / "bot.db")
    for n, text in enumerate(texts):
        store.add_subscription(ChannelRef("discord", f"D{n % len(CHANNELS):03d}"), text, "import", T0)
    poller = Poller(store, clock, index_cache=tmp_path / "bot.db.index")
    asked = loads_from(store, monkeypatch)
    with caplog.at_level(logging.WARNING):
        poller.sync_subscriptions(store)
    assert asked == [0] and "describes another database" in caplog.text
    assert_matches_storage(poller.matcher, store, papers(random.Random(16), 100))
    poller.close()
    store.close()


def test_an_engine_holding_a_subscription_in_another_channel_is_not_kept(tmp_path):
    store = Store(tmp_path / "bot.db")
    fill(store, ["diffusion", "agent*", "graph neural"])
    matcher = IndexedMatcher(store.subscriptions())
    version = store.subscriptions_version()
    stored = store.subscription_queries(version)
    moved = [(sub_id, query, "discord:D1" if sub_id == 2 else channel) for sub_id, query, channel in stored]
    with pytest.raises(ValueError, match="#2"):
        index_cache.save(tmp_path / "bot.db.index", matcher, version, moved)
    assert index_cache.save(tmp_path / "bot.db.index", matcher, version, stored)
    store.close()


async def test_a_one_shot_poll_keeps_the_index_before_it_exits(tmp_path, server, monkeypatch):
    # `papers-bot poll` (App.poll_once, then aclose) exits long before INDEX_SAVE_DELAY: the
    # waiting save was cancelled, and every run built the index again.
    server.route("/api/daily_papers", hf_json())
    monkeypatch.setattr(Poller, "INDEX_SAVE_MIN", 1)
    app = make_app(tmp_path, server)
    fill(app.store, queries(random.Random(17), 100))
    await app.poll_once()
    await app.aclose()
    assert index_cache.load(tmp_path / "bot.db.index") is not None
    again = make_app(tmp_path, server)
    await again.poll_once()
    await again.aclose()
    assert again.poller.index_from_file


@pytest.mark.parametrize("name", ["match", "__class__", "_keys"])
def test_a_file_sets_only_the_engines_own_attributes(tmp_path, name):
    store = Store(tmp_path / "bot.db")
    fill(store, ["diffusion", "agent*"])
    matcher = IndexedMatcher(store.subscriptions())
    version = store.subscriptions_version()
    path = tmp_path / "bot.db.index"
    if name == "_keys":  # one missing
        del matcher._keys
    else:
        matcher.__dict__[name] = {"planted": 1}  # what a tampered file could name
    assert index_cache.save(path, matcher, version, store.subscription_queries(version))
    assert index_cache.load(path) is None
    store.close()


@pytest.mark.parametrize("failure", ["read-only", "disk full"])
async def test_a_save_that_fails_leaves_the_kept_file_and_says_so(tmp_path, clock, monkeypatch, caplog, failure):
    import errno

    rng = random.Random(18)
    store = Store(tmp_path / "bot.db")
    fill(store, queries(rng, 300))
    path = tmp_path / "bot.db.index"
    await kept_by_a_poll(store, path, clock)
    before = path.read_bytes()
    fill(store, ["quantum kernel"])
    if failure == "read-only":
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(index_cache.os, "open", refuse)
    else:
        dump = index_cache._Pickler.dump
        calls = []

        def fills(self, obj):
            calls.append(1)
            if len(calls) > 1:  # the second pickle (of two at this size)
                raise OSError(errno.ENOSPC, "No space left on device")
            return dump(self, obj)
        monkeypatch.setattr(index_cache._Pickler, "dump", fills)
    poller = Poller(store, clock, index_cache=path)
    poller.INDEX_SAVE_MIN, poller.INDEX_SAVE_DELAY, poller.INDEX_SAVE_EVERY = 1, 0, 0  # (it loads the file)
    with caplog.at_level(logging.WARNING):
        report = await poller.poll(FakeSource(papers=[paper("2411.77777", "Quantum kernels")]))
        assert poller.index_saving is not None
        await asyncio.wrap_future(poller.index_saving)
    poller.close()
    assert report.ok
    assert f"could not keep the index in {path}" in caplog.text and "the next start builds it" in caplog.text
    assert path.read_bytes() == before and [f.name for f in tmp_path.iterdir() if ".index" in f.name] == [path.name]
    store.close()


def test_the_code_digest_covers_what_the_engine_imports(tmp_path):
    # A `source:` alias is bot/sources' (bot/query.py asks it): added, a query that did not
    # parse does, and a kept index that skipped it must not be used.
    package = tmp_path / "bot"
    shutil.copytree(Path(index_cache.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = index_cache.code_digest(package)
    assert before is not None and before == index_cache.code_digest(package)
    for name in ("sources/__init__.py", "sources/ids.py", "text.py"):
        changed = package / name
        changed.write_text(changed.read_text() + "\n# changed\n")
        assert index_cache.code_digest(package) != before, name
        before = index_cache.code_digest(package)
    (package / "index_cache.py").unlink()
    assert index_cache.code_digest(package) is None  # not where its sources are: nothing kept


async def test_an_old_kept_index_behind_storage_is_written_again(tmp_path, server, monkeypatch):
    # Each one-shot run loaded the file and counted it as kept just now: a file behind
    # storage was never written again, and every run added more of what changed since.
    server.route("/api/daily_papers", hf_json())
    monkeypatch.setattr(Poller, "INDEX_SAVE_MIN", 1)
    app = make_app(tmp_path, server)
    fill(app.store, queries(random.Random(19), 100))
    await app.poll_once()
    await app.aclose()
    path = tmp_path / "bot.db.index"
    kept = index_cache.load(path).version
    app = make_app(tmp_path, server)
    fill(app.store, ["quantum kernel"])
    await app.poll_once()  # the file is new: not written again
    await app.aclose()
    assert index_cache.load(path).version == kept
    old = time.time() - 2 * Poller.INDEX_SAVE_EVERY
    os.utime(path, (old, old))
    app = make_app(tmp_path, server)
    await app.poll_once()
    assert app.poller.index_from_file
    await app.aclose()
    assert index_cache.load(path).version > kept


def test_a_fifo_in_place_of_the_file_is_not_waited_on(tmp_path):
    import threading

    path = tmp_path / "bot.db.index"
    os.mkfifo(path)
    found: list = []
    loading = threading.Thread(target=lambda: found.append(index_cache.load(path)), daemon=True)
    loading.start()
    loading.join(30)
    waited = loading.is_alive()
    if waited:  # let it go (a writer opens the FIFO)
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        loading.join(30)
    assert not waited and found == [None]
