"""PgStore after the server closed its connection (a restart, idle_session_timeout, an
operator's pg_terminate_backend): the next call gets a new connection rather than failing
for as long as the process lives, and nothing of a transaction is ever silently replayed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import psycopg
import pytest

from bot.errors import StorageError
from bot.models import ChannelRef
from storage import open_store
from storage.postgres import PgStore

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
LAB = ChannelRef("console", "lab")


def terminate(pg_url: str, *pids: int) -> None:
    """End these server sessions, as a restart or an idle timeout would, and wait until they are gone."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(500):  # the sessions exit at once; this only waits for it to be visible
            if not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                 [list(pids)]).fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError(f"sessions {pids} did not end")


def pid(store: PgStore) -> int:
    return store.db.conn.info.backend_pid


def test_the_next_call_after_the_server_closed_an_idle_connection_works(pg_url):
    store = PgStore(pg_url)
    store.add_subscription(LAB, "diffusion", "u1", NOW)
    terminate(pg_url, pid(store))
    assert [s.query for s in store.subscriptions(LAB)] == ["diffusion"]  # a new connection, not "closed"
    store.add_subscription(LAB, "transformers", "u1", NOW)
    assert store.count_subscriptions(LAB) == 2
    store.close()


def test_a_call_that_failed_on_the_lost_connection_is_followed_by_working_ones(pg_url):
    store = PgStore(pg_url)
    terminate(pg_url, pid(store))
    with pytest.raises(psycopg.OperationalError):  # used as it is, the connection is found closed
        store.db.conn.execute("SELECT 1")
    assert store.db.conn.closed
    assert store.count_subscriptions(LAB) == 0
    store.close()


def test_a_new_connection_keeps_the_session_settings(pg_url):
    store = PgStore(pg_url, busy_timeout=3, durable=False)
    terminate(pg_url, pid(store))
    assert store.count_papers() == 0
    assert store.db.scalar("SHOW synchronous_commit") == "off"
    assert store.db.scalar("SHOW lock_timeout") == "3s"
    assert store.db.scalar("SHOW TimeZone") == "UTC"
    store.close()


def test_the_sender_lease_is_taken_again_on_the_new_connection(pg_url):
    store, other = PgStore(pg_url), PgStore(pg_url)
    assert store.hold_sender_lease()
    terminate(pg_url, pid(store))  # the server frees the session's advisory locks with it
    store.count_papers()
    assert other.hold_sender_lease() is False  # still this store's: it took it again
    assert store.hold_sender_lease() is True
    store.close()
    assert other.hold_sender_lease() is True
    other.close()


def test_a_lease_another_process_took_meanwhile_is_not_claimed(pg_url):
    store, other = PgStore(pg_url), PgStore(pg_url)
    assert store.hold_sender_lease()
    terminate(pg_url, pid(store))
    assert other.hold_sender_lease() is True  # took it while the first was away
    store.count_papers()
    assert store.hold_sender_lease() is False
    store.close()
    other.close()


def test_a_transaction_whose_connection_was_lost_fails_whole_and_is_never_finished_elsewhere(pg_url):
    store = PgStore(pg_url)
    with pytest.raises(StorageError):
        with store.transaction():
            store.add_subscription(LAB, "diffusion", "u1", NOW)
            terminate(pg_url, pid(store))
            store.add_subscription(LAB, "transformers", "u1", NOW)  # not on a new connection, alone
    assert store.subscriptions(LAB) == []  # neither was written
    store.close()


def test_readers_on_other_threads_get_a_new_connection_too(pg_url):
    store = open_store(pg_url)
    assert isinstance(store, PgStore)
    with ThreadPoolExecutor(max_workers=1) as thread:  # one thread, as asyncio.to_thread's reuse theirs
        assert thread.submit(store.search_papers, ["diffusion"], 5).result() == []
        [reader] = store._readers._all
        terminate(pg_url, reader.conn.info.backend_pid)
        assert thread.submit(store.search_papers, ["diffusion"], 5).result() == []
        assert thread.submit(store.preview_candidates, "diffusion", NOW).result().papers == []
    store.close()


def test_a_connection_holding_session_locks_is_not_replaced_behind_its_holders_back(pg_url):
    from storage.postgres.db import Database

    leases = Database(pg_url, busy_timeout=1)  # as roles.py's: its advisory locks would not follow
    leases.execute("SELECT pg_try_advisory_lock(1)")
    terminate(pg_url, leases.conn.info.backend_pid)
    with pytest.raises(psycopg.OperationalError):
        leases.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        leases.execute("SELECT 1")  # still the closed one: its owner must notice it lost its locks
    leases.close()
