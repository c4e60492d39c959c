"""Search and show latency on a large store.

    python -m bench.search --papers 1000000 --seed 1

Fills a SQLite store (a file in --dir, kept between runs with the same arguments) with
synthetic papers from the matching benchmark's generator (Zipf vocabulary; abstracts of
--words words), then runs `/papers search` with 1 to 3 topic words and `/papers show` of
random stored ids through the real command handlers, and reports p50/p95/max latency.
Last line: one JSON object. Figures, not assertions: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import handlers
from bot.config import Secrets, parse_config
from bot.models import ChannelRef, Paper
from storage import Store

from .matching import SKIP_TOP, Zipf, make_authors, make_vocabulary

BATCH = 5000
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fill(store: Store, count: int, words: Zipf, authors: list[str], rng: random.Random, length: int) -> float:
    started = time.perf_counter()
    have = store.count_papers()
    for first in range(have, count, BATCH):
        batch = []
        for i in range(first, min(first + BATCH, count)):
            batch.append(Paper(
                id=f"{2601 + i // 100000}.{i % 100000:05d}",
                title=" ".join(words.draw(rng.randint(6, 14))).capitalize(),
                summary=" ".join(words.draw(length)) + ".",
                authors=tuple(rng.sample(authors, rng.randint(1, 6))),
                source="arxiv",
                upvotes=rng.choice([None, rng.randint(0, 200)]),
                listed_on=(START + timedelta(minutes=i)).date(),
            ))
        store.add_papers(batch, START + timedelta(minutes=first))
        print(f"filled {min(first + BATCH, count)}/{count}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(ctx: handlers.Context, texts: list[str]) -> tuple[list[float], int]:
    """Latency of each command in ms, and how many replies carried at least one card."""
    timings, answered = [], 0
    for text in texts:
        started = time.perf_counter()
        reply = await handlers.handle(ctx, handlers.request_from_text(ChannelRef("console", "bench"), "bench", text))
        timings.append((time.perf_counter() - started) * 1000)
        assert reply.ok, reply.text
        answered += bool(reply.cards)
    return timings, answered


def stats(name: str, timings: list[float], answered: int) -> dict:
    return {
        f"{name}_p50_ms": round(statistics.median(timings), 2),
        f"{name}_p95_ms": round(percentile(timings, 0.95), 2),
        f"{name}_max_ms": round(max(timings), 2),
        f"{name}_with_results": answered,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--words", type=int, default=150, help="words per synthetic abstract")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the store file is kept")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    vocabulary = make_vocabulary(rng)
    words, topics = Zipf(vocabulary, rng), Zipf(vocabulary, rng, offset=SKIP_TOP)
    authors = make_authors(rng)
    path = Path(args.dir) / f"papers-bot-bench-search-{args.papers}-{args.words}-{args.seed}.db"
    store = Store(path)
    fill_s = fill(store, args.papers, words, authors, random.Random(args.seed + 1), args.words)
    config = parse_config({"storage": {"path": str(path)}, "limits": {"commands_per_minute": 10**9}}, Secrets({}))
    ctx = handlers.Context(store, config)

    query_rng = random.Random(args.seed + 2)
    # Topic words, as people search; and frequent words, the worst case for ranking
    # (every match is scored before the best 5 are kept).
    searches = [f"search {' '.join(topics.draw(query_rng.randint(1, 3)))}" for _ in range(args.queries)]
    frequent = Zipf(vocabulary, query_rng, offset=20)
    common = [f"search {' '.join(frequent.draw(query_rng.randint(1, 2)))}" for _ in range(args.queries // 3)]
    total = store.count_papers()
    shows = [f"show {2601 + i // 100000}.{i % 100000:05d}"
             for i in (query_rng.randrange(total) for _ in range(args.queries))]
    search = stats("search", *asyncio.run(measure(ctx, searches)))
    common_search = stats("common_search", *asyncio.run(measure(ctx, common)))
    show = stats("show", *asyncio.run(measure(ctx, shows)))
    store.close()

    figures = {
        "papers": total,
        "abstract_words": args.words,
        "queries": args.queries,
        "fill_s": round(fill_s, 1),
        "db_mb": round(path.stat().st_size / 2**20, 1),
        **search,
        **common_search,
        **show,
        "seed": args.seed,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
