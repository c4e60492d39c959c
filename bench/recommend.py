"""Recommendations (issue 13): quality on a labelled set, and the speed of a poll's scoring.

    python -m bench.recommend
    python -m bench.recommend --subscriptions 10000 --day 2000 --seed 1

Quality. The labelled set: the 117 real papers of the seed page (bench/data/hf-papers-page.txt)
grouped by topic in bench/data/recommend-groups.toml (grouped by hand before anything was
measured; the file says how). For every group of at least 5 papers, --draws times: pick
3 examples (5 for groups of 9 or more) at random, rank every other paper of the page, and
count the group's other papers among the first 10 (precision@10) and the first 50
(recall@50). Scorers, all on the same tf-idf vectors (bot.recommend's vectorizer fitted on
the 117 papers, as the bot fits it on its stored papers):

- `centroid`: what the bot runs (bot.recommend: cosine to the examples' centroid less
  GENERIC_WEIGHT times the product with the mean paper); `plain_centroid`: the cosine alone;
- `svm`: arxiv-sanity-lite's recipe, a LinearSVC (C=0.01, balanced classes) per user with
  the examples positive and every other paper negative, ranked by its decision function;
- `keyword`: the examples' 5 most distinctive words (summed tf-idf of their word stems)
  as an OR query through the real matcher (bot.matching.NaiveMatcher); the papers it
  matches, most matched words first (then page order), are its ranking; the rest are
  not retrieved.

Speed. Papers made from the seed page's sentences (bench.workloads.RealText): --fit papers
to fit the model, --subscriptions like: subscriptions of 3 to 5 examples each (thresholds
top 3 a day over --recent earlier papers; `refit_s`: the scheduled refit, model, profiles
and thresholds), and one day of --day papers: `vectors_s` their
tf-idf vectors, `product_s` `Recommender.score` (one sparse matrix product and the
thresholds), `match_many_s` all of what the poll does (vectors, product, thresholds, the
example each is most like); `_cpu_s` the process's CPU seconds for the same (less
inflated than wall time on a busy machine). Counts beside the seconds: `multiplications` in the product,
`pairs` of paper and subscription it yields. The recombined text has a vocabulary of a few
thousand words shared by every paper: nearly every pair shares a word, a worse case than
real listings; `--workload zipf` takes bench.matching's papers instead (a made-up
50,000-word Zipf vocabulary: fewer shared words than real text). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tomllib
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sklearn.svm import LinearSVC

from bot.matching import NaiveMatcher
from bot.models import ChannelRef, Paper, Subscription
from bot.query import normalize_query, raw_words, stem
from bot.recommend import Recommender, fit_model, profile

from .workloads import STOPWORDS, RealText, load_seed, make_workload, real_authors

GROUPS = Path(__file__).resolve().parent / "data" / "recommend-groups.toml"
MIN_GROUP = 5
KEYWORDS = 5
METHODS = ("centroid", "plain_centroid", "svm", "keyword")
NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def seed_papers() -> list[Paper]:
    return [Paper(id=f"2403.{i:05d}", title=t, summary=a, source="huggingface")
            for i, (t, a) in enumerate(load_seed())]


def load_groups(papers: list[Paper]) -> dict[str, list[int]]:
    index = {p.title: i for i, p in enumerate(papers)}
    data = tomllib.loads(GROUPS.read_text(encoding="utf-8"))
    groups = {name: [index[t] for t in group["titles"]] for name, group in data["groups"].items()}
    listed = [i for g in groups.values() for i in g] + [index[t] for t in data["other"]["titles"]]
    if sorted(listed) != list(range(len(papers))):
        raise SystemExit(f"{GROUPS} does not name every paper of the seed page exactly once")
    return groups


def keyword_query(papers: list[Paper], examples: list[int]) -> str:
    """The examples' most distinctive words (summed tf-idf of word stems), as an OR query."""
    docs = [Counter(stem(w) for w in raw_words(f"{p.title} {p.summary}")
                    if w not in STOPWORDS and len(w) > 2 and not w.isdigit()) for p in papers]
    df = Counter(w for d in docs for w in d)
    weight: Counter[str] = Counter()
    for i in examples:
        for w, tf in docs[i].items():
            weight[w] += (1 + np.log(tf)) * np.log(len(papers) / df[w])
    return normalize_query(" OR ".join(w for w, _ in weight.most_common(KEYWORDS)))


