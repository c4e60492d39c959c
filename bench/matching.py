"""Matching benchmark: the indexed engine against the naive loop, on a synthetic workload.

    python -m bench.matching --subscriptions 100000 --papers 2000 --seed 1

Workload (all synthetic, fixed by --seed): a vocabulary of 50,000 made-up words with Zipf
frequencies (s = 1.07); titles of about 10 and abstracts of about 250 words drawn from
it; authors, categories, organizations, sources and upvotes drawn from small pools.
Queries mix single words, 2-3 word conjunctions, phrases, OR groups, exclusions,
prefixes, field scopes, authors, categories, organizations, sources and upvote
thresholds. Query words are drawn with Zipf weights from below the 3,000 most frequent
words (--topic-skip): each subscription then matches about 0.3% of papers, some six
papers of a 2,000-paper day, which is what a kept subscription looks like. Frequent
words make every subscription match more papers, and the engine's work grows with the
number of matches.

The naive loop (every subscription evaluated against every paper, the same evaluator)
runs on a sample of the papers (--naive-sample) and is scaled to the whole set; the
script asserts that on that sample both produce identical matches. Last line: one JSON
object with the figures. Figures, not assertions on speed: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import gc
import itertools
import json
import os
import random
import resource
import sys
import time
from datetime import datetime, timezone

from bot.matching import IndexedMatcher, PaperView, compile_query, evaluate
from bot.models import ChannelRef, Match, Paper, Subscription
from bot.query import normalize_query, parse_query
from bot.sharded import ShardedMatcher

VOCAB_SIZE = 50_000
ZIPF_S = 1.07
SKIP_TOP = 3000
CATEGORIES = ["cs.LG", "cs.CL", "cs.CV", "cs.AI", "stat.ML", "cs.RO", "cs.IR", "eess.IV", "math.OC", "q-bio.NC"]
ORGS = [None, None, None, "Google (google)", "Meta AI (facebook)", "Alibaba Qwen (qwen)", "NVIDIA (nvidia)",
        "Allen Institute for AI (allenai)", "Microsoft (microsoft)"]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "zo", "be", "di", "fu", "go", "ha", "ji", "ku", "pa",
             "re", "si", "to", "wa", "xe", "yo", "an", "el", "in", "on", "ur", "ex", "ol", "is"]


def make_vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCAB_SIZE:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 5))))
    ordered = sorted(words)  # a set's order depends on PYTHONHASHSEED; the workload must not
    rng.shuffle(ordered)
    return ordered


class Zipf:
    def __init__(self, items: list[str], rng: random.Random, offset: int = 0):
        self.items = items[offset:]
        weights = [1 / (rank + offset + 1) ** ZIPF_S for rank in range(len(self.items))]
        self.cumulative = list(itertools.accumulate(weights))
        self.rng = rng

    def draw(self, k: int = 1) -> list[str]:
        total = self.cumulative[-1]
        return [self.items[bisect.bisect(self.cumulative, self.rng.random() * total)] for _ in range(k)]


def make_authors(rng: random.Random, n: int = 5000) -> list[str]:
    first = ["Ada", "Yann", "Wei", "Maria", "Emile", "Sanjay", "Olga", "Kenji", "Lena", "Tomás", "Amir", "Zoe"]
    return [f"{rng.choice(first)} {rng.choice('ABCDEFGH')}. {''.join(rng.choice(SYLLABLES) for _ in range(3)).title()}"
            for _ in range(n)]


def make_papers(n: int, vocab: Zipf, authors: list[str], rng: random.Random) -> list[Paper]:
    papers = []
    for i in range(n):
        papers.append(
            Paper(
                id=f"2699.{i:05d}",
                title=" ".join(vocab.draw(rng.randint(6, 14))).capitalize(),
                summary=" ".join(vocab.draw(rng.randint(200, 300))) + ".",
                authors=tuple(rng.sample(authors, rng.randint(1, 8))),
                categories=tuple(rng.sample(CATEGORIES, rng.randint(1, 3))),
                source=rng.choice(["huggingface", "arxiv", "arxiv"]),
                upvotes=rng.choice([None, rng.randint(0, 5), rng.randint(0, 200)]),
                organization=rng.choice(ORGS),
            )
        )
    return papers


def make_query(topic: Zipf, authors: list[str], rng: random.Random) -> str:
    w = topic.draw
    kind = rng.random()
    if kind < 0.30:
        return w()[0]
    if kind < 0.45:
        return " ".join(w(rng.randint(2, 3)))
    if kind < 0.55:
        return f'"{" ".join(w(2))}"'
    if kind < 0.65:
        a, b, c = w(3)
        return f"({a} OR {b}) {c}"
    if kind < 0.72:
        a, b = w(2)
        return f"{a} -{b}"
    if kind < 0.77:
        # Like transformer*: the made-up words are syllable strings, so cutting letters off
        # one would make a prefix that far more words share than a real stem does.
        return f"{w()[0]}*"
    if kind < 0.84:
        return f"title:{w()[0]}"
    if kind < 0.89:
        author = rng.choice(authors).split()
        return f'author:"{author[0]} {author[-1]}"'
    if kind < 0.93:
        return f"{w()[0]} cat:{rng.choice(CATEGORIES)}"
    if kind < 0.96:
        return f"{w()[0]} org:{rng.choice([o for o in ORGS if o]).split('(')[1].rstrip(')')}"
    if kind < 0.98:
        return f"{w()[0]} upvotes>={rng.randint(1, 50)}"
    return f"{w()[0]} source:{rng.choice(['huggingface', 'arxiv'])}"


def make_subscriptions(n: int, topic: Zipf, authors: list[str], rng: random.Random) -> list[Subscription]:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    channels = [ChannelRef("slack", f"C{i:06d}") for i in range(max(1, n // 20))]
    return [
        Subscription(i, rng.choice(channels), normalize_query(make_query(topic, authors, rng)), "bench", created)
        for i in range(1, n + 1)
    ]


def naive_match(subs: list[tuple[Subscription, tuple]], paper: Paper) -> list[Match]:
    """Every subscription evaluated against the paper: what the engine must avoid."""
    view = PaperView(paper)
    found = []
    for sub, node in subs:
        hits = evaluate(node, view)
        if hits is not None:
            found.append(Match(sub.id, sub.channel, sub.query, tuple(hits)))
    return found


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _children_cpu_s() -> float:
    times = os.times()
    return times.children_user + times.children_system


def total_pss_mb(engine: IndexedMatcher) -> float:
    """Proportional set size of this process and its matching workers: shared pages are
    counted once in all (RSS would count the index in every process)."""
    pool = engine._pool
    pids = [os.getpid(), *(pool._processes or {})] if pool is not None else [os.getpid()]
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total / 1024


def _huge_pages_mb(pid: int) -> float | None:
    """A process's memory in transparent huge pages (AnonHugePages), in MB; None if unknown."""
    return _proc_figure_mb(f"/proc/{pid}/smaps_rollup", "AnonHugePages:")


