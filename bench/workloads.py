"""Workloads for the benchmarks: the synthetic Zipf one, and one made of real abstracts.

    from bench.workloads import make_workload
    workload = make_workload("real", subscriptions=100_000, papers=2000, seed=1)

`zipf`: bench/matching.py's generator (a 50,000-word made-up vocabulary with Zipf
frequencies; query words from below the 3,000 most frequent), the same papers and queries
that `python -m bench.matching` makes for the same sizes and seed.

`real`: the titles and abstracts of the ~120 papers on a Hugging Face papers page
(bench/data/hf-papers-page.txt, public text, copied from the project's seed), recombined:
each abstract is 5 to 11 sentences drawn from all of theirs, each title a real title's
name and the description of another (or two halves joined at "for", "with", "via"...).
Authors come from pools of common first and family names; categories, organizations,
sources and upvotes as in the Zipf workload. Real text has a small vocabulary full of
shared words (model, language, learning, data), which is what makes matching expensive:
a query's rarest word is still in a few percent of papers.

Queries use that vocabulary: two or three words, a phrase and a word, OR groups,
exclusions, prefixes, title words, authors, categories, organizations and upvote
thresholds, each kept only if it matches between `target / 2.5` and `target * 2.5` of a
separate calibration set of generated papers (target: 0.1%). The benchmark measures the
rate it actually got (`match_rate`) on its own papers.
"""

from __future__ import annotations

import bisect
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bot.errors import QueryError
from bot.matching import PaperView
from bot.models import ChannelRef, Paper, Subscription
from bot.query import normalize_query, stem

from . import matching as zipf_bench

SEED_PAGE = Path(__file__).resolve().parent / "data" / "hf-papers-page.txt"
TARGET_RATE = 0.001
CALIBRATION_PAPERS = 4000
WORKLOADS = ("zipf", "real")

FIRST_NAMES = ["Ada", "Yann", "Wei", "Maria", "Emile", "Sanjay", "Olga", "Kenji", "Lena", "Tomás", "Amir", "Zoe",
               "Li", "Jun", "Xin", "Yu", "Hao", "Mei", "Priya", "Rahul", "Ananya", "Fatima", "Omar", "Sara", "David",
               "Michael", "Sarah", "Laura", "Paul", "Anna", "Ivan", "Dmitri", "Sofia", "Lucas", "Mateo", "Chloé",
               "Hugo", "Jonas", "Elif", "Mehmet", "Ngozi", "Kwame", "Hiroshi", "Yuki", "Min-jun", "Seo-yeon", "Thi",
               "Quang", "Aisha", "Noah", "Emma", "Oliver", "Ines", "João", "Marta", "Pierre", "Giulia", "Marco"]
FAMILY_NAMES = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun", "Ma",
                "Zhu", "Hu", "Guo", "Kim", "Lee", "Park", "Choi", "Nguyen", "Tran", "Sato", "Suzuki", "Tanaka",
                "Kumar", "Singh", "Sharma", "Patel", "Gupta", "Reddy", "Smith", "Johnson", "Brown", "Miller",
                "Davis", "Garcia", "Rodriguez", "Martinez", "Lopez", "Gonzalez", "Müller", "Schmidt", "Schneider",
                "Fischer", "Weber", "Dubois", "Lefèvre", "Moreau", "Rossi", "Russo", "Bianchi", "Ivanov", "Petrov",
                "Novak", "Kowalski", "Nowak", "Yilmaz", "Kaya", "Haddad", "Okafor", "Mensah", "Silva", "Santos",
                "Costa", "Andersson", "Johansson", "Nielsen", "Hansen", "Jensen", "Cohen", "Levi", "Katz", "Ali",
                "Hassan", "Rahman", "Hosseini", "Ahmadi", "Oliveira", "Pereira"]
CONNECTORS = ("for", "with", "via", "through", "using", "in", "from", "by", "on")
STOPWORDS = {"the", "a", "an", "of", "to", "in", "for", "on", "with", "by", "as", "is", "are", "be", "we", "our",
             "this", "that", "these", "it", "its", "can", "from", "at", "which", "such", "than", "while", "into",
             "also", "has", "have", "been", "was", "were", "their", "they", "both", "each", "other", "more",
             "most", "how", "what", "when", "where", "whether", "but", "not", "and", "or", "via", "e", "g",
             "i", "s", "et", "al"}