def rank_keyword(papers: list[Paper], examples: list[int]) -> tuple[list[int], str]:
    query = keyword_query(papers, examples)
    matcher = NaiveMatcher([Subscription(1, ChannelRef("console", "bench"), query, "bench", NOW)])
    hits = []
    for i, paper in enumerate(papers):
        if i in examples:
            continue
        found = matcher.match(paper)
        if found:
            hits.append((-len(set(found[0].terms)), i))
    return [i for _, i in sorted(hits)], query


def quality(draws: int, seed: int) -> dict:
    papers = seed_papers()
    groups = load_groups(papers)
    model = fit_model(papers, NOW)
    X = model.vectors(papers)
    rng = random.Random(seed)
    results: dict[str, dict[str, list[float]]] = {m: {"p10": [], "r50": []} for m in METHODS}
    per_group: dict[str, dict[str, float]] = {}
    queries = {}
    for name, members in groups.items():
        if len(members) < MIN_GROUP:
            continue
        k = 5 if len(members) >= 9 else 3
        group_scores: dict[str, list[float]] = {m: [] for m in results}
        for _ in range(draws):
            examples = rng.sample(members, k)
            relevant = set(members) - set(examples)
            others = [i for i in range(len(papers)) if i not in examples]
            vector = profile(X[examples])
            scores = model.scores(X[others], vector)
            centroid = [others[j] for j in np.argsort(-scores, kind="stable")]
            plain = np.asarray((X[others] @ vector.T).todense()).ravel()
            plain_centroid = [others[j] for j in np.argsort(-plain, kind="stable")]
            y = np.zeros(len(papers))
            y[examples] = 1
            clf = LinearSVC(class_weight="balanced", max_iter=10000, tol=1e-6, C=0.01).fit(X, y)
            decision = clf.decision_function(X[others])
            svm = [others[j] for j in np.argsort(-decision, kind="stable")]
            keyword, query = rank_keyword(papers, examples)
            queries.setdefault(name, query)
            for method, ranking in (("centroid", centroid), ("plain_centroid", plain_centroid), ("svm", svm),
                                    ("keyword", keyword)):
                p10 = len(relevant & set(ranking[:10])) / 10
                r50 = len(relevant & set(ranking[:50])) / len(relevant)
                results[method]["p10"].append(p10)
                results[method]["r50"].append(r50)
                group_scores[method].append(p10)
        per_group[name] = {m: round(statistics.mean(v), 3) for m, v in group_scores.items()}
    summary = {f"{m}_{k}": round(statistics.mean(v), 3) for m, r in results.items() for k, v in r.items()}
    return {"papers": len(papers), "groups": len(per_group), "draws": draws, **summary,
            "p10_by_group": per_group, "keyword_query_examples": queries}


class _Store:
    """What Recommender reads from a store, over a list of papers."""

    def __init__(self, papers: list[Paper], recent: list[Paper]):
        self.papers = {p.id: p for p in papers}
        self._all = papers
        self._recent = recent

    def get_paper(self, paper_id: str) -> Paper | None:
        return self.papers.get(paper_id)

    def recent_papers(self, limit: int) -> list[Paper]:
        return self._all[:limit]

    def papers_listed_since(self, since: datetime, limit: int) -> list[Paper]:
        return self._recent[:limit]