def _proc_status_mb(pid: int, name: str) -> float | None:
    return _proc_figure_mb(f"/proc/{pid}/status", name)


def _proc_figure_mb(path: str, name: str) -> float | None:
    try:
        with open(path, encoding="ascii") as f:
            return next((round(int(line.split()[1]) / 1024, 1) for line in f if line.startswith(name)), None)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--naive-sample", type=int, default=20, help="papers the naive loop runs on")
    parser.add_argument("--history", type=int, default=1000,
                        help="stored papers whose word counts guide the index (the bot uses its last 1,000)")
    parser.add_argument("--topic-skip", type=int, default=SKIP_TOP,
                        help="query words skip this many most frequent words (higher: fewer matches)")
    parser.add_argument("--workload", choices=("zipf", "real"), default="zipf",
                        help="zipf: this module's made-up words; real: bench.workloads' recombined abstracts")
    parser.add_argument("--processes", type=int, default=1,
                        help="match with IndexedMatcher.match_many in this many forked processes")
    parser.add_argument("--shards", type=int, default=0,
                        help="match with bot.sharded.ShardedMatcher: this many worker processes, each "
                             "holding part of the index (0: IndexedMatcher in this process)")
    parser.add_argument("--compiled", action="store_true",
                        help="subscriptions carry their compiled form, as storage hands them to the bot "
                             "(made before the clock starts); always on with --shards")
    args = parser.parse_args(argv)

    if args.workload == "real":
        from .workloads import make_workload  # imports this module

        workload = make_workload("real", subscriptions=args.subscriptions, papers=args.papers, seed=args.seed,
                                 history=args.history)
        papers, history, subs = workload.papers, workload.history, workload.subscriptions()
    else:
        rng = random.Random(args.seed)
        vocabulary = make_vocabulary(rng)
        words = Zipf(vocabulary, rng)
        topics = Zipf(vocabulary, rng, offset=args.topic_skip)
        authors = make_authors(rng)
        papers = make_papers(args.papers, words, authors, rng)
        history = make_papers(args.history, words, authors, rng)  # what the bot has stored already
        subs = make_subscriptions(args.subscriptions, topics, authors, rng)
    print(f"workload: {len(subs)} subscriptions ({len(set(s.query for s in subs))} distinct), "
          f"{len(papers)} papers", file=sys.stderr)

    if args.compiled or args.shards:
        forms: dict[str, bytes] = {}
        subs = [dataclasses.replace(s, compiled=forms.get(s.query) or forms.setdefault(s.query, compile_query(s.query)))
                for s in subs]
        del forms
    started, build_cpu_started = time.perf_counter(), time.process_time()
    sharded: ShardedMatcher | None = None
    if args.shards:
        sharded = ShardedMatcher(subs, papers=history, processes=args.shards)
        sharded.worker_usage()  # waits for the workers to have built their parts
    else:
        engine = IndexedMatcher(subs, papers=history)
    build_s = time.perf_counter() - started
    build_cpu_s = time.process_time() - build_cpu_started  # this process's: the workers' (--shards) are apart
    gc.freeze()  # as the bot does after loading subscriptions: see Poller.sync_subscriptions
    if sharded is not None:
        return _sharded_figures(args, sharded, subs, papers, history, build_s)

    sample = min(args.naive_sample, len(papers))
    kept: list[list[Match]] = []  # only the sample's matches are kept, for the comparison;
    matches = 0  # the bot, too, hands each paper's matches to the outbox and drops them
    evaluated = sum(len(engine.candidates(PaperView(p))) for p in papers[:50])  # before the clock starts
    pss_mb = None
    cpu_started, children_started = time.process_time(), _children_cpu_s()
    started = time.perf_counter()
    if args.processes > 1:
        # Forked on first use (included in match_s); then every paper's matches come back.
        for i, found in enumerate(engine.match_many(papers, processes=args.processes)):
            matches += len(found)
            if i < sample:
                kept.append(found)
        match_s = time.perf_counter() - started
        pss_mb = round(total_pss_mb(engine), 1)
        engine.close()  # the workers' CPU time is counted once they are waited for
    else:
        for i, paper in enumerate(papers):
            found = engine.match(paper)
            matches += len(found)
            if i < sample:
                kept.append(found)
        match_s = time.perf_counter() - started
    match_cpu_s = time.process_time() - cpu_started + _children_cpu_s() - children_started

    # The naive loop shares the engine's parsed trees, so it costs time, not memory.
    nodes = {query: entry.node for query, entry in engine._entries.items()}
    naive_s = _naive_check(nodes, subs, papers, kept, "engine")

    figures = {
        "subscriptions": len(subs),
        "distinct_queries": len(nodes),
        "papers": len(papers),
        "matches": matches,
        "matches_per_paper": round(matches / len(papers), 1),
        "workload": args.workload,
        "processes": args.processes,
        "candidates_per_paper": round(evaluated / max(min(len(papers), 50), 1), 1),
        "topic_skip": args.topic_skip,
        "history_papers": len(history),
        "build_s": round(build_s, 3),
        "build_cpu_s": round(build_cpu_s, 3),
        "compiled": args.compiled,
        "match_s": round(match_s, 3),
        "papers_per_s": round(len(papers) / match_s, 1),
        "match_cpu_s": round(match_cpu_s, 3),
        "naive_s": round(naive_s, 3),
        "naive_sampled_papers": sample,
        "naive_scaled_from_sample": sample < len(papers),
        "speedup": round(naive_s / match_s, 1) if match_s else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "pss_with_workers_mb": pss_mb,
        "seed": args.seed,
    }
    print(json.dumps(figures))
    return figures


