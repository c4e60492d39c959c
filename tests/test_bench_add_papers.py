"""The add_papers benchmark runs at a small size, on both backends, and reports its figures."""

import json

from bench.add_papers import main


def test_small_add_papers_benchmark(tmp_path, capsys):
    figures = main(["--papers", "120", "--words", "30", "--dir", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figures["backend"] == "sqlite" and figures["papers"] == 120
    assert figures["first_listing_s"] > 0 and figures["listed_again_s"] > 0


def test_small_add_papers_benchmark_on_postgresql(pg_url, tmp_path):
    figures = main(["--papers", "120", "--words", "30", "--url", pg_url, "--dir", str(tmp_path)])
    assert figures["backend"] == "postgresql" and figures["papers"] == 120
    assert not list(tmp_path.iterdir())
