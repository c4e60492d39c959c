"""Fan-out: a burst to many channels through the real dispatcher and adapters.

    python -m bench.fanout --channels 1000 --papers 3 --platform slack

Queues --papers new papers for each of --channels channels in a fresh SQLite store, then
runs `Dispatcher.dispatch` with the real Slack (slack_sdk) or Discord (discord.py) adapter
against the fake server on 127.0.0.1, which enforces a per-channel limit of one message
per --interval seconds (429 + Retry-After on Slack; X-RateLimit-* headers and 429s with
retry_after on Discord). Real platforms allow about one message a second per channel; the
limit can be scaled down (--interval) so a run takes seconds; the adapter paces itself to
the same scale. Channels are served --concurrency at a time ([delivery] max_concurrent_channels).

ideal_s is what the per-channel limits allow with that many channels in flight: a channel's
--papers messages need (papers - 1) * interval from its first to its last, and then its
place goes to the next channel, so ceil(channels / concurrency) * (papers - 1) * interval
(request round trips and the bot's own work count as overhead). ideal_unbounded_s is
(papers - 1) * interval, every channel at once: what the per-channel limits alone allow.
Every channel is then checked to have received exactly its papers (lost, duplicated).
429s are counted (count_429).
Last line: one JSON object. Figures, not assertions: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
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
from storage import Store

NOW = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)


def fill(store: Store, platform: str, channels: int, papers: int) -> list[ChannelRef]:
    """`papers` new papers, each matching every channel, queued as the poller queues them."""
    refs = [ChannelRef(platform, str(100000 + n) if platform == "discord" else f"C{n:06d}") for n in range(channels)]
    ids = [f"2601.{i:05d}" for i in range(papers)]
    store.add_papers([Paper(id=i, title=f"Fan-out paper {i}", summary="Synthetic abstract.", source="arxiv")
                      for i in ids], NOW)
    for paper_id in ids:
        store.enqueue(paper_id, [Match(1, ref, "diffusion", ("diffusion in title",)) for ref in refs], NOW)
    return refs


def paper_of(text: str) -> str:
    """The paper id a posted message is about (its arXiv link)."""
    found = text.split("/abs/", 1)[1] if "/abs/" in text else ""
    return found[:10]


async def run(args: argparse.Namespace, fake, store: Store, refs: list[ChannelRef]) -> float:
    if args.platform == "slack":
        adapter = SlackAdapter(make_web_client("xoxb-fanout-bench", fake.api_url), min_interval=args.interval)
    else:
        adapter = DiscordAdapter("fanout-bench-token", api_base=fake.api_base)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bot.dispatch").setLevel(logging.WARNING)

    fake: FakeSlack | FakeDiscord = FakeSlack() if args.platform == "slack" else FakeDiscord()
    with fake, tempfile.TemporaryDirectory() as tmp:
        fake.min_interval = args.interval
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
    waves = math.ceil(args.channels / max(args.concurrency, 1))
    ideal = waves * (args.papers - 1) * args.interval
    figures = {
        "platform": args.platform,
        "channels": args.channels,
        "papers": args.papers,
        "messages": messages,
        "interval_s": args.interval,
        "concurrency": args.concurrency,
        "elapsed_s": round(elapsed, 3),
        "ideal_s": round(ideal, 3),
        "ratio_to_ideal": round(elapsed / ideal, 3) if ideal else None,
        "ideal_unbounded_s": round((args.papers - 1) * args.interval, 3),
        "messages_per_s": round(messages / elapsed, 1) if elapsed else None,
        "count_429": count_429,
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
