"""The poll's outbox transactions alone, in one thread: where the writer's CPU goes.

    python -m bench.outbox --subscriptions 100000 --papers 2000 --workload real --seed 1 --rows 250
    python -m bench.outbox ... --url postgresql://postgres@127.0.0.1:5432/bench

With --url, the same on PostgreSQL (PgStore): the bench fills a schema of its own there
(bench_outbox_<pid>) and drops it after; `floor` is SQLite's alone.

Fills a store as bench.pipeline does (in --dir, default a temporary directory), matches the
workload's papers with the one-process engine (not timed), writes them down as unmatched,
then queues their deliveries in transactions of --rows deliveries through the writer's path
and times only that, with nothing else running in the process:

- `queue_matched` (the poller's path): papers gathered until they have --group matches
  (Poller.GROUP_ROWS; 0: --rows, and one transaction a group, in paper order, as before
  the split), `MatchedBatch.split` into transactions of about --rows deliveries by ranges
  of channels, then `Store.queue_matched` for each; on SQLite the batches hold their
  deliveries made beforehand, at the subscription version (as the poller's worker makes
  them), unless --no-made-deliveries (the store then reads the subscriptions, as when they
  changed during a poll);
- `enqueue_many` (the path before it): `subscriptions_created_by`, `enqueue_many` and
  `settle_unmatched` in one transaction, as the writer thread did;
- `floor`: rows grouped and encoded beforehand, then a plain `executemany` INSERT per
  transaction and the same settling: what SQLite itself costs for these rows and indexes
  (not usable beside the matcher: every row's step gives the GIL up and waits for it back).

Last line JSON: `cpu_s` (process time), `encode_cpu_s` (the part the poller's worker thread
does), `transactions_cpu_s`, `wall_s`, `worst_transaction_ms`, `queued`. Figures, not
assertions: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bot.collection import no_collection
from bot.matching import IndexedMatcher, compile_query
from bot.models import MatchedBatch, PaperMatches, UnmatchedPaper
from bot.poller import Poller
from storage import Store, open_store
from storage.db import iso
from storage.deliveries import match_strength

from .pipeline import fill
from .workloads import WORKLOADS, Workload, make_workload

NOW = datetime(2026, 11, 29, 12, tzinfo=timezone.utc)
MODES = ("queue_matched", "enqueue_many", "floor")


@contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A schema of this run's own in the database at `url` (dropped after): its URL."""
    import psycopg

    name = f"bench_outbox_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def fill_pg(url: str, workload: Workload, now: datetime) -> None:
    """bench.pipeline.fill on PostgreSQL: the history papers, then the subscriptions in one
    INSERT ... SELECT (duplicates skipped, as there)."""
    store = open_store(url)
    try:
        store.add_papers(workload.history, now - timedelta(days=1))
        created = now - timedelta(days=2)
        forms: dict[str, bytes] = {}
        db = store.db  # type: ignore[attr-defined]
        with db.transaction():
            db.execute("CREATE TEMPORARY TABLE bench_subs (n bigserial, channel text, query text, version bigint, "
                       "compiled bytea) ON COMMIT DROP")
            with db.conn.cursor() as cursor:
                with cursor.copy("COPY bench_subs (channel, query, version, compiled) FROM STDIN") as copy:
                    for sub in workload.subscriptions():
                        copy.write_row((sub.channel.key, sub.query, sub.id, forms.get(sub.query)
                                        or forms.setdefault(sub.query, compile_query(sub.query))))
            db.execute("""INSERT INTO subscriptions (channel, query, created_by, created_at, version, compiled)
                          SELECT channel, query, 'bench', %s, version, compiled FROM bench_subs ORDER BY n
                          ON CONFLICT DO NOTHING""", [created])
            db.execute("UPDATE subscription_version SET newest_id = (SELECT max(id) FROM subscriptions), "
                       "version = (SELECT max(version) FROM subscriptions)")
            db.execute("ANALYZE subscriptions")
    finally:
        store.close()


