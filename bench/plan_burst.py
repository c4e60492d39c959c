"""plan_burst and due_channels on a big outbox: ~236k pending deliveries over 5,000 channels.

The shape of the 100k-subscription zipf poll (docs/benchmarks.md): 2,000 papers, 5,000
channels, per-channel counts skewed (a few channels own thousands). Fixed seed.

    python -m bench.plan_burst --db /tmp/plan.db [--rows 236598] [--repeat 5]

Builds the database once (reused when it exists), then times, on copies of the outbox
state: `due_channels`, and `plan_burst` of the biggest, a median and a small channel
(milliseconds, the median of --repeat; and `_kvm`, thousands of SQLite VM instructions, a
count that does not depend on the machine's load). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from bot.models import ChannelRef, Match, Paper, PaperMatches
from storage import Store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
WORDS = "diffusion model video language agent robot graph vision audio reasoning".split()


def build(path: Path, rows: int, channels: int, papers: int, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(path)
    batch = []
    for n in range(papers):
        batch.append(Paper(id=f"2611.{n:05d}", title=f"Paper {n} {rng.choice(WORDS)}", summary="Synthetic abstract.",
                           source=rng.choice(["arxiv", "huggingface"]),
                           upvotes=rng.choice([None, None, rng.randint(0, 200)]),
                           published=NOW - timedelta(hours=rng.randint(0, 96)), listed_on=date(2026, 11, 27)))
    store.add_papers(batch, NOW)
    # zipf-ish channel weights: channel k gets weight 1/(k+1)
    weights = [1 / (k + 1) ** 0.8 for k in range(channels)]
    refs = [ChannelRef("slack", f"C{k:05d}") for k in range(channels)]
    chosen: dict[str, set[int]] = {}
    total = 0
    while total < rows:
        for channel in rng.choices(range(channels), weights, k=10_000):
            pid = rng.randrange(papers)
            if pid not in chosen.setdefault(str(channel), set()):
                chosen[str(channel)].add(pid)
                total += 1
                if total >= rows:
                    break
    by_paper: dict[int, list[Match]] = {}
    for channel, pids in chosen.items():
        for pid in pids:
            terms = tuple(f"{w} in {rng.choice(['title', 'abstract'])}" for w in rng.sample(WORDS, rng.randint(1, 3)))
            by_paper.setdefault(pid, []).append(Match(int(channel) + 1, refs[int(channel)], "q", terms))
    items = [PaperMatches(f"2611.{pid:05d}", tuple(ms)) for pid, ms in sorted(by_paper.items())]
    for start in range(0, len(items), 100):
        store.enqueue_many(items[start:start + 100], NOW)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="/tmp/plan_burst.db")
    parser.add_argument("--rows", type=int, default=236_598)
    parser.add_argument("--channels", type=int, default=5000)
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    base = Path(args.db)
    if not base.exists():
        build(base, args.rows, args.channels, args.papers, args.seed)
    store = Store(base)
    counts = store.db.execute("SELECT channel, count(*) FROM deliveries WHERE status = 'pending' "
                              "GROUP BY channel ORDER BY count(*) DESC").fetchall()
    pending = sum(c for _, c in counts)
    store.close()
    picks = {"biggest": counts[0], "median": counts[len(counts) // 2], "small": counts[-1]}
    result: dict = {"pending": pending, "channels": len(counts), "seed": args.seed}
    work = base.with_suffix(".work.db")
    for name, (key, count) in picks.items():
        times = []
        for _ in range(args.repeat):
            shutil.copy(base, work)
            store = Store(work)
            started = time.perf_counter()
            store.plan_burst(ChannelRef.from_key(key), NOW, 10, 20)
            times.append((time.perf_counter() - started) * 1000)
            store.close()
        # SQLite virtual-machine instructions, in thousands: a count, not a noisy time.
        shutil.copy(base, work)
        store = Store(work)
        steps = [0]

        def tick(steps: list[int] = steps) -> int:
            steps[0] += 1
            return 0

        store.db.conn.set_progress_handler(tick, 1000)
        store.plan_burst(ChannelRef.from_key(key), NOW, 10, 20)
        store.db.conn.set_progress_handler(None, 0)
        store.close()
        result[f"plan_burst_{name}_kvm"] = steps[0]
        result[f"plan_burst_{name}_ms"] = round(statistics.median(times), 1)
        result[f"plan_burst_{name}_rows"] = count
    store = Store(base)
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        store.due_channels(NOW)
        times.append((time.perf_counter() - started) * 1000)
    result["due_channels_ms"] = round(statistics.median(times), 1)
    store.close()
    work.unlink(missing_ok=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
