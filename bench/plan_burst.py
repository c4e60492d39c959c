"""plan_burst and due_channels on a big outbox: ~236k pending deliveries over 5,000 channels.

The shape of the 100k-subscription zipf poll (docs/benchmarks.md): 2,000 papers, 5,000
channels, per-channel counts skewed (a few channels own thousands). Fixed seed.

    python -m bench.plan_burst --db /tmp/plan.db [--rows 236598] [--repeat 5]

Builds the database once (reused when it exists; `build_enqueue_s` / `build_enqueue_cpu_s`:
the outbox written through `Store.enqueue_many`, 100 papers a transaction, when it was built
by this run), then times, on copies of the outbox state: `due_channels`, and `plan_burst` of
the biggest, a median and a small channel (milliseconds, the median of --repeat: `_ms` wall,
`_cpu_ms` the calling thread's CPU, steadier on a shared machine; and `_kvm`, thousands of
SQLite VM instructions, a count that does not depend on the machine's load).

Then what the event loop feels (`burst_loop_*`): on an asyncio loop with a 10 ms heartbeat
(bot.loopwatch), the loop writes a small transaction every 10 ms on the store's connection
(as the dispatcher's claims and marks of other channels do) while the biggest channel's burst
is planned, once on the loop (`burst_loop_on_loop_stall_max_ms`, how it was) and once in a
worker thread as bot/dispatch.py does (`burst_loop_off_loop_stall_max_ms`: what remains is
the loop's write waiting for the plan's transaction). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from bot.loopwatch import LoopWatch
from bot.models import ChannelRef, Match, Paper, PaperMatches
from storage import Store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
WORDS = "diffusion model video language agent robot graph vision audio reasoning".split()


def build(path: Path, rows: int, channels: int, papers: int, seed: int) -> tuple[float, float]:
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
    started, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, len(items), 100):
        store.enqueue_many(items[start:start + 100], NOW)
    figures = time.perf_counter() - started, time.thread_time() - cpu
    store.close()
    return figures


async def loop_feel(path: Path, channel: ChannelRef, off_loop: bool) -> float:
    """The longest loop stall while `channel`'s burst is planned (see the module's text)."""
    store = Store(path)
    watch = LoopWatch(0, record=True).start()
    done = asyncio.Event()

    async def loop_writes() -> None:
        n = 0
        while not done.is_set():
            store.record_command(f"bench{n % 10}", NOW, 10**9)  # a short write on the loop's connection
            n += 1
            await asyncio.sleep(0.01)

    writer = asyncio.ensure_future(loop_writes())
    await asyncio.sleep(0.3)
    if off_loop:
        await asyncio.to_thread(store.plan_burst, channel, NOW, 10, 20)
    else:
        store.plan_burst(channel, NOW, 10, 20)
    await asyncio.sleep(0.3)
    done.set()
    await writer
    watch.stop()
    store.close()
    return watch.max_ms()


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
    built = build(base, args.rows, args.channels, args.papers, args.seed) if not base.exists() else None
    store = Store(base)
    counts = store.db.execute("SELECT channel, count(*) FROM deliveries WHERE status = 'pending' "
                              "GROUP BY channel ORDER BY count(*) DESC").fetchall()
    pending = sum(c for _, c in counts)
    store.close()
    picks = {"biggest": counts[0], "median": counts[len(counts) // 2], "small": counts[-1]}
    result: dict = {"pending": pending, "channels": len(counts), "seed": args.seed}
    if built:
        result["build_enqueue_s"], result["build_enqueue_cpu_s"] = round(built[0], 2), round(built[1], 2)
    work = base.with_suffix(".work.db")
    for name, (key, count) in picks.items():
        times, cpu = [], []
        for _ in range(args.repeat):
            shutil.copy(base, work)
            store = Store(work)
            started, cpu_started = time.perf_counter(), time.thread_time()
            store.plan_burst(ChannelRef.from_key(key), NOW, 10, 20)
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.thread_time() - cpu_started) * 1000)
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
        result[f"plan_burst_{name}_cpu_ms"] = round(statistics.median(cpu), 1)
        result[f"plan_burst_{name}_rows"] = count
    store = Store(base)
    times, cpu = [], []
    for _ in range(args.repeat):
        started, cpu_started = time.perf_counter(), time.thread_time()
        store.due_channels(NOW)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - cpu_started) * 1000)
    steps = [0]

    def tick(steps: list[int] = steps) -> int:
        steps[0] += 1
        return 0

    store.db.conn.set_progress_handler(tick, 1000)
    store.due_channels(NOW)
    store.db.conn.set_progress_handler(None, 0)
    result["due_channels_kvm"] = steps[0]
    result["due_channels_ms"] = round(statistics.median(times), 1)
    result["due_channels_cpu_ms"] = round(statistics.median(cpu), 1)
    store.close()
    biggest = ChannelRef.from_key(picks["biggest"][0])
    # (A store without connections of other threads' own, as before m025's branch: on the loop only.)
    for mode, off_loop in (("on_loop", False), ("off_loop", True))[:2 if hasattr(Store, "_thread_db") else 1]:
        stalls = []
        for _ in range(args.repeat):
            shutil.copy(base, work)
            stalls.append(asyncio.run(loop_feel(work, biggest, off_loop)))
        result[f"burst_loop_{mode}_stall_max_ms"] = round(max(stalls), 1)
        result[f"burst_loop_{mode}_stall_median_ms"] = round(statistics.median(stalls), 1)
    work.unlink(missing_ok=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
