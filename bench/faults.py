"""Fault injection: the real bot, killed with SIGKILL mid-delivery, against rate-limiting fakes.

    python -m bench.faults --rounds 100

Runs `python -m bot run` as a subprocess against a fake Hugging Face listing and fake
Slack and Discord APIs on 127.0.0.1 that enforce per-channel rate limits with 429s (and,
like the real ones, Slack message metadata and history, Discord nonces and history).
Every round lists new (synthetic) papers that all four channels subscribed to, starts
the bot, waits until delivery is under way, and kills it with SIGKILL at a random moment;
one round in five the listing is down (HTTP 503) for a while first, so the catch-up is
tested too. Each round, three papers already posted as cards get code and 120 upvotes:
their cards owe follow-ups (replies in the card's thread), sent across the kills as well.
After the rounds a last run delivers what is left. Then it compares what each fake
received with what should have been: every paper in every channel exactly once, unless
the outbox settled it as a burst's overflow (past the cards and the one digest, which
counts it); an overflowed paper that was posted anyway is a problem; every follow-up the
outbox says it sent is in its card's thread once, and nothing else is.
SQLite's integrity_check runs after every kill. Meanwhile, every round, three command
processes (subscribe, unsubscribe, mute; several `papers-bot command`s each) run against
the same database while the bot delivers and is killed; `commands_failed` counts those
that did not answer as they should, `subscriptions_lost` the replies the database does
not keep. The last line is one JSON object.

Cooperating processes (`papers-bot run --role ...`), on PostgreSQL or SQLite:

    python -m bench.faults --rounds 30 --storage postgresql://postgres@127.0.0.1:5432/test \
        --pollers 1 --deliverers 3

runs --pollers `run --role poller` processes (one polls, the others stand by) and
--deliverers `run --role deliverer` processes instead of one `run`. They keep running across
the rounds; each round, once delivery is under way, one or more of them (any role, chosen
at random: one most rounds, sometimes two, now and then all) are SIGKILLed, and restarted
at the start of the next round. The end is checked as above, and also that no delivery or
follow-up is left 'sending'. A postgresql:// --storage gets a schema of its own in that
database (created, and dropped at the end), unless its URL already sets a search_path,
which must then be empty. The JSON line adds the role counts, the kills per role and how
often a poller took the lease (poller_elections), and how often one that had stood by did
(standby_takeovers: its holder was killed while it ran).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from fakes.discord import FakeDiscord
from fakes.http import Canned, FakeHTTPServer
from fakes.slack import FakeSlack

SLACK_CHANNELS = ("C0FAULT1", "C0FAULT2")
DISCORD_CHANNELS = ("9101", "9102")
SLACK_INTERVAL = 1.2  # the fakes' per-channel limits, in seconds between messages
DISCORD_INTERVAL = 0.5


class Listing:
    """The fake Hugging Face daily list: synthetic papers, growing round by round."""

    def __init__(self):
        self.items: list[dict] = []
        self.down = False
        self.requests = 0

    def add(self, count: int) -> list[str]:
        start = len(self.items)
        today = datetime.now(timezone.utc).strftime("%Y-%m-%dT00:00:00.000Z")
        ids = []
        for i in range(start, start + count):
            paper_id = f"2699.{i:05d}"
            ids.append(paper_id)
            self.items.append({"paper": {
                "id": paper_id, "title": f"Synthetic fault-injection paper {i} on diffusion",
                "summary": "A synthetic abstract about diffusion, for the fault suite.",
                "authors": [{"name": "Ada Example", "hidden": False}], "upvotes": i % 7,
                "publishedAt": today, "submittedOnDailyAt": today, "discussionId": str(i)}})
        return ids

    def upgrade(self, ids: list[str]) -> None:
        """These papers get code and 120 upvotes: each card of them owes two follow-ups
        (code, 100 upvotes; 50 is superseded), replies in its thread."""
        for item in self.items:
            if item["paper"]["id"] in ids:
                item["paper"].update(githubRepo=f"https://github.com/fault-suite/{item['paper']['id']}", upvotes=120)

    def answer(self, path: str) -> Canned:
        self.requests += 1
        if self.down:
            return Canned(status=503, body=b"down for the fault suite")
        return Canned(body=json.dumps(self.items).encode())


def received(slack: FakeSlack, discord: FakeDiscord) -> Counter:
    """(channel, paper id) -> how many times it reached that channel (cards and digests)."""
    counts: Counter = Counter()
    for channel, messages in slack.messages.items():
        for message in messages:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            ids = [payload["paper_id"]] if payload.get("paper_id") else str(payload.get("paper_ids", "")).split(",")
            counts.update((f"slack:{channel}", i) for i in ids if i)
    for channel, messages in discord.messages.items():
        for message in messages:
            for embed in message.get("embeds") or []:
                text = str(embed.get("url") or "") + " " + str(embed.get("description") or "")
                counts.update((f"discord:{channel}", i) for i in set(re.findall(r"/abs/(\d{4}\.\d{5})", text)))
    return counts


_REPLY_KINDS = ((re.compile(r"Code released\b"), "code"), (re.compile(r"Crossed (\d+) upvotes"), "upvotes"),
                (re.compile(r"New version v(\d+)"), "version"))


def replies(slack: FakeSlack, discord: FakeDiscord) -> Counter:
    """(channel, the card's message id, kind:value) -> how many follow-up replies reached that thread."""
    counts: Counter = Counter()
    for channel, messages in slack.messages.items():
        for message in messages:
            metadata = message.get("metadata") or {}
            if message.get("thread_ts") and metadata.get("event_type") == "papers_bot_followup":
                key = str((metadata.get("event_payload") or {}).get("key", ""))
                counts[(f"slack:{channel}", message["thread_ts"], key.split(":", 1)[-1])] += 1
    for channel, messages in discord.messages.items():
        for message in messages:
            card = (message.get("message_reference") or {}).get("message_id")
            for pattern, kind in _REPLY_KINDS:
                found = pattern.match(message.get("content") or "")
                if card and found:
                    value = found.group(1) if found.groups() else "0"
                    counts[(f"discord:{channel}", str(card), f"{kind}:{value}")] += 1
    return counts


class Db:
    """Read-only looks at the bot's database, SQLite (a file) or PostgreSQL (a URL): the
    queries are written to run on both (no placeholders; NOT in_digest for either's flag)."""

    def __init__(self, target: str):
        self.target = target
        self.postgres = target.startswith(("postgresql://", "postgres://"))

    def rows(self, sql: str) -> list[tuple]:
        if self.postgres:
            import psycopg

            with psycopg.connect(self.target, autocommit=True, connect_timeout=10) as conn:
                try:
                    return [tuple(row) for row in conn.execute(sql).fetchall()]
                except psycopg.errors.UndefinedTable:
                    return []  # not migrated yet: nothing in it
        if not Path(self.target).exists():
            return []
        with sqlite3.connect(self.target) as conn:
            return conn.execute(sql).fetchall()

    def integrity(self) -> str:
        """SQLite's integrity_check. Not checked on PostgreSQL (the server's own business): "ok"
        here adds no problem, and the JSON line says "not checked (PostgreSQL)"."""
        if self.postgres:
            return "ok"
        return self.rows("PRAGMA integrity_check")[0][0]


def owed_replies(db: Db) -> tuple[set[tuple[str, str, str]], int]:
    """The follow-ups the outbox says went out (as (channel, card message id, kind:value)),
    and how many are still pending or being sent."""
    sent = {(row[0], row[1], f"{row[2]}:{row[3]}") for row in db.rows(
        """SELECT d.channel, d.message_id, f.kind, f.value FROM followups f
             JOIN deliveries d ON d.id = f.delivery_id WHERE f.status = 'sent'""")}
    open_rows = db.rows("SELECT count(*) FROM followups WHERE status IN ('pending', 'sending')")
    return sent, open_rows[0][0] if open_rows else 0


def start_bot(workdir: Path, env: dict, role: str | None = None, log: str = "bot.log") -> subprocess.Popen:
    """`python -m bot run` (all in one process), or `... run --role ROLE` with no metrics port."""
    argv = [sys.executable, "-m", "bot", "run"] + (["--role", role, "--metrics-port", "0"] if role else [])
    return subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / log, "a"))


