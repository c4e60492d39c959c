"""bench.outbox runs at a tiny size: its three ways of writing a poll's outbox queue the same rows.

Figures, not timings: the counts must agree, never how fast anything was.
"""

import json
import os

import pytest

from bench.outbox import main


def test_the_three_ways_of_writing_the_outbox_queue_the_same_deliveries(capsys):
    workload = "zipf"  # the real workload is made from a calibration set: slower to build, the same here
    args = ["--subscriptions", "600", "--papers", "60", "--workload", workload, "--seed", "3", "--rows", "20"]
    runs = [main([*args, "--mode", mode, "--group", "0"]) for mode in ("queue_matched", "enqueue_many", "floor")]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == runs[-1]
    assert {run["transactions"] for run in runs} == {runs[0]["transactions"]} and runs[0]["transactions"] > 1
    split = main([*args, "--mode", "queue_matched", "--group", "100"])  # as the poller: groups cut by channels
    assert split["group_rows"] == 100 and split["transactions"] > runs[0]["transactions"] // 5
    runs.append(split)
    queued = {run["queued"] for run in runs}
    assert len(queued) == 1 and 0 < queued.pop() <= runs[0]["matches"]  # a delivery answers one or more matches
    for run in runs:
        assert run["cpu_s"] >= run["transactions_cpu_s"] >= 0 and run["worst_transaction_ms"] >= 0


def test_on_postgresql_queue_matched_and_enqueue_many_queue_the_same_deliveries():
    base = os.environ.get("PAPERS_BOT_TEST_DATABASE_URL")
    if not base:
        pytest.skip("needs PAPERS_BOT_TEST_DATABASE_URL (a schema of the run's own is made there, dropped after)")
    runs = [main(["--subscriptions", "600", "--papers", "60", "--workload", "zipf", "--seed", "3", "--rows", "20",
                  "--mode", mode, "--url", base]) for mode in ("queue_matched", "enqueue_many")]
    assert {run["backend"] for run in runs} == {"postgresql"}
    assert runs[0]["queued"] == runs[1]["queued"] > 0 and runs[0]["transactions"] > 1
