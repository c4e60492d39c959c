"""Papers like these: recommendations from examples (issue 13).

A `like:` subscription names example papers (`like:2406.12345,2405.00001`); new papers
similar to them are posted. The keyword part of its query (`like:2406.12345 -survey
cat:cs.CL`) filters, the like part scores. `like:saved` takes the channel's saved papers
as examples too and its "Not relevant" ones as negatives (Store.channel_feedback), read
again at each sync: a subscription whose channel's feedback changed is rebuilt.

The model, fitted from the bot's own stored papers (nothing is downloaded):

- `Model`: a tf-idf vocabulary and idf (scikit-learn's TfidfVectorizer over the words of
  title and abstract, sublinear tf, l2 norm) fitted on the most recent stored papers.
  Refitted on a schedule (`[recommend] refit_hours`), never per poll.
- A profile per subscription: the centroid of its examples' vectors, less a share of the
  centroid of its negatives when there are any (Rocchio), its PROFILE_TERMS heaviest words
  kept, normalized. A paper's score is its cosine with the profile less GENERIC_WEIGHT
  times its product with the mean of all fitted papers ("how generic it is": a paper
  about models and data in general is near every profile), measured from the average
  paper's (scores stay on a cosine's scale). That is the profile less a multiple of the
  corpus mean, as a linear SVM trained against every stored paper learns it, kept apart
  so that each profile stays sparse: a day of papers is scored for every subscription in
  one sparse matrix product, and the generic part once per paper.
  `python -m bench.recommend` sets it beside arxiv-sanity-lite's recipe (a linear SVM per
  user over all stored papers) and a keyword baseline.
- A threshold per subscription: its `score>=` if given (`--min-score`), else the score of
  its PER_DAY-th best paper per day over the recent papers (the top few a day), and never
  below FLOOR.

`Recommender` holds the model, the profiles, and the vectors of the papers listed in the
last PREVIEW_DAYS days (for `preview` and the thresholds). It is used from the poller's
worker thread and from command threads: every method takes its lock.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp

from .like import SAVED_MAX, LikeQuery, feedback_papers, like_query, similar_fact, split_like
from .models import ChannelFeedback, ChannelRef, Match, Paper, Subscription

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from storage import StoreContract

log = logging.getLogger(__name__)

__all__ = ["LikeQuery", "Model", "Preview", "Recommender", "Scored", "fit_model", "like_query", "profile",
           "similar_fact", "split_like"]

MAX_EXAMPLES = 20
PER_DAY = 3  # default threshold: about this many papers a day per subscription
FLOOR = 0.03  # a top-per-day threshold is never lower (bench.recommend's set: about an unrelated paper's median)
PROFILE_TERMS = 100  # a profile keeps its heaviest words: the poll's product is several times cheaper
NEGATIVE_WEIGHT = 0.5  # Rocchio's share of the negatives' centroid
GENERIC_WEIGHT = 2.0  # of a paper's product with the mean of the fitted papers (see bench.recommend)
FIT_PAPERS = 20_000  # the most recent stored papers the vocabulary and idf are fitted on
REFIT_HOURS = 24.0
PREVIEW_DAYS = 30
MAX_RECENT = 100_000  # papers whose vectors are kept for preview and thresholds
TEXT_MAX = 5000  # characters of a paper's abstract read


# ---- the model ---------------------------------------------------------------------------

def paper_text(paper: Paper) -> str:
    return f"{paper.title}\n{paper.summary[:TEXT_MAX]}"


def make_vectorizer(documents: int) -> TfidfVectorizer:
    """arxiv-sanity-lite's vectorizer (English stop words, sublinear tf, l2), with words only
    (its word pairs make each paper's vector 2.4 times longer, and so the poll's product,
    for no gain once profiles keep PROFILE_TERMS: bench.recommend) and document-frequency
    cuts that also suit the small corpus of a new bot."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # imported when first fitted

    return TfidfVectorizer(
        strip_accents="unicode", lowercase=True, analyzer="word", stop_words="english",
        token_pattern=r"(?u)\b[a-zA-Z_][a-zA-Z0-9_]+\b", ngram_range=(1, 1), max_features=50_000,
        norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True,
        # From 1,000 papers on, a word in fewer than 2 papers, or in more than 10% of them
        # (arxiv-sanity-lite's max_df), is no feature (the common ones made nearly every paper share
        # a word with every profile: at 10,000 profiles that halved the pairs the poll's product
        # yields, bench.recommend). A small corpus keeps more: a topic is a larger share of it.
        min_df=2 if documents >= 1000 else 1, max_df=0.1 if documents >= 1000 else 0.5 if documents >= 20 else 1.0,
        dtype=np.float32,
    )


