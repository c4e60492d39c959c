"""bench.pipeline runs at a tiny size, and its workloads are what they say they are.

Figures, not timings: these tests check that every field is there and that the counts
agree with each other, never how fast anything was.
"""

import json
import random
from datetime import datetime, timezone

import pytest

from bench.pipeline import fill, main
from bench.workloads import RealText, _QueryMaker, load_seed, make_workload, real_authors
from bot.matching import PaperView, evaluate
from bot.query import parse_query
from storage import Store

FIELDS = ("workload", "subscriptions", "distinct_queries", "papers", "history_papers", "new", "queued", "matches",
          "matches_per_paper", "match_rate", "candidates_per_paper", "index_load_s", "poll_s", "papers_per_s",
          "loop_stall_max_ms", "loop_stall_p99_ms", "stalls_over_250ms", "commands", "ack_p50_ms", "ack_max_ms",
          "acks_over_3s", "acks_failed", "replies", "reply_p50_ms", "reply_max_ms", "poll_split_s",
          "stall_split_s", "stall_top_s", "peak_rss_mb", "seed", "write_split_s", "poll_cpu_s",
          "full_collections_during_poll", "full_collection_max_ms", "match_cpu_s", "switch_interval", "enqueue_rows")


@pytest.mark.parametrize("workload", ["real", "zipf"])
def test_a_tiny_pipeline_run_reports_consistent_figures(capsys, workload):
    figures = main(["--subscriptions", "400", "--papers", "40", "--history", "50", "--workload", workload,
                    "--seed", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    for key in FIELDS:
        assert key in figures, key
    assert figures["workload"] == workload
    # A channel subscribed twice to one query keeps one subscription.
    assert 0 < figures["subscriptions"] <= 400 and figures["papers"] == 40 and figures["history_papers"] == 50
    assert figures["new"] == 40  # every paper of the poll was stored and matched
    assert 0 < figures["queued"] <= figures["matches"]  # a delivery answers one or more matching subscriptions
    assert figures["matches_per_paper"] == round(figures["matches"] / 40, 1)
    assert figures["match_rate"] == round(figures["matches"] / 40 / figures["subscriptions"], 6)
    assert figures["candidates_per_paper"] > 0
    assert figures["commands"] >= 5  # one every 200 ms across at least two seconds
    assert figures["acks_failed"] == 0 and figures["replies"] == figures["commands"]
    assert figures["ack_p50_ms"] <= figures["ack_max_ms"] and figures["reply_p50_ms"] <= figures["reply_max_ms"]
    assert figures["loop_stall_p99_ms"] <= figures["loop_stall_max_ms"]
    assert set(figures["poll_split_s"]) == {"add_papers", "match", "sync_subscriptions", "index_words",
                                            "bookkeeping", "split", "wait_for_writer", "write_turn", "commit",
                                            "other"}
    # The writer thread's transactions, of which the outbox INSERTs: there were deliveries to write.
    assert 0 <= figures["write_split_s"]["enqueue"] <= figures["write_split_s"]["transactions"]
    assert figures["full_collections_during_poll"] == 0  # the poll turns collection off
    assert figures["papers_per_s"] == pytest.approx(40 / figures["poll_s"], rel=0.2)  # poll_s is rounded


def test_kept_index_loads_the_index_an_earlier_run_kept_and_matches_the_same(capsys):
    args = ["--subscriptions", "300", "--papers", "30", "--history", "20", "--seed", "3"]
    built, kept = main(args), main([*args, "--kept-index"])
    assert (built["kept_index"], kept["kept_index"]) == (False, True)
    assert (built["index_from_file"], kept["index_from_file"]) == (False, True)
    assert kept["kept_index_s"] > 0 and built["kept_index_s"] is None
    assert kept["index_load_stall_max_ms"] >= 0
    assert (kept["matches"], kept["queued"]) == (built["matches"], built["queued"]) and kept["matches"] > 0
    assert built["index_save_s"] is None  # 300 subscriptions: under Poller.INDEX_SAVE_MIN, not kept


def test_sweep_runs_delivery_sweeps_through_the_poll(capsys):
    figures = main(["--subscriptions", "200", "--papers", "20", "--history", "20", "--seed", "2", "--sweep"])
    assert figures["sweeps"] >= 1  # one began with the poll, at least
    assert 0 <= figures["sweep_sent"] <= figures["queued"] + 200  # cards, and a digest per channel at most
    assert "sweeps" not in main(["--subscriptions", "200", "--papers", "20", "--history", "20", "--seed", "2"])


def test_the_real_workload_recombines_the_seed_pages_sentences_and_is_fixed_by_the_seed():
    pairs = load_seed()
    assert len(pairs) >= 100  # the saved page lists about 120 papers, each a title and an abstract
    text = RealText(pairs)
    one = make_workload("real", subscriptions=200, papers=30, history=10, seed=4)
    two = make_workload("real", subscriptions=200, papers=30, history=10, seed=4)
    assert [p.summary for p in one.papers] == [p.summary for p in two.papers] and one.queries == two.queries
    assert make_workload("real", subscriptions=200, papers=30, history=10, seed=5).queries != one.queries
    sentences = set(text.sentences)
    for paper in one.papers:
        assert paper.title and paper.authors
        assert any(paper.summary.startswith(s) for s in sentences)
        assert any(paper.summary.endswith(s) for s in sentences)
    assert {p.id for p in one.papers}.isdisjoint(p.id for p in one.history)
    for query in one.queries:
        parse_query(query)  # every query is one the bot accepts


def test_query_rates_are_measured_by_the_evaluators_own_rules():
    """The calibration bitmaps agree with bot.matching.evaluate on every query shape."""
    rng = random.Random(7)
    text = RealText(load_seed())
    authors = real_authors(rng, 300)
    papers = [text.paper(f"2697.{i:05d}", rng, authors) for i in range(600)]
    maker = _QueryMaker(papers, authors, rng, target=0.01)
    views = [PaperView(p) for p in papers]
    checked = 0
    for shape, _ in maker.SHAPES:
        made = []
        for _ in range(500):
            if (one := maker._try(shape)) is not None:
                made.append(one)
                if len(made) == 5:
                    break
        assert made, f"no {shape} query could be made"
        for query, bits in made:
            node = parse_query(query)
            expected = sum(1 << i for i, view in enumerate(views) if evaluate(node, view) is not None)
            assert bits == expected, (shape, query)
            checked += 1
    assert checked >= 30


def test_the_zipf_workload_is_bench_matchings():
    from bench import matching

    workload = make_workload("zipf", subscriptions=300, papers=20, history=10, seed=3)
    rng = random.Random(3)
    vocabulary = matching.make_vocabulary(rng)
    words = matching.Zipf(vocabulary, rng)
    matching.Zipf(vocabulary, rng, offset=matching.SKIP_TOP)
    authors = matching.make_authors(rng)
    assert [p.title for p in workload.papers] == [p.title for p in matching.make_papers(20, words, authors, rng)]
    assert len(workload.queries) == 300 and len(workload.history) == 10
    assert {p.id for p in workload.papers}.isdisjoint(p.id for p in workload.history)


def test_fill_leaves_preview_s_word_index_up_to_date(tmp_path):
    # The measured poll indexes its own new papers for preview, not the history's too.
    workload = make_workload("real", subscriptions=50, papers=5, seed=3, history=20)
    fill(tmp_path / "b.db", workload, datetime(2026, 11, 30, tzinfo=timezone.utc))
    store = Store(tmp_path / "b.db")
    try:
        assert store.index_paper_words() == 0
        store.add_papers(workload.papers, datetime(2026, 11, 30, tzinfo=timezone.utc))
        assert store.index_paper_words() == 5
    finally:
        store.close()