def overflowed(db: Db) -> set[tuple[str, str]]:
    """(channel, paper id) the bot settled as past a burst's cards and digest: counted in a
    digest ("and N more matched"), deliberately not posted. Neither lost nor delivered."""
    return {(row[0], row[1]) for row in db.rows("SELECT channel, paper_id FROM deliveries WHERE status = 'overflow'")}


def carded(db: Db) -> set[str]:
    """The papers posted as a card (not in a digest) to some channel so far."""
    return {row[0] for row in db.rows(
        "SELECT DISTINCT paper_id FROM deliveries WHERE status = 'sent' AND NOT in_digest")}


def left_sending(db: Db) -> int:
    """Deliveries and follow-ups still 'sending' (after every process stopped: interrupted and never settled)."""
    return sum(row[0] for row in db.rows(
        "SELECT count(*) FROM deliveries WHERE status = 'sending' "
        "UNION ALL SELECT count(*) FROM followups WHERE status = 'sending'"))


UPGRADED_PER_ROUND = 3  # papers posted as cards that get code and 120 upvotes each round (follow-ups)
COMMAND_CHANNELS = ("console:cmd-a", "console:cmd-b")  # their queries match no synthetic paper
COMMANDS_PER_PROCESS = 4

# A command process: runs `papers-bot command` (the real CLI, a new connection each time)
# for each (channel, text) pair of its arguments, back to back; prints the replies as JSON.
COMMAND_WORKER = """
import contextlib, io, json, sys, traceback
from bot.cli import main
args, results = sys.argv[1:], []
for channel, text in zip(args[::2], args[1::2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["command", "--channel", channel, "--user", "fault-" + text.split()[0], text])
        except BaseException:
            traceback.print_exc()
            code = -1
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


class Commands:
    """Concurrent command processes during the kill rounds: one subscribing, one
    unsubscribing, one muting, each several commands in a row, running while the bot
    delivers and is killed. What their replies promised is checked against the database
    at the end."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.live: dict[int, tuple[str, str]] = {}  # id -> (channel, query), as the replies said
        self.gone: set[int] = set()  # unsubscribed, as the replies said
        self.count = self.failed = 0
        self.failures: list[str] = []
        self.serial = 0

    def start(self, workdir: Path, env: dict, round_number: int) -> list[tuple[subprocess.Popen, list[tuple]]]:
        subscribe = []
        for _ in range(COMMANDS_PER_PROCESS):
            self.serial += 1
            subscribe.append(("subscribe", self.rng.choice(COMMAND_CHANNELS), f"cmdtopic{self.serial}"))
        ids = self.rng.sample(sorted(self.live), min(2 * COMMANDS_PER_PROCESS, len(self.live)))
        half = len(ids) // 2
        unsubscribe = [("unsubscribe", self.live[i][0], i) for i in ids[:half]]
        mute = [("mute", self.live[i][0], i, f"noise{round_number}") for i in ids[half:]]
        started = []
        for jobs in (subscribe, unsubscribe, mute):
            if not jobs:
                continue
            argv = [part for job in jobs for part in (job[1], " ".join(str(x) for x in (job[0], *job[2:])))]
            proc = subprocess.Popen([sys.executable, "-c", COMMAND_WORKER, *argv], cwd=workdir, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started.append((proc, jobs))
        return started

    def finish(self, started: list[tuple[subprocess.Popen, list[tuple]]]) -> None:
        for proc, jobs in started:
            try:
                out, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            try:
                results = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                results = [[-1, "", f"command process failed: {err.strip()[-300:]}"]] * len(jobs)
            for job, (code, reply, problems) in zip(jobs, results, strict=False):
                self.count += 1
                if not self._record(job, code, reply) or "Traceback" in problems:
                    self.failed += 1
                    last = (reply + problems).strip().splitlines() or [""]
                    self.failures.append(f"{job[0]} {job[2]}: exit {code}: {last[-1][:300]}")

    def _record(self, job: tuple, code: int, out: str) -> bool:
        kind = job[0]
        if code != 0:
            return False
        if kind == "subscribe":
            found = re.match(r"Subscribed this channel to `([^`]*)` \(#(\d+)\)", out)
            if not found or found.group(1) != job[2]:
                return False
            self.live[int(found.group(2))] = (job[1], job[2])
        elif kind == "unsubscribe":
            if not out.startswith(f"Unsubscribed #{job[2]} "):
                return False
            self.live.pop(job[2], None)
            self.gone.add(job[2])
        else:
            found = re.match(rf"#{job[2]} is now `([^`]*)`", out)
            if not found:
                return False
            self.live[job[2]] = (job[1], found.group(1))
        return True

    def lost(self, db: Db) -> list[str]:
        """Promises the database does not keep: a subscription (or a mute) missing, an
        unsubscribed one still there."""
        stored = {row[0]: (row[1], row[2]) for row in db.rows("SELECT id, channel, query FROM subscriptions")}
        problems = [f"#{i} {want} is {stored.get(i)}" for i, want in sorted(self.live.items()) if stored.get(i) != want]
        problems += [f"#{i} unsubscribed but still there" for i in sorted(self.gone) if i in stored]
        return problems


# How many processes a round kills, drawn each round: one most rounds, sometimes two, now
# and then all of them (0).
KILL_COUNTS = (1, 1, 1, 1, 1, 2, 2, 2, 0)


class Fleet:
    """The cooperating processes: pollers and deliverers (`run --role ...`), each in a slot
    of its own (its log: ROLE-N.log), restarted in the round after it was killed."""

    def __init__(self, workdir: Path, env: dict, pollers: int, deliverers: int):
        self.workdir, self.env = workdir, env
        self.slots = [("poller", n) for n in range(pollers)] + [("deliverer", n) for n in range(deliverers)]
        self.procs: dict[tuple[str, int], subprocess.Popen] = {}
        self.killed: set[tuple[str, int]] = set()  # killed by the suite, not yet restarted
        self.kills: Counter = Counter()
        self.starts = 0
        self.problems: list[str] = []

    def start_missing(self) -> None:
        for slot in self.slots:
            proc = self.procs.get(slot)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None and slot not in self.killed:
                self.problems.append(f"{slot[0]} {slot[1]} exited by itself (exit {proc.returncode}; "
                                     f"see {slot[0]}-{slot[1]}.log)")
            self.killed.discard(slot)
            self.procs[slot] = start_bot(self.workdir, self.env, slot[0], f"{slot[0]}-{slot[1]}.log")
            self.starts += 1

    def kill(self, rng: random.Random) -> list[str]:
        """SIGKILL some of the processes, chosen at random; the roles killed."""
        count = rng.choice(KILL_COUNTS) or len(self.slots)
        # The polling poller first: which slot polls is a race, so a seed's choices are made
        # over (the one polling, the standbys, the deliverers), the same from run to run.
        active = self.polling()
        order = sorted(self.slots, key=lambda slot: (slot[0] != "poller", slot != active, slot))
        victims = rng.sample(order, min(count, len(order)))
        for slot in victims:
            self.procs[slot].send_signal(signal.SIGKILL)
        for slot in victims:
            self.procs[slot].wait()
            self.killed.add(slot)
            self.kills[slot[0]] += 1
        return [slot[0] for slot in victims]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for slot, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.problems.append(f"{slot[0]} {slot[1]} did not stop on SIGTERM")

    def kill_all(self) -> None:
        """On the way out after an error: nothing left running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def polling(self) -> tuple[str, int] | None:
        """The poller slot whose current process holds the poller's lease (from its log), if any."""
        for role, n in self.slots:
            log = self.workdir / f"{role}-{n}.log"
            if role == "poller" and log.exists():
                current = log.read_text(errors="replace").rsplit("running as poller", 1)[-1]
                if "is the poller now" in current and (role, n) not in self.killed:
                    return (role, n)
        return None

    def standby_takeovers(self) -> int:
        """How often a poller that had stood by (another held the lease) took over: its
        holder was killed while it ran. Read from each slot's log, one process after another."""
        taken = 0
        for role, n in self.slots:
            log = self.workdir / f"{role}-{n}.log"
            if role != "poller" or not log.exists():
                continue
            standby = False
            for line in log.read_text(errors="replace").splitlines():
                if "running as poller" in line:
                    standby = False  # the slot's next process
                elif "this one stands by" in line:
                    standby = True
                elif "is the poller now" in line and standby:
                    taken += 1
        return taken

    def poller_elections(self) -> int:
        """How often a poller took the poller's lease (the first one's included): the
        standbys' take-overs and the restarted ones'."""
        return sum((self.workdir / f"poller-{n}.log").read_text(errors="replace").count("is the poller now")
                   for role, n in self.slots if role == "poller" and (self.workdir / f"poller-{n}.log").exists())


def pg_schema(url: str, prefix: str = "bench_faults") -> tuple[str, str | None]:
    """The URL to give the bot, and the schema made for it (None when the URL names its own)."""
    if "search_path" in url:
        return url, None
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}", schema


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--papers", type=int, default=12, help="new papers per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds the last run may take")
    parser.add_argument("--keep", metavar="DIR", help="keep the bot's database and log in DIR "
                        "(and a PostgreSQL schema made for the run: its name is printed)")
    parser.add_argument("--storage", metavar="URL", help="a postgresql:// URL (default: a new SQLite file)")
    parser.add_argument("--pollers", type=int, default=0,
                        help="`run --role poller` processes (with --deliverers; default: one `run`)")
    parser.add_argument("--deliverers", type=int, default=0, help="`run --role deliverer` processes")
    args = parser.parse_args(argv)
    processes = args.pollers > 0 or args.deliverers > 0
    if processes and (args.pollers < 1 or args.deliverers < 1):
        parser.error("--pollers and --deliverers: at least one of each")
    if args.storage and not args.storage.startswith(("postgresql://", "postgres://")):
        parser.error("--storage takes a postgresql:// URL (SQLite is the default)")
    rng = random.Random(args.seed)
    root = Path(__file__).resolve().parent.parent

    listing = Listing()
    schema = None
    url = None
    if args.storage:
        url, schema = pg_schema(args.storage)
    fleet: Fleet | None = None
    try:
        with FakeHTTPServer() as hf, FakeSlack() as slack, FakeDiscord() as discord, \
                tempfile.TemporaryDirectory() as tmp:
            hf.route_fn("/api/daily_papers", listing.answer)
            slack.real_ts, slack.min_interval = True, SLACK_INTERVAL
            discord.min_interval = DISCORD_INTERVAL
            workdir = Path(tmp)
            db = Db(url or str(workdir / "bot.db"))
            storage = f'url = "{url}"\n' if url else f'path = "{workdir / "bot.db"}"\n'
            (workdir / "config.toml").write_text(
                f'[storage]\n{storage}'
                f'[sources.huggingface]\nbase_url = "{hf.url}"\ninterval_minutes = 0.02\n'
                "[sources.arxiv]\nenabled = false\n"
                f'[slack]\napi_url = "{slack.api_url}"\n'
                f'[discord]\napi_base = "{discord.api_base}"\n'
                "[delivery]\nsweep_seconds = 1\nsource_failure_notice_after = 1000\n"
                "[limits]\ncommands_per_minute = 100000\nmax_subscriptions_per_channel = 100000\n"
                "[logging]\nlevel = \"INFO\"\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}
            env.update({"SLACK_BOT_TOKEN": "xoxb-fault-suite", "DISCORD_TOKEN": "fault-suite-token",
                        "PAPERS_BOT_CONFIG": str(workdir / "config.toml"), "PYTHONPATH": str(root)})
            channels = [f"slack:{c}" for c in SLACK_CHANNELS] + [f"discord:{c}" for c in DISCORD_CHANNELS]
            # Every channel subscribes, in one command process (four would each pay Python's start).
            subscribed = subprocess.run(
                [sys.executable, "-c", COMMAND_WORKER, *[x for c in channels for x in (c, "subscribe diffusion")]],
                cwd=workdir, env=env, check=True, capture_output=True, text=True)
            if [code for code, _, _ in json.loads(subscribed.stdout.strip().splitlines()[-1])] != [0] * len(channels):
                raise SystemExit(f"bench.faults: could not subscribe the channels: {subscribed.stdout[-500:]}")
            if processes:
                fleet = Fleet(workdir, env, args.pollers, args.deliverers)

            commands = Commands(random.Random(args.seed + 1))  # its own stream: the kill timings stay as they were
            expected: set[tuple[str, str]] = set()
            upgraded: set[str] = set()  # papers given code and upvotes (once each)
            kills = outages = 0
            problems: list[str] = []
            busy_started = time.monotonic()
            for round_number in range(args.rounds):
                outage = round_number % 5 == 1
                if outage:  # the listing is down for a few polls; papers pile up meanwhile
                    listing.down, outages = True, outages + 1
                # News about papers already posted as cards: follow-ups owed, sent across the kills.
                upgrade = sorted(carded(db) - upgraded)[:UPGRADED_PER_ROUND]
                listing.upgrade(upgrade)
                upgraded.update(upgrade)
                ids = listing.add(args.papers)
                fresh = {(channel, paper_id) for channel in channels for paper_id in ids}
                expected.update(fresh)
                before = sum(received(slack, discord).values())
                if fleet is not None:
                    fleet.start_missing()  # those killed last round; the others deliver on
                else:
                    bot = start_bot(workdir, env)
                if outage:
                    deadline = time.monotonic() + 15
                    seen = listing.requests
                    while listing.requests < seen + 3 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    listing.down = False
                deadline = time.monotonic() + 60
                if fleet is not None:  # the survivors are still sending earlier rounds' papers: wait for this one's
                    while not fresh & set(received(slack, discord)) and time.monotonic() < deadline:
                        time.sleep(0.05)
                else:
                    while sum(received(slack, discord).values()) == before and time.monotonic() < deadline:
                        time.sleep(0.05)  # wait until delivery is under way
                running_commands = commands.start(workdir, env, round_number)  # while it delivers, and killed
                time.sleep(rng.uniform(0.0, 2.5))
                if fleet is not None:
                    kills += len(fleet.kill(rng))
                else:
                    bot.send_signal(signal.SIGKILL)
                    bot.wait()
                    kills += 1
                commands.finish(running_commands)
                check = db.integrity()
                if check != "ok":
                    problems.append(f"round {round_number}: integrity_check says {check}")

            final_started = time.monotonic()
            if fleet is not None:
                fleet.start_missing()
            else:
                bot = start_bot(workdir, env)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                got = received(slack, discord)
                if expected <= set(got) | overflowed(db) and owed_replies(db)[1] == 0:
                    break
                time.sleep(0.2)
            finished = time.monotonic()
            time.sleep(2.0)  # anything still going out would show up as a duplicate now
            if fleet is not None:
                fleet.stop()
                problems += fleet.problems
            else:
                bot.send_signal(signal.SIGTERM)
                try:
                    bot.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    bot.kill()
                    problems.append("the bot did not stop on SIGTERM")
            check = db.integrity()
            if check != "ok":
                problems.append(f"final: integrity_check says {check}")
            if args.keep:
                import shutil

                shutil.copytree(workdir, args.keep, dirs_exist_ok=True)

            subscriptions_lost = commands.lost(db)
            problems += commands.failures[:5] + subscriptions_lost[:5]
            got = received(slack, discord)
            held = overflowed(db)
            unannounced = db.rows(
                "SELECT count(*) FROM deliveries WHERE status = 'overflow' AND message_id IS NULL")[0][0]
            lost = sorted(expected - set(got) - held)
            # Follow-ups: each one the outbox records as sent reached its card's thread exactly
            # once, and nothing else did (none left pending, none sent twice across the kills).
            followups_sent, followups_open = owed_replies(db)
            threads = replies(slack, discord)
            followups_lost = sorted(followups_sent - set(threads))
            if followups_open:
                problems.append(f"{followups_open} follow-ups still pending or being sent")
            problems += [f"follow-up lost: {x}" for x in followups_lost[:3]]
            if held & set(got):
                problems.append(f"{len(held & set(got))} papers counted as overflow were posted too")
            sending = left_sending(db)
            if sending:
                problems.append(f"{sending} deliveries or follow-ups left 'sending' after every process stopped")
            duplicated = sum(count - 1 for key, count in got.items() if count > 1)
            unexpected = sorted(set(got) - expected)
            messages = Counter(channel for channel, _ in
                               [(f"slack:{c}", m) for c, ms in slack.messages.items() for m in ms]
                               + [(f"discord:{c}", m) for c, ms in discord.messages.items() for m in ms])
            ideal = max((count * (SLACK_INTERVAL if channel.startswith("slack") else DISCORD_INTERVAL)
                         for channel, count in messages.items()), default=0.0)
            figures = {
                "rounds": args.rounds,
                "kills": kills,
                "outages": outages,
                "papers": len(listing.items),
                "channels": len(channels),
                "expected": len(expected),
                "delivered": len(expected & set(got)),
                # Past a burst's cards and digest: settled in the outbox, counted in the digest.
                "overflowed": len(held),
                "overflow_unannounced": unannounced,
                "lost": len(lost),
                "duplicated": duplicated,
                "unexpected": len(unexpected),
                "messages": sum(messages.values()),
                "rate_limited_429s": slack.rate_limited + discord.rate_limited,
                "final_run_s": round(finished - final_started, 1),
                "total_s": round(finished - busy_started, 1),
                # Wall time from the first round to the last delivery (restarts, the injected
                # outage and the kills included) over the time the busiest channel's messages
                # need at its rate limit.
                "ratio_to_ideal": round((finished - busy_started) / ideal, 2) if ideal else None,
                "integrity": ("not checked (PostgreSQL)" if db.postgres else
                              "ok" if not any("integrity" in p for p in problems) else "FAILED"),
                "followups": len(followups_sent),
                "followups_open": followups_open,
                "followups_lost": len(followups_lost),
                "followups_duplicated": sum(count - 1 for count in threads.values() if count > 1),
                "followups_unexpected": len(set(threads) - followups_sent),
                "commands": commands.count,
                "commands_failed": commands.failed,
                "subscriptions_lost": len(subscriptions_lost),
                "problems": problems[:5] + [f"lost {x}" for x in lost[:5]],
                "seed": args.seed,
            }
            if fleet is not None or db.postgres:
                figures.update({
                    "storage": "postgresql" if db.postgres else "sqlite",
                    "pollers": args.pollers,
                    "deliverers": args.deliverers,
                    "kills_by_role": {"poller": fleet.kills["poller"], "deliverer": fleet.kills["deliverer"]}
                    if fleet is not None else {},
                    "restarts": fleet.starts - len(fleet.slots) if fleet is not None else 0,
                    "poller_elections": fleet.poller_elections() if fleet is not None else 0,
                    "standby_takeovers": fleet.standby_takeovers() if fleet is not None else 0,
                    "left_sending": sending,
                })
    finally:
        if fleet is not None:
            fleet.kill_all()
        if schema is not None and args.storage:
            if args.keep:
                print(f"kept the PostgreSQL schema {schema}", file=sys.stderr)
            else:
                drop_schema(args.storage, schema)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