@dataclass(frozen=True)
class Model:
    """A fitted vocabulary and idf; immutable once made, so any thread may use it."""

    vectorizer: TfidfVectorizer
    fitted_at: datetime
    papers: int  # how many papers it was fitted on
    mean: np.ndarray  # the mean of the fitted papers' vectors
    typical: float  # the fitted papers' average product with it

    def vectors(self, papers: Sequence[Paper]) -> sp.csr_matrix:
        """One l2-normalized row per paper (float32, CSR)."""
        return sp.csr_matrix(self.vectorizer.transform([paper_text(p) for p in papers]), dtype=np.float32)

    def generic(self, rows: sp.csr_matrix) -> np.ndarray:
        """What each row's scores lose: GENERIC_WEIGHT times its product with the mean paper,
        less that of the average paper (so that scores stay on the scale of a cosine)."""
        return GENERIC_WEIGHT * (np.asarray(rows @ self.mean, dtype=np.float32).ravel() - self.typical)

    def scores(self, rows: sp.csr_matrix, vector: sp.csr_matrix) -> np.ndarray:
        """The rows' scores for one profile (dense, one per row)."""
        return np.asarray((rows @ vector.T).todense(), dtype=np.float32).ravel() - self.generic(rows)

    def match_scores(self, rows: sp.csr_matrix, vector: sp.csr_matrix) -> np.ndarray:
        """`scores` as the poll sees them (Recommender.score): a row with no word in common
        with the profile is never a match (-inf), whatever its -generic, which is above 0 for
        a paper less like the average one than the average paper is (so that preview and
        thresholds never count a paper the poll cannot post)."""
        product = (rows @ vector.T).tocsr()
        scores = self.scores(rows, vector)
        scores[np.diff(product.indptr) == 0] = -np.inf
        return scores


def fit_model(papers: Sequence[Paper], now: datetime) -> Model:
    vectorizer = make_vectorizer(len(papers))
    fitted = vectorizer.fit_transform([paper_text(p) for p in papers])
    mean = np.asarray(fitted.mean(axis=0), dtype=np.float32).ravel()
    return Model(vectorizer, now, len(papers), mean, float(np.mean(fitted @ mean)))


def profile(positives: sp.csr_matrix, negatives: sp.csr_matrix | None = None,
            negative_weight: float = NEGATIVE_WEIGHT, terms: int | None = PROFILE_TERMS) -> sp.csr_matrix:
    """A subscription's scoring vector (1 x vocabulary, sparse, unit length): the centroid
    of its positives' rows less `negative_weight` times the centroid of its negatives',
    its `terms` heaviest words kept (None: all)."""
    centroid = np.asarray(positives.mean(axis=0), dtype=np.float32).ravel()
    if negatives is not None and negatives.shape[0]:
        centroid -= negative_weight * np.asarray(negatives.mean(axis=0), dtype=np.float32).ravel()
    if terms is not None and np.count_nonzero(centroid) > terms:
        centroid[np.argpartition(-np.abs(centroid), terms)[terms:]] = 0
    norm = float(np.linalg.norm(centroid))
    if norm > 0:
        centroid /= norm
    return sp.csr_matrix(centroid.reshape(1, -1))


def day_threshold(scores: np.ndarray, days: int, per_day: int = PER_DAY, floor: float = FLOOR) -> float:
    """The score that about `per_day` papers a day reach, over recent papers covering `days`."""
    wanted = per_day * max(1, days)
    if scores.size == 0:
        return floor
    if scores.size <= wanted:
        return max(floor, float(scores.min()))
    kth = float(np.partition(scores, scores.size - wanted)[scores.size - wanted])
    return max(floor, kth)