def _naive_check(nodes: dict[str, tuple], subs: list[Subscription], papers: list[Paper],
                 kept: list[list[Match]], engine: str) -> float:
    """Match the papers whose matches were `kept` (the sample) with the naive loop, over the
    parsed `nodes` of the queries; assert both agree; return the naive loop's time scaled to
    every paper."""
    sample = len(kept)
    naive_subs = [(s, nodes[s.query]) for s in subs]
    started = time.perf_counter()
    naive_results = [naive_match(naive_subs, p) for p in papers[:sample]]
    naive_sample_s = time.perf_counter() - started
    for paper, got, expected in zip(papers[:sample], kept, naive_results, strict=True):
        assert got == expected, f"{engine} and naive loop disagree on {paper.id}"
    return naive_sample_s * len(papers) / sample if sample else 0.0


def _sharded_figures(args: argparse.Namespace, engine: ShardedMatcher, subs: list[Subscription],
                     papers: list[Paper], history: list[Paper], build_s: float) -> dict:
    """The sharded engine's run: matched in batches of 200 papers (as a poll would hand them),
    with no garbage collection meanwhile (as in the poller's poll: `bot.collection.no_collection`), checked
    against the naive loop on the sample, with every process's peak memory and CPU time."""
    sample = min(args.naive_sample, len(papers))
    kept: list[list[Match]] = []
    matches = 0
    workers_before = [cpu for _, cpu in engine.worker_usage()]
    cpu_started = time.process_time()
    started = time.perf_counter()
    gc.disable()
    try:
        for start in range(0, len(papers), 200):
            for found in engine.match_many(papers[start:start + 200]):
                matches += len(found)
                if len(kept) < sample:
                    kept.append(found)
    finally:
        gc.enable()
    match_s = time.perf_counter() - started
    parent_cpu_s = time.process_time() - cpu_started
    usage = engine.worker_usage()
    workers_rss = [rss for rss, _ in usage]
    workers_cpu = [cpu - before for (_, cpu), before in zip(usage, workers_before, strict=True)]
    workers_huge = [_huge_pages_mb(proc.pid) for proc in engine._procs]
    workers_hwm = [_proc_status_mb(proc.pid, "VmHWM:") for proc in engine._procs]
    engine.close()
    match_cpu_s = parent_cpu_s + sum(workers_cpu)
    # The parent keeps no parsed trees (its workers hold the index): parsed here, once a query.
    nodes = {query: parse_query(query) for query in dict.fromkeys(s.query for s in subs)}
    naive_s = _naive_check(nodes, subs, papers, kept, "sharded engine")
    figures = {
        "subscriptions": len(subs),
        "distinct_queries": len(nodes),
        "papers": len(papers),
        "matches": matches,
        "matches_per_paper": round(matches / len(papers), 1),
        "workload": args.workload,
        "shards": args.shards,
        "topic_skip": args.topic_skip,
        "history_papers": len(history),
        "build_s": round(build_s, 3),
        "match_s": round(match_s, 3),
        "papers_per_s": round(len(papers) / match_s, 1),
        "match_cpu_s": round(match_cpu_s, 3),
        "parent_match_cpu_s": round(parent_cpu_s, 3),
        "worker_match_cpu_s": [round(cpu, 3) for cpu in workers_cpu],
        # CPU a paper in each process (the load changes it less than the wall time).
        "parent_cpu_ms_per_paper": round(parent_cpu_s * 1000 / len(papers), 3),
        "worker_cpu_ms_per_paper": [round(cpu * 1000 / len(papers), 3) for cpu in workers_cpu],
        "naive_s": round(naive_s, 3),
        "naive_sampled_papers": sample,
        "speedup": round(naive_s / match_s, 1) if match_s else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "worker_peak_rss_mb": [round(r, 1) for r in workers_rss],
        "total_peak_rss_mb": round(peak_rss_mb() + sum(workers_rss), 1),
        # Each worker's own peak (VmHWM): its ru_maxrss above starts, after fork and exec, at
        # what this process's RSS was when it was started.
        "worker_own_peak_rss_mb": workers_hwm,
        "worker_huge_pages_mb": workers_huge,
        "seed": args.seed,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