@dataclass
class Workload:
    name: str
    papers: list[Paper]  # the day being polled
    history: list[Paper]  # stored before: the engine reads their word counts
    queries: list[str]  # normalized, one per subscription
    info: dict = field(default_factory=dict)  # what the generator wants reported

    def subscriptions(self, channels: int | None = None, seed: int = 0) -> list[Subscription]:
        """One Subscription per query, spread over `channels` Slack channels (default: 20 each)."""
        rng = random.Random(seed)
        count = channels or max(1, len(self.queries) // 20)
        refs = [ChannelRef("slack", f"C{i:06d}") for i in range(count)]
        created = datetime(2026, 1, 1, tzinfo=timezone.utc)
        return [Subscription(i, rng.choice(refs), query, "bench", created)
                for i, query in enumerate(self.queries, start=1)]


def make_workload(name: str, *, subscriptions: int, papers: int, seed: int = 1, history: int = 1000) -> Workload:
    if name == "zipf":
        return zipf_workload(subscriptions, papers, seed, history)
    if name == "real":
        return real_workload(subscriptions, papers, seed, history)
    raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")


# ---- zipf ---------------------------------------------------------------------------------

def zipf_workload(subscriptions: int, papers: int, seed: int = 1, history: int = 1000,
                  topic_skip: int = zipf_bench.SKIP_TOP) -> Workload:
    """bench.matching's workload, drawn in the same order, so the same seed gives the same one."""
    rng = random.Random(seed)
    vocabulary = zipf_bench.make_vocabulary(rng)
    words = zipf_bench.Zipf(vocabulary, rng)
    topics = zipf_bench.Zipf(vocabulary, rng, offset=topic_skip)
    authors = zipf_bench.make_authors(rng)
    day = zipf_bench.make_papers(papers, words, authors, rng)
    before = zipf_bench.make_papers(history, words, authors, rng)
    # make_papers numbers from 2699.00000 in both lists: stored history needs other ids.
    before = [_renumber(p, f"2698.{i:05d}") for i, p in enumerate(before)]
    subs = zipf_bench.make_subscriptions(subscriptions, topics, authors, rng)
    return Workload("zipf", day, before, [s.query for s in subs], {"topic_skip": topic_skip})


def _renumber(paper: Paper, paper_id: str) -> Paper:
    from dataclasses import replace

    return replace(paper, id=paper_id)


# ---- real ---------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def load_seed(path: Path = SEED_PAGE) -> list[tuple[str, str]]:
    """(title, abstract) pairs of the saved papers page: a title line, then its abstract line."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = []
    for title, abstract in zip(lines, lines[1:], strict=False):
        if len(abstract) > 300 and len(title) < 300 and len(title.split()) >= 2:
            pairs.append((title, abstract))
    return pairs


class RealText:
    """Sentences, title parts and name pools of the seed page, and a paper generator over them."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.sentences = [s for _, abstract in pairs for s in _SENTENCE_END.split(abstract) if len(s.split()) >= 4]
        self.names: list[str] = []  # "SWIFT" of "SWIFT: On-the-Fly Self-Speculative Decoding..."
        self.descriptions: list[str] = []
        for title, _ in pairs:
            name, sep, rest = title.partition(": ")
            if sep and len(name.split()) <= 4:
                self.names.append(name)
                self.descriptions.append(rest)
            else:
                self.descriptions.append(title)

    def title(self, rng: random.Random) -> str:
        first, second = rng.sample(self.descriptions, 2)
        head, tail = _split_at_connector(first), _split_at_connector(second)
        text = f"{head[0]} {tail[1]}" if head[1] and tail[1] else first
        if self.names and rng.random() < 0.5:
            return f"{rng.choice(self.names)}: {text}"
        return text

    def paper(self, paper_id: str, rng: random.Random, authors: list[str]) -> Paper:
        return Paper(
            id=paper_id,
            title=self.title(rng),
            summary=" ".join(rng.sample(self.sentences, rng.randint(5, 11))),
            authors=tuple(rng.sample(authors, rng.randint(1, 8))),
            categories=tuple(rng.sample(zipf_bench.CATEGORIES, rng.randint(1, 3))),
            source=rng.choice(["huggingface", "arxiv", "arxiv"]),
            upvotes=rng.choice([None, rng.randint(0, 5), rng.randint(0, 200)]),
            organization=rng.choice(zipf_bench.ORGS),
        )


def _split_at_connector(text: str) -> tuple[str, str]:
    """("Guiding Large Language Models", "via Directional Stimulus Prompting"), or (text, "")."""
    words = text.split()
    for i in range(1, len(words) - 1):
        if words[i].lower() in CONNECTORS:
            return " ".join(words[:i]), " ".join(words[i:])
    return text, ""


def real_authors(rng: random.Random, n: int = 5000) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        middle = f" {rng.choice('ABCDEFGHJKLMNPRST')}." if rng.random() < 0.2 else ""
        names.add(f"{rng.choice(FIRST_NAMES)}{middle} {rng.choice(FAMILY_NAMES)}")
    ordered = sorted(names)  # a set's order depends on PYTHONHASHSEED
    rng.shuffle(ordered)
    return ordered


def real_workload(subscriptions: int, papers: int, seed: int = 1, history: int = 1000,
                  target: float = TARGET_RATE) -> Workload:
    rng = random.Random(seed)
    text = RealText(load_seed())
    authors = real_authors(rng)
    day = [text.paper(f"2699.{i:05d}", rng, authors) for i in range(papers)]
    before = [text.paper(f"2698.{i:05d}", rng, authors) for i in range(history)]
    calibration = [text.paper(f"2697.{i:05d}", rng, authors) for i in range(CALIBRATION_PAPERS)]
    maker = _QueryMaker(calibration, authors, rng, target)
    queries = [maker.make() for _ in range(subscriptions)]
    info = {
        "seed_papers": len(text.descriptions),
        "sentences": len(text.sentences),
        "distinct_words": len(maker.words),
        "calibration_papers": len(calibration),
        "calibrated_rate": round(maker.hits / max(len(queries), 1) / len(calibration), 6),
        "query_shapes": dict(sorted(maker.shapes.items())),
    }
    return Workload("real", day, before, queries, info)


def _bits(index: dict[str, list[int]], size: int) -> dict[str, int]:
    """Each key's papers as one int, bit i set for paper i: AND, OR and popcount in C."""
    out = {}
    for key, papers in index.items():
        bitmap = bytearray(size // 8 + 1)
        for i in papers:
            bitmap[i >> 3] |= 1 << (i & 7)
        out[key] = int.from_bytes(bitmap, "little")
    return out


class _QueryMaker:
    """Queries over the real vocabulary whose rate on the calibration papers is near `target`.

    Every paper of the calibration set is tokenized by the engine's own PaperView, and each
    word, title word, phrase of two words, prefix, author, category, organization and source
    becomes a bitmap of the papers that hold it; a query's rate is then a few big-int
    operations. Each shape's bitmap follows the evaluator's rules for that shape.
    """

    SHAPES = [("two", 0.33), ("three", 0.12), ("phrase", 0.10), ("or", 0.10), ("not", 0.07), ("prefix", 0.05),
              ("title", 0.08), ("author", 0.06), ("cat", 0.05), ("org", 0.02), ("upvotes", 0.02)]

    def __init__(self, papers: list[Paper], authors: list[str], rng: random.Random, target: float):
        self.rng, self.target, self.n = rng, target, len(papers)
        self.low, self.high = target / 2.5, target * 2.5
        words, titles, phrases, raw, meta = (defaultdict(list) for _ in range(5))
        surface: dict[str, Counter] = defaultdict(Counter)
        for i, paper in enumerate(papers):
            view = PaperView(paper)
            for w in view.any_set:
                words[w].append(i)
            for w in view.title_set:
                titles[w].append(i)
            for w in view.all_raw:
                raw[w].append(i)
            for seq in (view.title, view.abstract):
                for pair in set(zip(seq, seq[1:], strict=False)):
                    phrases[pair].append(i)  # a pair in both fields counts the paper twice: harmless for bits
            for tokens in view.authors:
                meta["a:" + " ".join(tokens)].append(i)
            for cat in view.cats:
                meta["c:" + cat].append(i)
            if paper.organization:
                meta["o:" + paper.organization.split("(")[1].rstrip(")")].append(i)
            if paper.upvotes is not None:
                meta[f"u:{min(paper.upvotes, 200)}"].append(i)
        for w, holding in raw.items():  # in the order first met, as counted paper by paper
            surface[stem(w)][w] += len(holding)
        self.surface = {s: counts.most_common(1)[0][0] for s, counts in surface.items()}
        # Filtered before the bitmaps are made (most keys are dropped: most phrases are one paper's).
        self.words = _bits({w: papers for w, papers in words.items() if self._usable(w)}, self.n)
        self.titles = _bits({w: papers for w, papers in titles.items() if w in self.words}, self.n)
        self.phrases = _bits({p: papers for p, papers in phrases.items()
                              if len(papers) >= 2 and all(w in self.words for w in p) and len(set(papers)) >= 2},
                             self.n)
        self.raw = _bits(raw, self.n)
        self.raw_sorted = sorted(self.raw)
        self.title_list = sorted(self.titles)
        self.meta = _bits(meta, self.n)
        # Words by how many papers hold them, for "a word that brings this down to the target".
        self.by_count = sorted((b.bit_count(), w) for w, b in self.words.items())
        self.counts = [c for c, _ in self.by_count]
        self.phrase_list = sorted(self.phrases)
        self.author_keys = sorted(k for k in self.meta if k.startswith("a:"))
        self.hits = 0
        self.shapes: Counter = Counter()

    def _usable(self, w: str) -> bool:
        text = self.surface.get(w, w)
        return (len(w) >= 3 and not w.isdigit() and w not in STOPWORDS and text.upper() not in ("AND", "OR", "NOT")
                and not text.startswith("upvotes"))

    def _rate_ok(self, bits: int) -> bool:
        return self.low * self.n <= bits.bit_count() <= self.high * self.n

    def _word(self) -> str:
        return self.rng.choice(self.by_count)[1]

    def _completing(self, bits: int, tries: int = 25) -> tuple[str, int] | None:
        """A word that, ANDed with `bits`, lands in the target band; None if none is found."""
        have = bits.bit_count()
        if not have:
            return None
        want = self.target * self.n / have  # the share of papers the word should hold
        lo = bisect.bisect_left(self.counts, want * self.n / 4)
        hi = bisect.bisect_right(self.counts, want * self.n * 4)
        if lo >= hi:
            lo, hi = max(0, lo - 50), min(len(self.counts), hi + 50)
        for _ in range(tries):
            w = self.by_count[self.rng.randrange(lo, hi)][1]
            joined = bits & self.words[w]
            if self._rate_ok(joined):
                return w, joined
        return None

    def _text(self, w: str) -> str:
        return self.surface[w]

    def _try(self, shape: str) -> tuple[str, int] | None:
        rng, words = self.rng, self.words
        if shape == "two":
            a = self._word()
            found = self._completing(words[a])
            return (f"{self._text(a)} {self._text(found[0])}", found[1]) if found else None
        if shape == "three":
            a, b = self._word(), self._word()
            joined = words[a] & words[b]
            if joined.bit_count() < self.high * self.n:
                return None
            found = self._completing(joined)
            return (f"{self._text(a)} {self._text(b)} {self._text(found[0])}", found[1]) if found else None
        if shape == "phrase":
            pair = rng.choice(self.phrase_list)
            bits = self.phrases[pair]
            phrase = f'"{self._text(pair[0])} {self._text(pair[1])}"'
            if self._rate_ok(bits):
                return phrase, bits
            found = self._completing(bits)
            return (f"{phrase} {self._text(found[0])}", found[1]) if found else None
        if shape == "or":
            a, b = self._word(), self._word()
            either = words[a] | words[b]
            found = self._completing(either)
            return (f"({self._text(a)} OR {self._text(b)}) {self._text(found[0])}", found[1]) if found else None
        if shape == "not":
            a = self._word()
            found = self._completing(words[a])
            if not found:
                return None
            c = self._word()
            kept = found[1] & ~words[c]
            if not self._rate_ok(kept) or kept == found[1]:
                return None
            return f"{self._text(a)} {self._text(found[0])} -{self._text(c)}", kept
        if shape == "prefix":
            word = self._text(self._word())
            if len(word) < 6:
                return None
            prefix = word[:rng.randint(4, min(6, len(word) - 1))]
            bits = 0
            for raw_word in self.raw_sorted[bisect.bisect_left(self.raw_sorted, prefix):]:
                if not raw_word.startswith(prefix):
                    break
                bits |= self.raw[raw_word]
            found = self._completing(bits)
            return (f"{prefix}* {self._text(found[0])}", found[1]) if found else None
        if shape == "title":
            a = rng.choice(self.title_list)
            bits = self.titles[a]
            if self._rate_ok(bits):
                return f"title:{self._text(a)}", bits
            found = self._completing(bits)
            return (f"title:{self._text(a)} {self._text(found[0])}", found[1]) if found else None
        if shape == "author":
            key = rng.choice(self.author_keys)
            bits = self.meta[key]
            return (f'author:"{key[2:]}"', bits) if self._rate_ok(bits) else None
        if shape == "cat":
            cat = rng.choice(zipf_bench.CATEGORIES).lower()
            found = self._completing(self.meta.get("c:" + cat, 0))
            return (f"{self._text(found[0])} cat:{cat}", found[1]) if found else None
        if shape == "org":
            org = rng.choice([o for o in zipf_bench.ORGS if o]).split("(")[1].rstrip(")")
            found = self._completing(self.meta.get("o:" + org, 0))
            return (f"{self._text(found[0])} org:{org}", found[1]) if found else None
        if shape == "upvotes":
            floor = rng.randint(1, 50)
            bits = 0
            for value in range(floor, 201):
                bits |= self.meta.get(f"u:{value}", 0)
            found = self._completing(bits)
            return (f"{self._text(found[0])} upvotes>={floor}", found[1]) if found else None
        raise ValueError(shape)

    def make(self) -> str:
        names, weights = zip(*self.SHAPES, strict=True)
        while True:
            shape = self.rng.choices(names, weights)[0]
            made = self._try(shape)
            if made is None:
                continue
            text, bits = made
            try:
                query = normalize_query(text)
            except QueryError:
                continue
            self.hits += bits.bit_count()
            self.shapes[shape] += 1
            return query
