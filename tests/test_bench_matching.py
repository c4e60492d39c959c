"""The matching benchmark runs at a small size: its own engine == naive assertion must hold."""

import json

from bench.matching import main


def test_small_benchmark_agrees_with_the_naive_loop_and_reports_figures(capsys):
    figures = main(["--subscriptions", "2000", "--papers", "60", "--seed", "3", "--naive-sample", "60"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    for key in ("subscriptions", "papers", "matches", "build_s", "match_s", "papers_per_s", "naive_s",
                "speedup", "peak_rss_mb", "naive_sampled_papers"):
        assert key in figures
    assert figures["subscriptions"] == 2000 and figures["papers"] == 60
    assert figures["matches"] > 0  # the workload exercises the engine
    assert figures["naive_scaled_from_sample"] is False


def test_workload_is_fixed_by_the_seed(capsys):
    one = main(["--subscriptions", "300", "--papers", "10", "--seed", "5"])
    two = main(["--subscriptions", "300", "--papers", "10", "--seed", "5"])
    assert (one["matches"], one["distinct_queries"]) == (two["matches"], two["distinct_queries"])


def test_real_workload_in_two_processes_agrees_with_the_naive_loop(capsys):
    figures = main(["--subscriptions", "1500", "--papers", "60", "--seed", "2", "--naive-sample", "60",
                    "--workload", "real", "--processes", "2"])
    assert figures["workload"] == "real" and figures["processes"] == 2
    assert figures["matches"] > 0 and figures["naive_scaled_from_sample"] is False
    assert figures["pss_with_workers_mb"] > 0


def test_sharded_engine_in_two_worker_processes_agrees_with_the_naive_loop(capsys):
    figures = main(["--subscriptions", "1500", "--papers", "60", "--seed", "2", "--naive-sample", "60",
                    "--workload", "real", "--shards", "2"])
    assert figures["workload"] == "real" and figures["shards"] == 2
    assert figures["matches"] > 0 and figures["naive_sampled_papers"] == 60  # every paper checked against it
    assert len(figures["worker_peak_rss_mb"]) == 2 and all(r > 0 for r in figures["worker_peak_rss_mb"])
