from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from bot.config import Secrets, parse_config
from fakes.http import FakeHTTPServer
from fakes.slack import FakeSlack
from storage import Store

# The tests' temporary files (tmp_path's, and the tempfile module's, here and in the processes
# the tests start) go to /dev/shm when it is a tmpfs with room, unless TMPDIR names a place:
# the tests' SQLite databases commit thousands of times, and each commit's fsync costs
# milliseconds on a disk (test_dispatch_fairness.py: 34 s there, 2.5 s on tmpfs) and nothing
# in memory. The same SQLite, the same files and locks; what a tmpfs cannot show, a power cut
# losing synced commits, no test shows on a disk either.
SHARED_MEMORY = "/dev/shm"


def _tmpfs_with_room(path: str, room: int = 2 << 30) -> bool:
    try:
        with open("/proc/mounts") as mounts:
            if not any(line.split()[1:3] == [path, "tmpfs"] for line in mounts):
                return False
        return os.access(path, os.W_OK | os.X_OK) and shutil.disk_usage(path).free >= room
    except OSError:
        return False


def pytest_configure(config):
    if not os.environ.get("TMPDIR") and _tmpfs_with_room(SHARED_MEMORY):
        os.environ["TMPDIR"] = tempfile.tempdir = SHARED_MEMORY


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Tests that call the CLI's main() in-process get its stderr handler on the root logger;
    without this, later tests (and their background tasks) would write to a closed capture."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# The storage tests run against both backends: a test (or module, with pytestmark) marked
# `backends` gets the `store` fixture once on SQLite and once on PostgreSQL.
BACKENDS = ("sqlite", "postgresql")
PG_ENV = "PAPERS_BOT_TEST_DATABASE_URL"


def pytest_generate_tests(metafunc):
    if "store" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("store", BACKENDS, indirect=True)


def new_pg_schema() -> tuple[str, str, str]:
    """(server URL, schema, URL whose search_path is that new, empty schema): drop it with drop_pg_schema.

    Skips when PAPERS_BOT_TEST_DATABASE_URL is not set (.ci/run sets it); fails, not skips,
    when it is set and the server cannot be reached."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need a server: set {PG_ENV}=postgresql://postgres@127.0.0.1:5432/test "
                    "(README, 'Running for many workspaces', says how to start one)")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"{PG_ENV} is set but the PostgreSQL server cannot be reached: {exc}")
    separator = "&" if "?" in base else "?"
    return base, schema, f"{base}{separator}options=-csearch_path%3D{schema}"


def drop_pg_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_url():
    """A postgresql:// URL whose search_path is a new, empty schema of its own (dropped after);
    skipped or failed as new_pg_schema says."""
    base, schema, url = new_pg_schema()
    yield url
    drop_pg_schema(base, schema)


@pytest.fixture
def store(request, tmp_path):
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        from storage.postgres import PgStore

        s = PgStore(request.getfixturevalue("pg_url"))
    else:
        s = Store(tmp_path / "bot.db")
    yield s
    s.close()


@pytest.fixture
def server():
    with FakeHTTPServer() as srv:
        yield srv


@pytest.fixture
def make_config(tmp_path):
    def make(**sections):
        data = {"storage": {"path": str(tmp_path / "bot.db")}}
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return parse_config(data, Secrets({}))

    return make


@pytest.fixture
def slack():
    """The fake Slack Web API on 127.0.0.1 (fakes/slack.py), for the Slack tests."""
    with FakeSlack() as fake:
        yield fake

