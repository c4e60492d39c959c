"""The fault runs start as soon as the tests are collected, and their tests run last.

Each run (`bench.faults.main`, in a process and process group of its own) spends its minute
mostly waiting: for the fakes' rate limits, for the bots it starts and kills. So they go
side by side with each other and with the rest of the suite, and the two tests, moved to
the end, take the figures of runs that are done by then (or wait for what is left of them).
Their durations are that wait, not the runs' time; what they check is the same. Run alone
(`pytest tests/faults`), the tests wait for the whole runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import drop_pg_schema, new_pg_schema

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent

# 35 papers a round: 10 cards, a digest of 20, and 5 past both, settled as overflow.
SQLITE = ["--rounds", "2", "--papers", "35", "--seed", "7", "--timeout", "180"]
# One poller and three deliverers (`papers-bot run --role ...`) on PostgreSQL; each round
# SIGKILLs some of them (seed 3: the poller once, deliverers five times) and restarts them.
POSTGRESQL = ["--rounds", "2", "--papers", "6", "--seed", "3", "--timeout", "180",
              "--pollers", "1", "--deliverers", "3"]
TESTS = {"test_nothing_lost_nothing_duplicated_across_kills": "sqlite",
         "test_cooperating_processes_on_postgresql_killed_at_random": "postgresql"}

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
        if self.proc.poll() is None:  # its test failed, or was deselected, or the session stopped first
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


class Runs:
    """The runs of the selected fault tests, by storage; a skip or failure of the PostgreSQL
    server's (new_pg_schema) is kept for its test alone."""

    def __init__(self, storages: set[str]):
        self.started: dict[str, Run | BaseException] = {}
        self.schema: tuple[str, str] | None = None
        if "sqlite" in storages:
            self.started["sqlite"] = Run(SQLITE)
        if "postgresql" in storages:
            try:
                base, schema, url = new_pg_schema()
            except (pytest.skip.Exception, pytest.fail.Exception) as outcome:
                self.started["postgresql"] = outcome
            else:
                self.schema = (base, schema)
                self.started["postgresql"] = Run(POSTGRESQL + ["--storage", url])

    def figures(self, storage: str) -> dict:
        run = self.started[storage]
        if isinstance(run, BaseException):
            raise run
        return run.figures()

    def stop(self) -> None:
        for run in self.started.values():
            if isinstance(run, Run):
                run.stop()
        if self.schema is not None:
            drop_pg_schema(*self.schema)
            self.schema = None


RUNS = pytest.StashKey[Runs]()


def _ours(item: pytest.Item) -> bool:
    return Path(item.path).resolve().parent == HERE and item.name in TESTS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_ours)  # stable: the fault tests last, every other test in its place


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    storages = {TESTS[item.name] for item in session.items if _ours(item)}
    if storages:
        session.config.stash[RUNS] = Runs(storages)


def pytest_sessionfinish(session: pytest.Session) -> None:
    runs = session.config.stash.get(RUNS, None)
    if runs is not None:
        runs.stop()


@pytest.fixture
def fault_runs(request) -> Runs:
    return request.config.stash[RUNS]
