"""The fault-injection suite at a small size: kill -9 mid-delivery, rate limits, an outage;
one `run` on SQLite, and a poller and three deliverers on PostgreSQL.

Both runs start together, each `bench.faults.main` in a process of its own: each spends its
minute mostly waiting for the fakes' rate limits and for the bots it starts, so side by side
they take about as long as one (the first test waits for its run, the second for what is
left of its own)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import drop_pg_schema, new_pg_schema

ROOT = Path(__file__).resolve().parent.parent.parent

# bench.faults.main(argv), and then one line: [whether the last line it printed is the JSON of what
# it returned, what it returned].
RUN = """
import contextlib, io, json, sys
from bench.faults import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    figures = main(sys.argv[1:])
print(out.getvalue(), end="")
print(json.dumps([json.loads(out.getvalue().strip().splitlines()[-1]) == figures, figures]))
"""
# 35 papers a round: 10 cards, a digest of 20, and 5 past both, settled as overflow.
SQLITE = ["--rounds", "2", "--papers", "35", "--seed", "7", "--timeout", "180"]
# One poller and three deliverers (`papers-bot run --role ...`) on PostgreSQL; each round
# SIGKILLs some of them (seed 3: the poller once, deliverers five times) and restarts them.
POSTGRESQL = ["--rounds", "2", "--papers", "6", "--seed", "3", "--timeout", "180",
              "--pollers", "1", "--deliverers", "3"]


class Run:
    """One `bench.faults` run in a process (and process group: its bots too) of its own."""

    def __init__(self, argv: list[str]):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", RUN, *argv], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def figures(self) -> dict:
        out, err = self.proc.communicate(timeout=600)
        assert self.proc.returncode == 0, err[-3000:]
        printed_what_it_returned, figures = json.loads(out.strip().splitlines()[-1])
        assert printed_what_it_returned, out[-3000:]
        return figures

    def stop(self) -> None:
        if self.proc.poll() is None:  # a test failed or was interrupted first: nothing left running
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


@pytest.fixture(scope="module")
def runs():
    started: dict[str, Run | BaseException] = {"sqlite": Run(SQLITE)}
    schema = None
    try:
        base, schema, url = new_pg_schema()
    except (pytest.skip.Exception, pytest.fail.Exception) as outcome:  # the PostgreSQL test's alone
        started["postgresql"] = outcome
    else:
        started["postgresql"] = Run(POSTGRESQL + ["--storage", url])
    try:
        yield started
    finally:
        for run in started.values():
            if isinstance(run, Run):
                run.stop()
        if schema is not None:
            drop_pg_schema(base, schema)


def figures_of(runs: dict, storage: str) -> dict:
    run = runs[storage]
    if isinstance(run, BaseException):
        raise run
    return run.figures()


def test_nothing_lost_nothing_duplicated_across_kills(runs):
    figures = figures_of(runs, "sqlite")
    assert figures["kills"] == 2 and figures["outages"] == 1
    assert figures["expected"] == 2 * 35 * 4
    assert figures["lost"] == 0, figures["problems"]
    # Past the cards and the digest: settled, each one counted in the digest it went with.
    assert figures["overflowed"] > 0 and figures["overflow_unannounced"] == 0
    assert figures["delivered"] + figures["overflowed"] == figures["expected"]
    assert figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert figures["integrity"] == "ok" and figures["problems"] == []
    # Follow-ups (code, 100 upvotes) in the cards' threads: each exactly once across the kills.
    assert figures["followups"] > 0 and figures["followups_open"] == 0 and figures["followups_lost"] == 0
    assert figures["followups_duplicated"] == 0 and figures["followups_unexpected"] == 0
    assert figures["rate_limited_429s"] > 0  # the fakes' limits were hit and honoured
    # subscribe, unsubscribe and mute processes ran alongside the bot and its kills
    assert figures["commands"] == 12 and figures["commands_failed"] == 0, figures["problems"]
    assert figures["subscriptions_lost"] == 0, figures["problems"]


def test_cooperating_processes_on_postgresql_killed_at_random(runs):
    figures = figures_of(runs, "postgresql")
    assert figures["storage"] == "postgresql" and (figures["pollers"], figures["deliverers"]) == (1, 3)
    assert figures["kills_by_role"]["poller"] >= 1 and figures["kills_by_role"]["deliverer"] >= 1
    assert sum(figures["kills_by_role"].values()) == figures["kills"] == figures["restarts"]
    assert figures["poller_elections"] == 1 + figures["kills_by_role"]["poller"]  # the restarted one took over
    assert figures["expected"] == 2 * 6 * 4 and figures["outages"] == 1
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0, figures["problems"]
    assert figures["delivered"] + figures["overflowed"] == figures["expected"]
    assert figures["left_sending"] == 0 and figures["problems"] == []
    assert figures["followups"] > 0 and figures["followups_open"] == 0 and figures["followups_lost"] == 0
    assert figures["followups_duplicated"] == 0 and figures["followups_unexpected"] == 0
    assert figures["rate_limited_429s"] > 0
    assert figures["commands"] == 12 and figures["commands_failed"] == 0 and figures["subscriptions_lost"] == 0
