"""Search, show and preview latency on a large store.

    python -m bench.search --papers 1000000 --seed 1
    python -m bench.search --papers 1000000 --seed 1 --workload real
    python -m bench.search --papers 100000 --seed 1 --url 'postgresql://postgres@127.0.0.1:5432/bench'


Fills a SQLite store (a file in --dir, kept between runs with the same arguments) with
papers of a bench/workloads.py workload: `zipf`, synthetic papers from the matching
benchmark's generator (Zipf vocabulary; abstracts of --words words), or `real`, the seed
page's abstracts recombined. All are stored within 29 days, so that `preview` (which looks
at the last 30) has every one of them to consider. Then, through the real command
handlers: `/papers search` with 1 to 3 topic words, `/papers show` of random stored ids,
and `/papers preview` of the workload's subscription queries (each matching ~0.1% of
papers), and reports p50/p95/max latency; for preview also the longest the event loop
was held meanwhile (a 5 ms heartbeat's lateness: the work runs in a worker thread), and
`index_s`, the one-off indexing of the stored papers for preview. Last line: one JSON
object. Figures, not assertions: see docs/benchmarks.md. With --url, the same on PostgreSQL
(PgStore) instead of a SQLite file: give it a database (or, with `?options=-csearch_path%3DNAME`,
a schema) of its own, which keeps the papers for the next run with the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import handlers
from bot.config import Secrets, parse_config
from bot.loopwatch import LoopWatch
from bot.models import ChannelRef, Paper
from bot.query import raw_words
from storage import Store, StoreContract, open_store

from .matching import SKIP_TOP, Zipf, make_authors, make_vocabulary
from .workloads import STOPWORDS, WORKLOADS, RealText, load_seed, make_workload, real_authors

BATCH = 5000
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPAN = timedelta(days=29)  # every paper within preview's 30 days
NOW = START + SPAN + timedelta(hours=1)
HEARTBEAT = 0.005


def paper_id(i: int) -> str:
    return f"{2601 + i // 100000}.{i % 100000:05d}"


def zipf_maker(words: Zipf, authors: list[str], length: int) -> Callable[[int, random.Random], Paper]:
    def make(i: int, rng: random.Random) -> Paper:
        return Paper(
            id=paper_id(i),
            title=" ".join(words.draw(rng.randint(6, 14))).capitalize(),
            summary=" ".join(words.draw(length)) + ".",
            authors=tuple(rng.sample(authors, rng.randint(1, 6))),
            source="arxiv",
            upvotes=rng.choice([None, rng.randint(0, 200)]),
        )
    return make


def fill(store: StoreContract, count: int, make: Callable[[int, random.Random], Paper], rng: random.Random) -> float:
    started = time.perf_counter()
    have = store.count_papers()
    for first in range(have, count, BATCH):
        stamp = START + SPAN * first / count
        batch = [replace(make(i, rng), listed_on=stamp.date()) for i in range(first, min(first + BATCH, count))]
        store.add_papers(batch, stamp)
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


async def measure_previews(ctx: handlers.Context, queries: list[str]) -> tuple[list[float], int, float, list[int]]:
    """Each preview's latency in ms, how many matched something, the longest the loop was
    held meanwhile (ms), and each preview's match count."""
    watch = LoopWatch(0, heartbeat=HEARTBEAT, record=True).start()
    timings, answered, matches = [], 0, []
    channel = ChannelRef("console", "bench")
    try:
        await asyncio.sleep(HEARTBEAT * 2)
        for query in queries:
            request = handlers.request_from_text(channel, "bench", f"preview {query}")
            started = time.perf_counter()
            reply = await handlers.handle(ctx, request)
            timings.append((time.perf_counter() - started) * 1000)
            assert reply.ok, reply.text
            found = re.search(r"would have matched ([\d,]+) of", reply.text)
            assert found, reply.text
            matches.append(int(found.group(1).replace(",", "")))
            answered += matches[-1] > 0
        await asyncio.sleep(HEARTBEAT * 2)
    finally:
        watch.stop()
    return timings, answered, watch.max_ms(), matches


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
    parser.add_argument("--workload", choices=WORKLOADS, default="zipf")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--previews", type=int, default=100, help="preview queries (0: none)")
    parser.add_argument("--words", type=int, default=150, help="words per synthetic abstract")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the store file is kept")
    parser.add_argument("--url", help="a postgresql:// URL: measure PostgreSQL there instead of a SQLite file")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    query_rng = random.Random(args.seed + 2)
    if args.workload == "zipf":
        # The draws of bench.workloads.zipf_workload, in its order: its queries fit these papers.
        vocabulary = make_vocabulary(rng)
        words, topics = Zipf(vocabulary, rng), Zipf(vocabulary, rng, offset=SKIP_TOP)
        make = zipf_maker(words, make_authors(rng), args.words)
        name = f"{args.papers}-{args.words}-{args.seed}"
        # Topic words, as people search; and frequent words, the worst case for ranking
        # (every match is scored before the best 5 are kept).
        searches = [" ".join(topics.draw(query_rng.randint(1, 3))) for _ in range(args.queries)]
        frequent = Zipf(vocabulary, query_rng, offset=20)
        common = [" ".join(frequent.draw(query_rng.randint(1, 2))) for _ in range(args.queries // 3)]
    else:
        text = RealText(load_seed())
        authors = real_authors(rng)  # as bench.workloads.real_workload draws them
        name = f"real-{args.papers}-{args.seed}"

        def make(i: int, paper_rng: random.Random) -> Paper:
            return text.paper(paper_id(i), paper_rng, authors)

        counts = Counter(w for s in text.sentences for w in raw_words(s) if w not in STOPWORDS and len(w) > 2)
        ranked = [w for w, _ in counts.most_common()]
        searches = [" ".join(query_rng.sample(ranked[100:], query_rng.randint(1, 3))) for _ in range(args.queries)]
        common = [" ".join(query_rng.sample(ranked[:30], query_rng.randint(1, 2))) for _ in range(args.queries // 3)]
    path = Path(args.dir) / f"papers-bot-bench-search-{name}.db"
    store: StoreContract = open_store(args.url) if args.url else Store(path)
    if args.url and store.count_papers() > args.papers:
        raise SystemExit("the database holds more papers than --papers: give each size a database of its own")
    fill_s = fill(store, args.papers, make, random.Random(args.seed + 1))
    if args.url:  # the planner's statistics and the visibility map, as autovacuum leaves them after a while
        store.db.execute("VACUUM ANALYZE papers")  # type: ignore[attr-defined]
    started = time.perf_counter()
    store.index_paper_words(backlog=True)  # what the bot does in the background at start, once
    index_s = time.perf_counter() - started
    storage = {"url": args.url} if args.url else {"path": str(path)}
    config = parse_config({"storage": storage, "limits": {"commands_per_minute": 10**9}}, Secrets({}))
    ctx = handlers.Context(store, config, clock=lambda: NOW)

    total = store.count_papers()
    shows = [f"show {paper_id(query_rng.randrange(total))}" for _ in range(args.queries)]
    search = stats("search", *asyncio.run(measure(ctx, [f"search {t}" for t in searches])))
    common_search = stats("common_search", *asyncio.run(measure(ctx, [f"search {t}" for t in common])))
    show = stats("show", *asyncio.run(measure(ctx, shows)))
    preview: dict = {}
    if args.previews:
        queries = make_workload(args.workload, subscriptions=args.previews, papers=1, history=1,
                                seed=args.seed).queries
        timings, answered, held_ms, matches = asyncio.run(measure_previews(ctx, queries))
        preview = {**stats("preview", timings, answered), "preview_loop_held_max_ms": round(held_ms, 1),
                   "preview_matches_p50": int(statistics.median(matches)), "preview_matches_max": max(matches)}
    if args.url:
        size = store.db.scalar("SELECT pg_total_relation_size('papers')")  # type: ignore[attr-defined]
    else:
        size = path.stat().st_size
    store.close()

    figures = {
        "backend": "postgresql" if args.url else "sqlite",
        "workload": args.workload,
        "papers": total,
        "abstract_words": args.words if args.workload == "zipf" else None,
        "queries": args.queries,
        "fill_s": round(fill_s, 1),
        "index_s": round(index_s, 1),
        "db_mb": round(size / 2**20, 1),
        **search,
        **common_search,
        **show,
        **preview,
        "seed": args.seed,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
