"""All SQL lives here: schema migrations, papers, subscriptions, deliveries, source state.

`StoreContract` (contract.py) is what the rest of the bot may ask of storage; `Store` is
its SQLite implementation, `storage.postgres.PgStore` its PostgreSQL one; `open_store`
opens whichever a target names."""

from __future__ import annotations

from .contract import StoreContract
from .store import Store

__all__ = ["Store", "StoreContract", "open_store", "reopen"]


def open_store(target: str, *, busy_timeout: float = 10.0, durable: bool = True) -> StoreContract:
    """The Store for `target`: a postgresql:// URL (PgStore, psycopg imported only then), else a
    SQLite file path (or ":memory:")."""
    if target.startswith(("postgresql://", "postgres://")):
        from .postgres import PgStore
        return PgStore(target, busy_timeout=busy_timeout, durable=durable)
    return Store(target, busy_timeout=busy_timeout, durable=durable)


def reopen(store: StoreContract, *, durable: bool = False) -> StoreContract:
    """Another Store on the same database (for another thread: the poller's worker and writer)."""
    target = getattr(store, "url", None) or store.path
    return open_store(target, busy_timeout=getattr(store, "busy_timeout", 10.0), durable=durable)
