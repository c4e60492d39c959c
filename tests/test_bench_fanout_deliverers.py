"""bench.fanout --deliverers: real `papers-bot run --role deliverer` processes on PostgreSQL,
small (the figures are in docs/benchmarks.md; here only that every message arrives once)."""

import json

from bench.fanout import main as fanout


def test_two_deliverers_send_every_message_once(capsys, pg_url):
    figures = fanout(["--platform", "slack", "--channels", "4", "--papers", "2", "--concurrency", "2",
                      "--deliverers", "2", "--storage", pg_url, "--timeout", "120"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figures["deliverers"] == 2 and figures["messages"] == 8
    assert figures["lost"] == figures["duplicated"] == figures["unexpected"] == 0
    assert figures["sending_s"] is not None and figures["sending_s"] <= figures["elapsed_s"]
