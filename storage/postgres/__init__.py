"""The PostgreSQL implementation of StoreContract (psycopg 3): `PgStore`."""

from .store import PgStore

__all__ = ["PgStore"]
