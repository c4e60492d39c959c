"""The search benchmark runs at a small size and reports its figures."""

import json

from bench.search import main


def test_small_search_benchmark(tmp_path, capsys):
    figures = main(["--papers", "1500", "--queries", "30", "--words", "40", "--previews", "20", "--dir", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figures["papers"] == 1500
    assert figures["search_with_results"] > 0 and figures["show_with_results"] == 30
    for key in ("search_p50_ms", "search_p95_ms", "common_search_p95_ms", "show_p50_ms", "show_p95_ms",
                "preview_p50_ms", "preview_p95_ms", "preview_loop_held_max_ms", "index_s"):
        assert figures[key] >= 0
    assert figures["preview_with_results"] > 0 and figures["preview_matches_max"] > 0
    again = main(["--papers", "1500", "--queries", "30", "--words", "40", "--dir", str(tmp_path)])
    assert again["papers"] == 1500  # the store is reused, not filled twice


def test_small_search_benchmark_on_real_text(tmp_path):
    figures = main(["--papers", "1500", "--queries", "10", "--previews", "20", "--workload", "real",
                    "--dir", str(tmp_path)])
    assert figures["workload"] == "real" and figures["papers"] == 1500
    assert figures["search_with_results"] > 0 and figures["preview_with_results"] > 0


def test_small_search_benchmark_on_postgresql(pg_url, tmp_path):
    figures = main(["--papers", "400", "--queries", "10", "--words", "40", "--previews", "10", "--url", pg_url,
                    "--dir", str(tmp_path)])
    assert figures["backend"] == "postgresql" and figures["papers"] == 400
    assert figures["search_with_results"] > 0 and figures["show_with_results"] == 10
    assert figures["preview_with_results"] > 0 and figures["db_mb"] > 0
    assert not list(tmp_path.iterdir())  # no SQLite file made
