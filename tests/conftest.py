from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from bot.config import Secrets, parse_config
from fakes.http import FakeHTTPServer
from fakes.slack import FakeSlack
from storage import Store


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


@pytest.fixture
def store(tmp_path):
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

