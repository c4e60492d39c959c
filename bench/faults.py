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


def owed_replies(db: Path) -> tuple[set[tuple[str, str, str]], int]:
    """The follow-ups the outbox says went out (as (channel, card message id, kind:value)),
    and how many are still pending or being sent."""
    with sqlite3.connect(db) as conn:
        sent = {(row[0], row[1], f"{row[2]}:{row[3]}") for row in conn.execute(
            """SELECT d.channel, d.message_id, f.kind, f.value FROM followups f
                 JOIN deliveries d ON d.id = f.delivery_id WHERE f.status = 'sent'""")}
        open_rows = conn.execute("SELECT count(*) FROM followups WHERE status IN ('pending', 'sending')").fetchone()[0]
    return sent, open_rows


def start_bot(workdir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "bot.log", "a"))


def overflowed(db: Path) -> set[tuple[str, str]]:
    """(channel, paper id) the bot settled as past a burst's cards and digest: counted in a
    digest ("and N more matched"), deliberately not posted. Neither lost nor delivered."""
    with sqlite3.connect(db) as conn:
        return set(conn.execute("SELECT channel, paper_id FROM deliveries WHERE status = 'overflow'").fetchall())


def carded(db: Path) -> set[str]:
    """The papers posted as a card (not in a digest) to some channel so far."""
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute(
            "SELECT DISTINCT paper_id FROM deliveries WHERE status = 'sent' AND in_digest = 0")}


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


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

    def lost(self, db: Path) -> list[str]:
        """Promises the database does not keep: a subscription (or a mute) missing, an
        unsubscribed one still there."""
        with sqlite3.connect(db) as conn:
            stored = {row[0]: (row[1], row[2]) for row in conn.execute("SELECT id, channel, query FROM subscriptions")}
        problems = [f"#{i} {want} is {stored.get(i)}" for i, want in sorted(self.live.items()) if stored.get(i) != want]
        problems += [f"#{i} unsubscribed but still there" for i in sorted(self.gone) if i in stored]
        return problems


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--papers", type=int, default=12, help="new papers per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds the last run may take")
    parser.add_argument("--keep", metavar="DIR", help="keep the bot's database and log in DIR")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(__file__).resolve().parent.parent

    listing = Listing()
    with FakeHTTPServer() as hf, FakeSlack() as slack, FakeDiscord() as discord, \
            tempfile.TemporaryDirectory() as tmp:
        hf.route_fn("/api/daily_papers", listing.answer)
        slack.real_ts, slack.min_interval = True, SLACK_INTERVAL
        discord.min_interval = DISCORD_INTERVAL
        workdir = Path(tmp)
        db = workdir / "bot.db"
        (workdir / "config.toml").write_text(
            f'[storage]\npath = "{db}"\n'
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
        for channel in channels:
            subprocess.run([sys.executable, "-m", "bot", "command", "--channel", channel, "--user", "fault-suite",
                            "subscribe diffusion"], cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL)

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
            expected.update((channel, paper_id) for channel in channels for paper_id in ids)
            before = sum(received(slack, discord).values())
            bot = start_bot(workdir, env)
            if outage:
                deadline = time.monotonic() + 15
                seen = listing.requests
                while listing.requests < seen + 3 and time.monotonic() < deadline:
                    time.sleep(0.1)
                listing.down = False
            deadline = time.monotonic() + 60
            while sum(received(slack, discord).values()) == before and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until delivery is under way
            running_commands = commands.start(workdir, env, round_number)  # while it delivers, and killed
            time.sleep(rng.uniform(0.0, 2.5))
            bot.send_signal(signal.SIGKILL)
            bot.wait()
            kills += 1
            commands.finish(running_commands)
            check = integrity(db)
            if check != "ok":
                problems.append(f"round {round_number}: integrity_check says {check}")

        final_started = time.monotonic()
        bot = start_bot(workdir, env)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            got = received(slack, discord)
            if expected <= set(got) | overflowed(db) and owed_replies(db)[1] == 0:
                break
            time.sleep(0.2)
        finished = time.monotonic()
        time.sleep(2.0)  # anything still going out would show up as a duplicate now
        bot.send_signal(signal.SIGTERM)
        try:
            bot.wait(timeout=20)
        except subprocess.TimeoutExpired:
            bot.kill()
            problems.append("the bot did not stop on SIGTERM")
        check = integrity(db)
        if check != "ok":
            problems.append(f"final: integrity_check says {check}")
        if args.keep:
            import shutil

            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)

        subscriptions_lost = commands.lost(db)
        problems += commands.failures[:5] + subscriptions_lost[:5]
        got = received(slack, discord)
        held = overflowed(db)
        conn = sqlite3.connect(db)
        unannounced = conn.execute(
            "SELECT count(*) FROM deliveries WHERE status = 'overflow' AND message_id IS NULL").fetchone()[0]
        conn.close()
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
            "integrity": "ok" if not any("integrity" in p for p in problems) else "FAILED",
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
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
