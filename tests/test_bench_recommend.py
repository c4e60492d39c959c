"""The recommendation benchmark runs at a small size and reports its figures."""

import json

from bench.recommend import main


def test_small_recommend_benchmark(capsys):
    figures = main(["--draws", "2", "--subscriptions", "40", "--day", "60", "--fit", "300", "--recent", "100"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    quality, speed = figures["quality"], figures["speed"]
    assert quality["papers"] == 117 and quality["groups"] == 10
    for method in ("centroid", "plain_centroid", "svm", "keyword"):
        assert 0 <= quality[f"{method}_p10"] <= 1 and 0 <= quality[f"{method}_r50"] <= 1
    # The scorers find a topic's other papers: far more than a random ranking would (10 of 117).
    assert quality["centroid_r50"] > 0.6 and quality["svm_r50"] > 0.6
    assert speed["subscriptions"] == 40 and speed["day"] == 60 and speed["refit_s"] >= 0
    assert speed["pairs"] >= speed["above_threshold"] > 0 and speed["multiplications"] >= speed["pairs"]
    assert speed["matches"] > 0


def test_small_recommend_benchmark_on_zipf_papers():
    figures = main(["--draws", "1", "--subscriptions", "30", "--day", "50", "--fit", "200", "--recent", "50",
                    "--workload", "zipf"])
    assert figures["speed"]["workload"] == "zipf" and figures["speed"]["matches"] > 0
