"""All SQL lives here: schema migrations, papers, subscriptions, deliveries, source state."""

from .store import Store

__all__ = ["Store"]
