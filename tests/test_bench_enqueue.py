"""The enqueue benchmark runs at a small size on both backends and reports its figures."""

import json

import psycopg

from bench.enqueue import main


def test_small_enqueue_benchmark_on_sqlite(tmp_path, capsys):
    figures = main(["--rows", "2000", "--channels", "30", "--target", str(tmp_path / "enqueue.db")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert (figures["backend"], figures["rows"], figures["papers"], figures["again_new"]) == ("Store", 2000, 67, 0)
    assert figures["due_channels"] == 30 and figures["plan_burst_rows"] == 67


def test_small_enqueue_benchmark_on_postgresql(pg_url, capsys):
    figures = main(["--rows", "2000", "--channels", "30", "--target", pg_url])
    assert (figures["backend"], figures["rows"], figures["papers"], figures["again_new"]) == ("PgStore", 2000, 67, 0)
    assert figures["due_channels"] == 30 and figures["plan_burst_rows"] == 67
    with psycopg.connect(pg_url) as conn:  # it worked in a schema of its own, not the test's
        assert conn.execute("SELECT to_regclass('deliveries')").fetchone() == (None,)
