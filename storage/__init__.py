"""All SQL lives here: schema migrations, papers, subscriptions, deliveries, source state.

`StoreContract` (contract.py) is what the rest of the bot may ask of storage; `Store` is
its SQLite implementation."""

from .contract import StoreContract
from .store import Store

__all__ = ["Store", "StoreContract"]