# ---- the recommender ---------------------------------------------------------------------

@dataclass
class _Sub:
    subscription: Subscription
    like: LikeQuery
    examples: list[Paper] = field(default_factory=list)  # those stored, in the order given (then saved ones)
    # Papers it is not to be like: the channel's "Not relevant" ones, for like:saved.
    negatives: list[Paper] = field(default_factory=list)
    feedback: ChannelFeedback | None = None  # like:saved: the channel's feedback its profile was built from
    excluded: frozenset[str] = frozenset()  # never recommended: its examples, saved and not relevant papers
    rows: sp.csr_matrix | None = None  # the examples' vectors
    vector: sp.csr_matrix | None = None  # the profile; None: nothing to score with
    threshold: float = FLOOR


@dataclass
class _Recent:
    """Vectors of recently listed papers (for preview and the thresholds), in chunks."""

    ids: list[str] = field(default_factory=list)
    days: list[date | None] = field(default_factory=list)
    chunks: list[sp.csr_matrix] = field(default_factory=list)
    known: set[str] = field(default_factory=set)

    def add(self, papers: Sequence[Paper], rows: sp.csr_matrix) -> None:
        keep = [i for i, p in enumerate(papers) if p.id not in self.known]
        if not keep:
            return
        self.ids += [papers[i].id for i in keep]
        self.days += [_day(papers[i]) for i in keep]
        self.known.update(papers[i].id for i in keep)
        self.chunks.append(rows[keep])
        if len(self.chunks) > 64:  # a poll adds a chunk a batch: merged now and then
            self.chunks = [sp.vstack(self.chunks, format="csr")]

    def matrix(self) -> sp.csr_matrix | None:
        if not self.chunks:
            return None
        if len(self.chunks) > 1:
            self.chunks = [sp.vstack(self.chunks, format="csr")]
        return self.chunks[0]

    def day_count(self) -> int:
        return max(1, len({d for d in self.days if d is not None}))


def _day(paper: Paper) -> date | None:
    return paper.listed_on or (paper.published.date() if paper.published else None)


@dataclass(frozen=True)
class Scored:
    """A paper `preview` shows: its score and the example it is most like."""

    paper: Paper
    score: float
    example: Paper
    example_score: float


@dataclass(frozen=True)
class Preview:
    """What a like: query would have posted from the recent papers."""

    papers: list[Scored]  # the best, best first
    count: int  # how many reach the threshold and pass the keywords
    scanned: int  # recent papers scored
    threshold: float


