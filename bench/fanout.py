"""Fan-out: a burst to many channels through the real dispatcher and adapters.

    python -m bench.fanout --channels 1000 --papers 3 --platform slack
    python -m bench.fanout --channels 1000 --papers 3 --platform discord

Queues --papers new papers for each of --channels channels in a fresh SQLite store, then
runs `Dispatcher.dispatch` with the real Slack (slack_sdk) or Discord (discord.py) adapter
against the fake server on 127.0.0.1, which enforces the platform's limits, in units of
--interval seconds (1.0: the real ones; smaller runs faster, the adapters pace themselves
to the same scale):

- Slack: one message per interval per channel (429 + Retry-After past it).
- Discord: each channel's message bucket, 5 messages per 5 intervals (what Discord is
  observed to allow), with X-RateLimit-* headers on every post, which discord.py's limiter
  reads, and 429 with `retry_after` past it; and the global limit, 50 requests per
  interval for the whole bot (429 with `global: true` past it), which the adapter keeps
  ahead of time.

Channels are served --concurrency at a time ([delivery] max_concurrent_channels).

ideal_s is what those limits allow with that many channels in flight. Per channel: its
--papers messages need `span` from its first to its last (Slack: (papers - 1) intervals;
Discord: 5 intervals for each full bucket before the last message, ((papers - 1) // 5) * 5),
and then its place goes to the next channel: ceil(channels / concurrency) * span. On
Discord also every message through the global limit: messages / 50 intervals. ideal_s is
the larger (request round trips and the bot's own work count as overhead).
ideal_unbounded_s is every channel at once, the global limit still counted.
Every channel is then checked to have received exactly its papers (lost, duplicated).
429s are counted (count_429; count_429_global: those of Discord's global limit).
Last line: one JSON object. Figures, not assertions: see docs/benchmarks.md.

Cooperating deliverers (`papers-bot run --role deliverer`), on PostgreSQL:

    python -m bench.fanout --platform slack --channels 60 --papers 3 --concurrency 5 \
        --deliverers 2 --storage postgresql://postgres@127.0.0.1:5432/test

fills the outbox the same way in a schema of its own in that database (dropped at the end),
then starts --deliverers real processes with `[delivery] max_concurrent_channels` =
--concurrency, against the same fake, and measures the wall time from their start until
every message has arrived (elapsed_s; sending_s: from the first message to the last, the
processes' start-up left out). The limits are the real ones here (--interval 1.0: the
bot's pacing is not scaled in a real process); Discord's global limit is kept by each
process on its own. ideal_s counts the channels in flight as deliverers x concurrency.
--sweep-seconds sets the deliverers' sweep (default 1): a sweep starts on time even while
the last one still runs, so with a sweep shorter than a round of channels a deliverer
serves more than --concurrency channels at once; 30 keeps each deliverer to its one first
sweep (they start with one), and so to --concurrency channels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from bot.adapters.discord_adapter import DiscordAdapter
from bot.adapters.slack_adapter import SlackAdapter, make_web_client
from bot.dispatch import Dispatcher
from bot.models import ChannelRef, Match, Paper
from fakes.discord import FakeDiscord
from fakes.slack import FakeSlack
from storage import Store, open_store
from storage.contract import StoreContract

NOW = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
DISCORD_BUCKET = 5  # messages a channel, per DISCORD_BUCKET intervals
DISCORD_GLOBAL = 50  # requests of the whole bot per interval


def fill(store: StoreContract, platform: str, channels: int, papers: int, now: datetime = NOW) -> list[ChannelRef]:
    """`papers` new papers, each matching every channel, queued as the poller queues them."""
    refs = [ChannelRef(platform, str(100000 + n) if platform == "discord" else f"C{n:06d}") for n in range(channels)]
    ids = [f"2601.{i:05d}" for i in range(papers)]
    store.add_papers([Paper(id=i, title=f"Fan-out paper {i}", summary="Synthetic abstract.", source="arxiv")
                      for i in ids], now)
    for paper_id in ids:
        store.enqueue(paper_id, [Match(1, ref, "diffusion", ("diffusion in title",)) for ref in refs], now)
    return refs


def paper_of(text: str) -> str:
    """The paper id a posted message is about (its arXiv link)."""
    found = text.split("/abs/", 1)[1] if "/abs/" in text else ""
    return found[:10]


async def run(args: argparse.Namespace, fake, store: Store, refs: list[ChannelRef]) -> float:
    if args.platform == "slack":
        adapter = SlackAdapter(make_web_client("xoxb-fanout-bench", fake.api_url), min_interval=args.interval)
    else:
        adapter = DiscordAdapter("fanout-bench-token", api_base=fake.api_base,
                                 global_limit=(DISCORD_GLOBAL, args.interval))
    dispatcher = Dispatcher(store, {args.platform: adapter}, lambda: NOW, cards_per_cycle=args.papers,
                            max_concurrent_channels=args.concurrency)
    started = time.perf_counter()
    try:
        report = await dispatcher.dispatch()
    finally:
        if isinstance(adapter, DiscordAdapter):
            await adapter.close()
    elapsed = time.perf_counter() - started
    if report.retrying or report.failed:
        print(f"note: {report.line()}", file=sys.stderr)
    return elapsed


def run_deliverers(args: argparse.Namespace, fake, url: str, workdir: Path) -> tuple[float, float]:
    """Start --deliverers `papers-bot run --role deliverer` processes on the filled store; wait
    until every message has arrived. (wall time from their start, from the first message)."""
    want = args.channels * args.papers
    (workdir / "config.toml").write_text(
        f'[storage]\nurl = "{url}"\n'
        "[sources.huggingface]\nenabled = false\n[sources.arxiv]\nenabled = false\n"
        f'[slack]\napi_url = "{fake.api_url if args.platform == "slack" else "http://127.0.0.1:9/api/"}"\n'
        f'[discord]\napi_base = "{fake.api_base if args.platform == "discord" else "http://127.0.0.1:9/api/v10"}"\n'
        # each deliverer's share of Discord's global limit, as README says to set it
        f"requests_per_second = {max(1, 50 // args.deliverers)}\n"
        f"[delivery]\nsweep_seconds = {args.sweep_seconds}\ncards_per_cycle = {args.papers}\n"
        f"max_concurrent_channels = {args.concurrency}\n"
        '[logging]\nlevel = "WARNING"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}
    env.update({"PAPERS_BOT_CONFIG": str(workdir / "config.toml"),
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    env["SLACK_BOT_TOKEN" if args.platform == "slack" else "DISCORD_TOKEN"] = "fanout-bench-token"
    procs = []
    started = time.perf_counter()
    first = None
    try:
        for n in range(args.deliverers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bot", "run", "--role", "deliverer", "--metrics-port", "0"], cwd=workdir,
                env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / f"deliverer-{n}.log", "a")))
        deadline = started + args.timeout
        while time.perf_counter() < deadline:
            count = sum(len(messages) for messages in list(fake.messages.values()))
            if count and first is None:
                first = time.perf_counter()
            if count >= want:
                break
            if any(proc.poll() is not None for proc in procs):
                log = "".join((workdir / f"deliverer-{n}.log").read_text() for n in range(len(procs)))
                raise SystemExit(f"bench.fanout: a deliverer exited: {log[-800:]}")
            time.sleep(0.02)
        finished = time.perf_counter()
        time.sleep(2.0)  # anything sent twice would arrive now
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    problems = [line for n in range(args.deliverers)
                for line in (workdir / f"deliverer-{n}.log").read_text(errors="replace").splitlines()
                if "Traceback" in line or " ERROR " in line]
    if problems:
        print("\n".join(problems[:10]), file=sys.stderr)
    return finished - started, finished - (first or started)


def received(fake, platform: str) -> dict[str, list[str]]:
    """channel id -> the paper ids of the messages it got, in order."""
    if platform == "slack":
        return {channel: [m["metadata"]["event_payload"]["paper_id"] for m in messages]
                for channel, messages in fake.messages.items()}
    return {channel: [paper_of(json.dumps(m["embeds"])) for m in messages]
            for channel, messages in fake.messages.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--papers", type=int, default=11, help="new papers for every channel (all sent as cards)")
    parser.add_argument("--platform", choices=("slack", "discord"), default="slack")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="the fake's per-channel limit, seconds (1.0: Slack's; smaller runs faster but "
                             "measures the bot's and the fake's CPU more than pacing)")
    parser.add_argument("--concurrency", type=int, default=50, help="[delivery] max_concurrent_channels")
    parser.add_argument("--deliverers", type=int, default=0,
                        help="real `papers-bot run --role deliverer` processes (needs --storage; default: the "
                             "dispatcher in this process on SQLite)")
    parser.add_argument("--storage", metavar="URL", help="a postgresql:// URL, for --deliverers")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the deliverers may take")
    parser.add_argument("--sweep-seconds", type=float, default=1.0,
                        help="the deliverers' [delivery] sweep_seconds (a sweep starts even while the last "
                             "one runs, so a short one serves more than --concurrency channels at a time)")
    args = parser.parse_args(argv)
    if args.deliverers and not (args.storage or "").startswith(("postgresql://", "postgres://")):
        parser.error("--deliverers needs --storage postgresql://...")
    if args.deliverers and args.interval != 1.0:
        parser.error("--deliverers: the limits are the real ones (--interval 1.0): a process paces itself to them")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bot.dispatch").setLevel(logging.WARNING)

    fake: FakeSlack | FakeDiscord = FakeSlack() if args.platform == "slack" else FakeDiscord()
    with fake, tempfile.TemporaryDirectory() as tmp:
        if isinstance(fake, FakeDiscord):
            fake.channel_limit = (DISCORD_BUCKET, DISCORD_BUCKET * args.interval)
            fake.global_limit = (DISCORD_GLOBAL, args.interval)
        else:
            fake.min_interval = args.interval
        sending = None
        if args.deliverers:
            from bench.faults import drop_schema, pg_schema

            url, schema = pg_schema(args.storage, "bench_fanout")
            try:
                pg = open_store(url)
                try:
                    refs = fill(pg, args.platform, args.channels, args.papers, datetime.now(timezone.utc))
                finally:
                    pg.close()
                elapsed, sending = run_deliverers(args, fake, url, Path(tmp))
            finally:
                if schema:
                    drop_schema(args.storage, schema)
        else:
            store = Store(Path(tmp) / "bench.db")
            try:
                refs = fill(store, args.platform, args.channels, args.papers)
                elapsed = asyncio.run(run(args, fake, store, refs))
            finally:
                store.close()
        got = received(fake, args.platform)
        want = [f"2601.{i:05d}" for i in range(args.papers)]
        lost = duplicated = 0
        for ref in refs:
            counts = Counter(got.get(ref.channel_id, []))
            lost += sum(1 for paper_id in want if counts[paper_id] == 0)
            duplicated += sum(n - 1 for n in counts.values() if n > 1)
        unexpected = sum(1 for channel in got if channel not in {r.channel_id for r in refs})
        messages = sum(len(v) for v in got.values())
        count_429 = fake.rate_limited
        count_429_global = fake.global_limited if isinstance(fake, FakeDiscord) else 0
    waves = math.ceil(args.channels / max(args.concurrency * max(args.deliverers, 1), 1))
    if args.platform == "discord":
        span = (args.papers - 1) // DISCORD_BUCKET * DISCORD_BUCKET * args.interval
        through_global = args.channels * args.papers / DISCORD_GLOBAL * args.interval
    else:
        span, through_global = (args.papers - 1) * args.interval, 0.0
    ideal = max(waves * span, through_global)
    figures = {
        "platform": args.platform,
        "channels": args.channels,
        "papers": args.papers,
        "messages": messages,
        "interval_s": args.interval,
        "concurrency": args.concurrency,
        "deliverers": args.deliverers,
        "sweep_s": args.sweep_seconds if args.deliverers else None,
        "elapsed_s": round(elapsed, 3),
        "sending_s": round(sending, 3) if sending is not None else None,
        "ideal_s": round(ideal, 3),
        "ratio_to_ideal": round(elapsed / ideal, 3) if ideal else None,
        # --deliverers: from the first message to the last (the processes' start-up left out)
        "sending_ratio_to_ideal": round(sending / ideal, 3) if ideal and sending is not None else None,
        "ideal_unbounded_s": round(max(span, through_global), 3),
        "messages_per_s": round(messages / (sending or elapsed), 1) if (sending or elapsed) else None,
        "count_429": count_429,
        "count_429_global": count_429_global,
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
