"""How long storing a listing takes: add_papers of a day's papers in transactions of 50, as
the poller stores them, first as new papers, then listed again (upvotes refreshed).

    python -m bench.add_papers --papers 2000 --seed 1
    python -m bench.add_papers --papers 2000 --seed 1 --url 'postgresql://postgres@127.0.0.1:5432/bench'

On SQLite (a new file in --dir) the figures include preview's word index caught up after
each listing (`index_paper_words`, as the poller does after storing); PostgreSQL writes
those words with each row. With --url, give it an empty database (or schema, with
`?options=-csearch_path%3DNAME`): the papers are left there. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from storage import Store, StoreContract, open_store

from .matching import Zipf, make_authors, make_vocabulary
from .search import zipf_maker

BATCH = 50  # bot.poller.Poller.BATCH
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def listing(store: StoreContract, papers: list, when: datetime) -> float:
    started = time.perf_counter()
    for start in range(0, len(papers), BATCH):
        with store.transaction():
            store.paper_snapshot([p.id for p in papers[start:start + BATCH]])  # as _store_batch does
            store.add_papers(papers[start:start + BATCH], when)
    store.index_paper_words()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--words", type=int, default=150, help="words per synthetic abstract")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the SQLite file is made")
    parser.add_argument("--url", help="a postgresql:// URL: measure PostgreSQL there instead of a SQLite file")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    vocabulary = make_vocabulary(rng)
    make = zipf_maker(Zipf(vocabulary, rng), make_authors(rng), args.words)
    papers = [replace(make(i, rng), upvotes=None) for i in range(args.papers)]
    if args.url:
        store = open_store(args.url)
        if store.count_papers():
            raise SystemExit("the database already holds papers: give the benchmark an empty one")
    else:
        path = Path(tempfile.mkdtemp(dir=args.dir)) / "bench-add-papers.db"
        store = Store(path)
    first = listing(store, papers, NOW)
    again = listing(store, [replace(p, upvotes=rng.randint(0, 200)) for p in papers], NOW)
    stored = store.count_papers()
    store.close()
    figures = {"backend": "postgresql" if args.url else "sqlite", "papers": stored, "batch": BATCH,
               "first_listing_s": round(first, 4), "listed_again_s": round(again, 4),
               "papers_per_s": round(args.papers / first, 1), "seed": args.seed}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