class Recommender:
    """like: subscriptions, their profiles and thresholds, and the model they share."""

    def __init__(self, *, per_day: int = PER_DAY, refit_hours: float = REFIT_HOURS, fit_papers: int = FIT_PAPERS,
                 floor: float = FLOOR):
        self.per_day = per_day
        self.refit = timedelta(hours=refit_hours)
        self.fit_papers = fit_papers
        self.floor = floor
        self.model: Model | None = None
        self._subs: dict[int, _Sub] = {}
        self._recent = _Recent()
        self._matrix: sp.csr_matrix | None = None  # profiles, one column per scored subscription
        self._columns: list[int] = []  # subscription id of each column
        self._examples: sp.csr_matrix | None = None  # every column's examples' vectors, stacked
        self._offsets = np.zeros(1, dtype=np.int64)  # column j's examples: rows offsets[j]:offsets[j + 1]
        self._thresholds = np.zeros(0, dtype=np.float32)
        self._lock = threading.RLock()

    # -- subscriptions --

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._subs)

    def __len__(self) -> int:
        return len(self._subs)

    def sync(self, store: StoreContract, current: set[int], changed: Sequence[Subscription]) -> list[Subscription]:
        """Take the like: subscriptions among `changed` (added, or with a new query), drop
        those no longer `current` (or no longer like:), and return the other ones, for the
        keyword matcher. `store` (a StoreContract) gives the examples' papers and, for
        like:saved, the channels' feedback: those whose channel's feedback changed since
        are rebuilt too, so that they follow Save and Not relevant from poll to poll."""
        with self._lock:
            others = []
            for gone in set(self._subs) - current:
                self._drop(gone)
            feedback: dict[ChannelRef, ChannelFeedback] = {}
            built = set()
            for sub in changed:
                like = like_query(sub.query)
                if like is None:
                    self._drop(sub.id)
                    others.append(sub)
                    continue
                entry = _Sub(sub, like)
                entry.examples = [p for p in (store.get_paper(i) for i in like.examples) if p is not None]
                if len(entry.examples) < len(like.examples):
                    log.warning("like: subscription #%s: %d of its examples are not stored", sub.id,
                                len(like.examples) - len(entry.examples))
                if like.saved:
                    self._with_feedback(store, entry, self._feedback(store, sub.channel, feedback))
                else:
                    entry.excluded = frozenset(like.examples)
                self._subs[sub.id] = entry
                built.add(sub.id)
                if self.model is not None:
                    self._build(entry)
                self._matrix = None
            for sid, entry in list(self._subs.items()):  # like:saved: the feedback given since
                if entry.like.saved and sid not in built:
                    now = self._feedback(store, entry.subscription.channel, feedback)
                    if now != entry.feedback:
                        explicit = [p for p in entry.examples if p.id in entry.like.examples]
                        entry.examples = explicit
                        self._with_feedback(store, entry, now)
                        if self.model is not None:
                            self._build(entry)
                        self._matrix = None
            return others

    @staticmethod
    def _feedback(store: StoreContract, channel: ChannelRef,
                  known: dict[ChannelRef, ChannelFeedback]) -> ChannelFeedback:
        """A channel's feedback, read once a sync (`known`)."""
        if channel not in known:
            known[channel] = store.channel_feedback(channel, SAVED_MAX)
        return known[channel]

    @staticmethod
    def _with_feedback(store: StoreContract, entry: _Sub, feedback: ChannelFeedback) -> None:
        """A like:saved entry's positives (its ids' papers, then the saved ones) and
        negatives (the "Not relevant" ones) from its channel's feedback."""
        entry.feedback = feedback
        entry.examples, entry.negatives = feedback_papers(store, entry.like, feedback, entry.examples)
        entry.excluded = frozenset([*entry.like.examples, *feedback.saved, *feedback.not_relevant])

    def _drop(self, subscription_id: int) -> None:
        if self._subs.pop(subscription_id, None) is not None:
            self._matrix = None

    def _build(self, entry: _Sub, reference: sp.csr_matrix | None = None, days: int | None = None,
               known: dict[str, sp.csr_matrix] | None = None) -> None:
        """The entry's profile and threshold, with the current model (`known`: vectors by paper id)."""
        assert self.model is not None
        if not entry.examples:
            entry.rows = entry.vector = None
            return
        if known is not None:
            entry.rows = sp.vstack([known[p.id] for p in entry.examples], format="csr")
        else:
            entry.rows = self.model.vectors(entry.examples)
        entry.vector = profile(entry.rows, self.model.vectors(entry.negatives) if entry.negatives else None)
        entry.threshold = self._threshold(entry.like, entry.vector, reference, days, entry.excluded)

    def _threshold(self, like: LikeQuery, vector: sp.csr_matrix, reference: sp.csr_matrix | None = None,
                   days: int | None = None, excluded: frozenset[str] | None = None) -> float:
        """The query's score>=, else the score of its `per_day`-th best recent paper a day
        (its examples, or `excluded`, left out), never below the floor."""
        if like.min_score is not None:
            return like.min_score
        if reference is None:
            reference = self._recent.matrix()
            days = self._recent.day_count()
        if reference is None or self.model is None:
            return self.floor
        scores = self.model.match_scores(reference, vector)
        examples = excluded if excluded is not None else frozenset(like.examples)
        if examples & self._recent.known:
            scores = scores[[i for i, paper_id in enumerate(self._recent.ids) if paper_id not in examples]]
        return day_threshold(scores, days or 1, self.per_day, self.floor)

    # -- the model --

    def needs_fit(self, now: datetime) -> bool:
        with self._lock:
            return self.model is None or now - self.model.fitted_at >= self.refit

    def fit(self, store: StoreContract, now: datetime) -> None:
        """Fit the vocabulary and idf on the most recent stored papers, and rebuild every
        profile, threshold and the recent papers' vectors with it. Seconds of work: in a
        worker thread. `store` is a StoreContract."""
        papers = store.recent_papers(self.fit_papers)
        recent = store.papers_listed_since(now - timedelta(days=PREVIEW_DAYS), MAX_RECENT)
        with self._lock:
            examples = [p for entry in self._subs.values() for p in entry.examples]
            corpus = papers or examples
            if not corpus:
                return  # nothing stored yet: the next poll tries again
            model = fit_model(corpus, now)
            self.model = model
            self._recent = _Recent()
            for start in range(0, len(recent), 2000):
                chunk = recent[start:start + 2000]
                self._recent.add(chunk, model.vectors(chunk))
            reference, days = self._recent.matrix(), self._recent.day_count()
            unique = list({p.id: p for entry in self._subs.values() for p in entry.examples}.values())
            vectors = model.vectors(unique) if unique else None  # one transform for every example
            known = {p.id: vectors[i] for i, p in enumerate(unique)} if vectors is not None else {}
            for entry in self._subs.values():
                self._build(entry, reference, days, known)
            self._matrix = None
            log.info("recommendations: fitted on %d papers (%d words), %d like: subscriptions",
                     len(corpus), len(model.vectorizer.vocabulary_), len(self._subs))

    def ensure_fitted(self, store: StoreContract, now: datetime) -> None:
        if self.needs_fit(now):
            self.fit(store, now)

    def vectors(self, papers: Sequence[Paper]) -> sp.csr_matrix:
        with self._lock:
            if self.model is None:
                raise RuntimeError("the recommender is not fitted yet")
            return self.model.vectors(papers)

    # -- scoring --

    def _profiles(self) -> tuple[sp.csr_matrix | None, list[int], np.ndarray]:
        if self._matrix is None:
            columns = [sid for sid, entry in sorted(self._subs.items()) if entry.vector is not None]
            if columns:
                self._matrix = sp.vstack([self._subs[sid].vector for sid in columns], format="csr").T.tocsr()
                self._examples = sp.vstack([self._subs[sid].rows for sid in columns], format="csr")
                sizes = [len(self._subs[sid].examples) for sid in columns]
                self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            self._columns = columns
            self._thresholds = np.array([self._subs[sid].threshold for sid in columns], dtype=np.float32)
        return self._matrix, self._columns, self._thresholds

    def score(self, rows: sp.csr_matrix) -> list[list[tuple[int, float]]]:
        """For each row (a paper's vector), the like: subscriptions whose threshold it reaches,
        with its score, by subscription id: one sparse matrix product for all of them."""
        with self._lock:
            matrix, columns, thresholds = self._profiles()
            found: list[list[tuple[int, float]]] = [[] for _ in range(rows.shape[0])]
            if matrix is None or rows.shape[0] == 0 or self.model is None:
                return found
            product = (rows @ matrix).tocsr()  # papers x subscriptions, sparse: one product for all
            # A pair the product left out (no word in common) scores -generic: below every threshold.
            generic = self.model.generic(rows)
            product.data -= generic[np.repeat(np.arange(rows.shape[0]), np.diff(product.indptr))]
            product.data[product.data < thresholds[product.indices]] = 0
            product.eliminate_zeros()
            for i in range(product.shape[0]):
                start, end = product.indptr[i], product.indptr[i + 1]
                found[i] = sorted((columns[j], float(s)) for j, s in
                                  zip(product.indices[start:end], product.data[start:end], strict=True))
            return found

    def match_many(self, papers: Sequence[Paper]) -> list[list[Match]]:
        """Each paper's like: matches (keyword filters applied, the example it is most like
        as the fact), in the order of `papers`; the papers join the recent ones."""
        from .matching import PaperView, evaluate  # matching imports query, not this

        with self._lock:
            if self.model is None or not papers:
                return [[] for _ in papers]
            rows = self.model.vectors(papers)
            self._recent.add(papers, rows)
            if not self._subs:
                return [[] for _ in papers]
            pairs: list[tuple[int, int, float]] = []  # (paper index, subscription id, score)
            for index, (paper, hits) in enumerate(zip(papers, self.score(rows), strict=True)):
                view: PaperView | None = None
                for sid, score in hits:
                    like = self._subs[sid].like
                    if paper.id in self._subs[sid].excluded:  # an example (or not relevant) is no recommendation
                        continue
                    if like.keywords is not None:
                        view = view or PaperView(paper)
                        if evaluate(like.keywords, view) is None:
                            continue
                    pairs.append((index, sid, score))
            found: list[list[Match]] = [[] for _ in papers]
            for (index, sid, score), example in zip(pairs, self._nearest_examples(rows, pairs), strict=True):
                sub = self._subs[sid].subscription
                found[index].append(Match(sid, sub.channel, sub.query, (similar_fact(example, score),)))
            return found

    def _nearest_examples(self, rows: sp.csr_matrix, pairs: list[tuple[int, int, float]]) -> list[Paper]:
        """For each (paper, subscription) pair, the subscription's example most like the
        paper: every pair's every example in one row-wise product."""
        if not pairs or self._examples is None:
            return []
        column = {sid: j for j, sid in enumerate(self._columns)}
        starts = np.array([self._offsets[column[sid]] for _, sid, _ in pairs], dtype=np.int64)
        sizes = np.array([self._offsets[column[sid] + 1] for _, sid, _ in pairs], dtype=np.int64) - starts
        segment = np.repeat(np.arange(len(pairs)), sizes)
        example_rows = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + \
            np.arange(int(sizes.sum()))
        paper_rows = np.array([index for index, _, _ in pairs], dtype=np.int64)[segment]
        sims = np.asarray(self._examples[example_rows].multiply(rows[paper_rows]).sum(axis=1)).ravel()
        found = []
        for n, (_, sid, _) in enumerate(pairs):
            start = int(np.searchsorted(segment, n))
            best = int(np.argmax(sims[start:start + int(sizes[n])]))
            found.append(self._subs[sid].examples[best])
        return found

    # -- preview --

    def preview(self, store: StoreContract, like: LikeQuery, examples: list[Paper], shown: int,
                negatives: Sequence[Paper] = ()) -> Preview:
        """What a like: query would have posted from the recent papers: those that reach its
        threshold and pass its keywords, best first (the first `shown` with their papers).
        `store` gives the papers (for the keywords and those shown)."""
        from .matching import PaperView, evaluate

        with self._lock:
            if self.model is None:
                raise RuntimeError("the recommender is not fitted yet")
            rows = self.model.vectors(examples)
            negative_rows = self.model.vectors(negatives) if negatives else None
            vector = profile(rows, negative_rows)
            examples_ids = frozenset([*like.examples, *(p.id for p in examples), *(p.id for p in negatives)])
            reference = self._recent.matrix()
            if reference is None:
                return Preview([], 0, 0, self._threshold(like, vector, excluded=examples_ids))
            threshold = self._threshold(like, vector, excluded=examples_ids)
            scores = self.model.match_scores(reference, vector)
            order = np.argsort(-scores, kind="stable")
            ids = self._recent.ids
            found: list[Scored] = []
            count = 0
            for index in order:
                score = float(scores[index])
                if score < threshold or math.isnan(score):
                    break
                if ids[index] in examples_ids:  # an example is not a recommendation
                    continue
                paper = None
                if like.keywords is not None or len(found) < shown:
                    paper = store.get_paper(ids[index])
                    if paper is None:
                        continue
                    if like.keywords is not None and evaluate(like.keywords, PaperView(paper)) is None:
                        continue
                count += 1
                if paper is not None and len(found) < shown:
                    example, similarity = _nearest(rows, examples, reference[index])
                    found.append(Scored(paper, score, example, similarity))
            return Preview(found, count, reference.shape[0], threshold)


def _nearest(rows: sp.csr_matrix, examples: Sequence[Paper], row: sp.csr_matrix) -> tuple[Paper, float]:
    """The example most like a paper (`row`), and how much."""
    sims = np.asarray((rows @ row.T).todense()).ravel()
    best = int(np.argmax(sims))
    return examples[best], float(sims[best])


