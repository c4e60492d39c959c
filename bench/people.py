"""`list --me` (and the Slack App Home, which runs it) at many subscriptions.

    python -m bench.people --subscriptions 1000000

An in-memory store with N subscriptions over 5,000 channels and 20,000 users, one user
following 20 of them with --me; the time of `Store.own_subscriptions` (best of 5), then of
the same query with the subscriptions_created_by index (m018) dropped: what it would cost
without it. Figures, not assertions: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from storage import Store


def best(run, times: int = 5) -> float:
    spans = []
    for _ in range(times):
        began = time.perf_counter()
        run()
        spans.append(time.perf_counter() - began)
    return min(spans) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    n = parser.parse_args().subscriptions
    store = Store(":memory:")
    now = datetime(2026, 11, 27, tzinfo=timezone.utc).isoformat()
    store.db.conn.executemany(
        "INSERT INTO subscriptions (channel, query, created_by, created_at, version) VALUES (?, ?, ?, ?, ?)",
        [(f"slack:C{i % 5000}", f"q{i}", f"U{i % 20000}", now, i) for i in range(n)])
    store.db.conn.executemany("INSERT INTO subscription_people (subscription_id, user_id, created_at) VALUES (?, ?, ?)",
                              [(i, "U7", now) for i in range(1, n, max(n // 20, 1))])
    store.db.conn.commit()
    rows = len(store.own_subscriptions("slack", "U7", 101))
    indexed = best(lambda: store.own_subscriptions("slack", "U7", 101))
    store.db.execute("DROP INDEX subscriptions_created_by")
    scan = best(lambda: store.own_subscriptions("slack", "U7", 101))
    print(f"subscriptions={n:,} rows={rows} own_subscriptions_ms={indexed:.2f} without_index_ms={scan:.1f}")


if __name__ == "__main__":
    main()