def measure(directory: Path, workload_name: str, subscriptions: int, papers: int, seed: int, rows: int,
            mode: str, url: str | None = None, group: int = 0, made_off: bool = False) -> dict:
    workload = make_workload(workload_name, subscriptions=subscriptions, papers=papers, seed=seed)
    target = url or str(directory / "outbox.db")
    if url:
        fill_pg(url, workload, NOW - timedelta(hours=1))
    else:
        fill(Path(target), workload, NOW - timedelta(hours=1))
    store = open_store(target)
    matcher = IndexedMatcher(papers=store.recent_papers(1000))
    for sub in store.subscriptions_changed_since(0).subscriptions:
        matcher.add(sub)
    with store.transaction():
        new = store.add_papers(workload.papers, NOW)
        upto = store.newest_subscription_id()
        store.mark_unmatched([UnmatchedPaper(p, NOW, upto) for p in new])
    todo = [(u, tuple(matcher.match(u.paper))) for u in store.unmatched_papers(len(new))]
    store.close()
    writer = open_store(target, durable=False)  # as the poller's writer thread opens it
    # As the poller's worker: the deliveries made at the subscription version the engine holds
    # (nothing changes them here), where the store takes them (SQLite).
    version = writer.subscriptions_version() if writer.takes_made_deliveries() and not made_off else None
    batches: list[list[tuple[UnmatchedPaper, tuple]]] = [[]]
    count = 0
    gathered = group if mode == "queue_matched" and group else rows
    for unmatched, found in todo:
        batches[-1].append((unmatched, found))
        count += len(found)
        if count >= gathered:
            batches.append([])
            count = 0
    encode = spent = worst = 0.0
    queued = transactions = 0
    cpu, wall = time.process_time(), time.perf_counter()
    with no_collection():  # as in the poll (Poller._poll): no collection scans the matches
        for batch in filter(None, batches):
            started = time.process_time()
            if mode == "queue_matched":
                encoded = MatchedBatch.split([u for u, _ in batch], [f for _, f in batch], rows if group else 0,
                                             version)
            elif mode == "floor":
                grouped: dict[tuple[str, str], list] = {}
                for u, found in batch:
                    for m in found:
                        grouped.setdefault((u.paper.id, m.channel.key), []).append(m)
                values = [(paper_id, key,
                           json.dumps([{"id": m.subscription_id, "query": m.query, "terms": list(m.terms)}
                                       for m in ms]),
                           match_strength(ms), iso(NOW), iso(NOW)) for (paper_id, key), ms in grouped.items()]
            encode += time.process_time() - started
            if mode == "queue_matched":
                for each in encoded:
                    started, began = time.process_time(), time.perf_counter()
                    queued += writer.queue_matched(each, NOW)
                    spent += time.process_time() - started
                    worst = max(worst, time.perf_counter() - began)
                transactions += len(encoded)
                continue
            started, began = time.process_time(), time.perf_counter()
            transactions += 1
            if mode == "enqueue_many":
                with writer.transaction():
                    wanted = sorted({m.subscription_id for _, f in batch for m in f})
                    ids = writer.subscriptions_created_by(wanted, NOW, upto)
                    queued += writer.enqueue_many(
                        [PaperMatches(u.paper.id, tuple(m for m in f if m.subscription_id in ids))
                         for u, f in batch if f], NOW)
                    writer.settle_unmatched([u.paper.id for u, _ in batch])
            else:
                assert isinstance(writer, Store)
                with writer.transaction():
                    before = writer.db.conn.total_changes
                    writer.db.conn.executemany(
                        "INSERT OR IGNORE INTO deliveries (paper_id, channel, matched, strength, next_attempt_at, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?)", values)
                    queued += writer.db.conn.total_changes - before
                    writer.settle_unmatched([u.paper.id for u, _ in batch])
            spent += time.process_time() - started
            worst = max(worst, time.perf_counter() - began)
    figures = {"backend": "postgresql" if url else "sqlite", "mode": mode, "workload": workload_name,
               "subscriptions": subscriptions, "papers": papers,
               "rows_per_transaction": rows, "group_rows": group if mode == "queue_matched" else None,
               "made_deliveries": version is not None,
               "transactions": transactions, "queued": queued,
               "matches": sum(len(f) for _, f in todo), "cpu_s": round(time.process_time() - cpu, 2),
               "encode_cpu_s": round(encode, 2), "transactions_cpu_s": round(spent, 2),
               "wall_s": round(time.perf_counter() - wall, 2), "worst_transaction_ms": round(worst * 1000, 1)}
    writer.close()
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=1000)
    parser.add_argument("--workload", choices=WORKLOADS, default="real")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=Poller.ENQUEUE_ROWS,
                        help="deliveries a transaction (Poller.ENQUEUE_ROWS)")
    parser.add_argument("--group", type=int, default=Poller.GROUP_ROWS,
                        help="queue_matched: matches gathered before they are split by channels (0: no split)")
    parser.add_argument("--mode", choices=MODES, default="queue_matched")
    parser.add_argument("--no-made-deliveries", action="store_true",
                        help="queue_matched: batches without the deliveries made beforehand (the store reads "
                             "`matches` and the subscriptions, as when they changed during the poll)")
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary one)")
    parser.add_argument("--url", help="a postgresql:// URL: measure PostgreSQL, in a schema of the run's own there")
    args = parser.parse_args(argv)
    if args.url and args.mode == "floor":
        parser.error("--mode floor is SQLite's alone")
    with tempfile.TemporaryDirectory(prefix="papers-bot-bench-outbox-", dir=args.dir) as directory:
        if args.url:
            with pg_schema(args.url) as url:
                figures = measure(Path(directory), args.workload, args.subscriptions, args.papers, args.seed,
                                  args.rows, args.mode, url, args.group, args.no_made_deliveries)
        else:
            figures = measure(Path(directory), args.workload, args.subscriptions, args.papers, args.seed,
                              args.rows, args.mode, group=args.group, made_off=args.no_made_deliveries)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
    sys.exit(0)
