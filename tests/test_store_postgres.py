"""The PostgreSQL Store's own behaviour: opening, migrations, errors, leases. What it shares
with SQLite is tested once for both, by the tests marked `backends` (tests/conftest.py)."""

from __future__ import annotations

import psycopg
import pytest

from bot.config import ConfigError, parse_config
from bot.errors import StorageError
from storage import Store, open_store
from storage.postgres import PgStore
from storage.postgres import migrations as pg_migrations
from storage.postgres.db import redacted


def test_migrations_apply_once_and_a_second_process_finds_them_applied(pg_url):
    first = PgStore(pg_url)
    applied = [row[0] for row in first.db.all("SELECT name FROM papers_bot_migrations ORDER BY name")]
    assert applied == [name for name, _ in pg_migrations.MIGRATIONS]
    second = PgStore(pg_url)  # opens without applying anything again
    assert second.db.scalar("SELECT count(*) FROM papers_bot_migrations") == len(applied)
    first.close()
    second.close()


def test_a_database_migrated_by_a_newer_version_is_refused_with_a_clear_message(pg_url):
    PgStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO papers_bot_migrations (name) VALUES ('p999_from_the_future')")
    with pytest.raises(StorageError, match="migrated by a newer papers-bot .p999_from_the_future."):
        PgStore(pg_url)


def test_an_unreachable_server_is_a_storage_error_that_never_shows_the_password():
    url = "postgresql://papers:s3cret@127.0.0.1:1/papers"  # nothing listens on port 1
    with pytest.raises(StorageError) as caught:
        PgStore(url, busy_timeout=1)
    assert "s3cret" not in str(caught.value)
    assert "postgresql://papers:***@127.0.0.1:1/papers" in str(caught.value)
    assert "check that it runs" in str(caught.value)
    assert redacted("postgresql://u@h/d") == "postgresql://u@h/d"


def test_a_url_libpq_cannot_parse_is_a_storage_error_that_never_shows_the_password():
    url = "postgresql://papers:s3cret@[::1:5432/papers"  # an IPv6 host without its "]"
    with pytest.raises(StorageError) as caught:
        PgStore(url, busy_timeout=1)
    assert "s3cret" not in str(caught.value)
    assert "[storage] url" in str(caught.value)


def test_the_sender_lease_is_held_by_one_session_and_freed_when_it_ends(pg_url):
    first, second = PgStore(pg_url), PgStore(pg_url)
    assert first.hold_sender_lease() is True
    assert first.hold_sender_lease() is True  # kept
    assert second.hold_sender_lease() is False
    first.close()  # the session ends: the server frees the lock (so does a kill -9 of the process)
    assert second.hold_sender_lease() is True
    second.close()


def test_open_store_picks_the_backend_from_the_target(pg_url, tmp_path):
    pg = open_store(pg_url)
    lite = open_store(str(tmp_path / "bot.db"))
    assert isinstance(pg, PgStore) and isinstance(lite, Store)
    assert "://" in pg.path and lite.path.endswith("bot.db")
    pg.close()
    lite.close()


def test_storage_url_must_be_a_postgresql_url():
    assert parse_config({"storage": {"url": "postgresql://db/papers"}}).storage_target == "postgresql://db/papers"
    assert parse_config({"storage": {"path": "x.db"}}).storage_target == "x.db"
    with pytest.raises(ConfigError, match="must be a postgresql:// URL"):
        parse_config({"storage": {"url": "mysql://db/papers"}})


def test_two_bots_in_two_schemas_of_one_database_never_share_a_lock(pg_url):
    other_schema = "t_other_" + pg_url.rsplit("t_", 1)[1]
    base = pg_url.split("?", 1)[0]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {other_schema}")
    try:
        first, second = PgStore(pg_url), PgStore(f"{base}?options=-csearch_path%3D{other_schema}")
        assert first.hold_sender_lease() and second.hold_sender_lease()  # a lease each
        with first.transaction():
            first.db.lock("channel slack:C1")
            with second.transaction():
                second.db.lock("channel slack:C1")  # would wait for the first (StorageBusy) if shared
        first.close()
        second.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {other_schema} CASCADE")
