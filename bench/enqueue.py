"""enqueue_many of a big poll's deliveries, on SQLite or PostgreSQL: rows queued per second.

A poll of 2,000 papers against 100k subscriptions queues some 300,000 deliveries from the
poller's writer thread in one enqueue_many. This queues --rows of them (--channels channels,
1 to 3 matches each with 1 to 3 terms, fixed seed) into a fresh database, then the same items
again (all already owed: nothing new), then times due_channels (median of 3) and the first
plan_burst of the longest-waiting channel (10 cards, a digest of 20), and prints one JSON line:
rows per second, the client's CPU seconds in the first call (the GIL the writer thread holds),
and load_average, since wall times on a shared machine follow its load.

    python -m bench.enqueue --rows 100000 --target /tmp/enqueue.db
    python -m bench.enqueue --rows 100000 --target postgresql://postgres@127.0.0.1:5432/test

A SQLite target is a file made anew (removed first). A PostgreSQL target gets a schema of its
own (bench_enqueue_<random>), dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bot.models import ChannelRef, Match, Paper, PaperMatches

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
WORDS = "diffusion model video language agent robot graph vision audio reasoning".split()


def workload(rows: int, channels: int, seed: int) -> tuple[list[str], list[PaperMatches]]:
    """`rows` (paper, channel) pairs over rows // channels + 1 papers, every paper owed to
    `channels` distinct channels at most."""
    rng = random.Random(seed)
    refs = [ChannelRef("slack", f"C{k:05d}") for k in range(channels)]
    per_paper = min(channels, rows)
    papers = [f"2611.{n:05d}" for n in range((rows + per_paper - 1) // per_paper)]
    items, left = [], rows
    for paper_id in papers:
        chosen = rng.sample(range(channels), min(per_paper, left))
        left -= len(chosen)
        matches = []
        for k in chosen:
            for sub in range(rng.randint(1, 3)):
                terms = tuple(f"{w} in {rng.choice(['title', 'abstract'])}"
                              for w in rng.sample(WORDS, rng.randint(1, 3)))
                matches.append(Match(k * 3 + sub + 1, refs[k], f"{rng.choice(WORDS)} {rng.choice(WORDS)}", terms))
        items.append(PaperMatches(paper_id, tuple(matches)))
    return papers, items


@contextmanager
def opened(target: str) -> Iterator[object]:
    if target.startswith(("postgresql://", "postgres://")):
        import psycopg

        from storage.postgres import PgStore

        schema = f"bench_enqueue_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in target else "?"
        store = PgStore(f"{target}{separator}options=-csearch_path%3D{schema}", durable=False)  # as the poller's
        try:
            yield store
        finally:
            store.close()
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        from storage import Store

        path = Path(target)
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        store = Store(path, durable=False)  # as the poller's writer
        try:
            yield store
        finally:
            store.close()


def store_papers(store, papers: list[str]) -> None:
    store.add_papers([Paper(id=p, title=f"Paper {p}", summary="Synthetic abstract.", source="arxiv")
                      for p in papers], NOW)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", required=True, help="a SQLite file, or a postgresql:// URL")
    args = parser.parse_args(argv)
    papers, items = workload(args.rows, args.channels, args.seed)
    with opened(args.target) as store:
        store_papers(store, papers)
        start, cpu = time.perf_counter(), time.process_time()
        made = store.enqueue_many(items, NOW)
        first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        again = store.enqueue_many(items, NOW)
        second = time.perf_counter() - start
        backend = type(store).__name__
        # Then what the deliverer does with them: count the due channels (median of 3), plan one.
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            due = store.due_channels(NOW)
            timings.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.plan_burst(due[0].channel, NOW, 10, 20)
        plan = time.perf_counter() - start
    # client_cpu_s: this process's CPU time in the first call (what the poller's writer thread
    # spends holding the GIL, at most); the rest of enqueue_s is the database's.
    figures = {"backend": backend, "rows": made, "papers": len(papers), "enqueue_s": round(first, 2),
               "rows_per_s": round(made / first), "client_cpu_s": round(first_cpu, 2),
               "again_new": again, "again_s": round(second, 2),
               "due_channels_ms": round(statistics.median(timings) * 1000, 1), "due_channels": len(due),
               "plan_burst_ms": round(plan * 1000, 1), "plan_burst_rows": due[0].due,
               "load_average": round(os.getloadavg()[0], 1)}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