def speed(subscriptions: int, day: int, fit: int, recent: int, seed: int, workload: str = "real") -> dict:
    rng = random.Random(seed)
    if workload == "zipf":  # bench.matching's made-up 50,000-word Zipf vocabulary
        pool = iter(make_workload("zipf", subscriptions=1, papers=fit + recent + day, seed=seed, history=0).papers)

        def make(prefix: str, n: int, listed: date) -> list[Paper]:
            return [replace(next(pool), id=f"{prefix}.{i:05d}", listed_on=listed) for i in range(n)]
    else:  # the seed page's sentences recombined
        text = RealText(load_seed())
        authors = real_authors(rng, 500)

        def make(prefix: str, n: int, listed: date) -> list[Paper]:
            return [replace(text.paper(f"{prefix}.{i:05d}", rng, authors), listed_on=listed) for i in range(n)]

    history = make("2401", fit, NOW.date() - timedelta(days=10))
    earlier = [replace(p, listed_on=NOW.date() - timedelta(days=1 + i % 2))
               for i, p in enumerate(make("2402", recent, NOW.date()))]
    papers = make("2403", day, NOW.date())
    store = _Store(history + earlier, earlier)
    recommender = Recommender()
    subs = []
    for i in range(subscriptions):
        examples = ",".join(p.id for p in rng.sample(history, rng.randint(3, 5)))
        subs.append(Subscription(i + 1, ChannelRef("slack", f"C{i % 500}"), f"like:{examples}", "bench", NOW))
    recommender.sync(store, {s.id for s in subs}, subs)
    started = time.perf_counter()
    recommender.fit(store, NOW)  # the scheduled refit: the model, then every profile and threshold
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    recommender.score(recommender.vectors(papers[:1]))  # builds the profile matrix
    profiles_s = time.perf_counter() - started
    started = time.perf_counter()
    rows = recommender.vectors(papers)
    vectors_s = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    scored = recommender.score(rows)
    product_s, product_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    # The work of the product, as counts: the multiplications (each paper word times the
    # profiles that hold it) and the pairs it yields (before thresholds).
    profiles = recommender._profiles()[0]
    held = np.diff(profiles.indptr) if profiles is not None else np.zeros(rows.shape[1])
    multiplications = int(held[rows.indices].sum())
    pairs = int((rows @ profiles).nnz) if profiles is not None else 0
    started, cpu = time.perf_counter(), time.process_time()
    matches = recommender.match_many(papers)
    match_many_s, match_many_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    matched = sum(len(m) for m in matches)
    return {"workload": workload, "subscriptions": subscriptions, "day": day, "fit_papers": fit, "recent": recent,
            "vocabulary": len(recommender.model.vectorizer.vocabulary_) if recommender.model else 0,
            "refit_s": round(fit_s, 2), "profile_matrix_s": round(profiles_s, 2),
            "vectors_s": round(vectors_s, 3), "product_s": round(product_s, 3),
            "product_cpu_s": round(product_cpu_s, 3),
            "match_many_s": round(match_many_s, 3), "match_many_cpu_s": round(match_many_cpu_s, 3),
            "multiplications": multiplications, "pairs": pairs,
            "above_threshold": sum(len(s) for s in scored),
            "matches": matched, "matches_per_subscription": round(matched / max(1, subscriptions), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=20, help="example draws per group (quality)")
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--day", type=int, default=2000, help="papers scored (speed)")
    parser.add_argument("--fit", type=int, default=5000, help="papers the model is fitted on (speed)")
    parser.add_argument("--recent", type=int, default=2000, help="earlier papers for the thresholds (speed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workload", choices=("real", "zipf"), default="real", help="the papers of the speed part")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    figures = {"quality": quality(args.draws, args.seed)}
    q = figures["quality"]
    print(f"quality over {q['groups']} groups x {q['draws']} draws: precision@10 / recall@50")
    for method in METHODS:
        print(f"  {method:15} {q[method + '_p10']:.3f} / {q[method + '_r50']:.3f}")
    if not args.skip_speed:
        figures["speed"] = speed(args.subscriptions, args.day, args.fit, args.recent, args.seed, args.workload)
        s = figures["speed"]
        print(f"speed: {s['subscriptions']} like: subscriptions, a day of {s['day']} papers: vectors "
              f"{s['vectors_s']} s, product+thresholds {s['product_s']} s, match_many {s['match_many_s']} s "
              f"({s['matches']} matches)")
    print(json.dumps(figures))
    sys.stdout.flush()
    return figures


if __name__ == "__main__":
    main()
