"""Store: every read and write of the bot's SQLite database, named by intent."""

from __future__ import annotations

from pathlib import Path

from .channels import ChannelsMixin
from .db import open_database
from .deliveries import DeliveriesMixin
from .papers import PapersMixin
from .source_state import SourceStateMixin
from .subscriptions import SubscriptionsMixin


class Store(PapersMixin, SubscriptionsMixin, DeliveriesMixin, SourceStateMixin, ChannelsMixin):
    """One connection, used from the bot's one event-loop thread."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.db = open_database(path)
        # In memory, set by the poller: sources whose last poll failed on the bot's own side
        # (this database full or read-only, a bug), even when that could not be written
        # down. /healthz answers 503 while any is here.
        self.poll_faults: dict[str, str] = {}

    def transaction(self):
        """All writes inside happen together or not at all."""
        return self.db.atomic()

    def close(self) -> None:
        self.db.close()

    def integrity_ok(self) -> bool:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
