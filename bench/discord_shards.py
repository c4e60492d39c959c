"""The Discord front-end in many shards: connecting them, and /papers answered from all of them.

    python -m bench.discord_shards --shards 16 --max-concurrency 16 --commands 500 --rate 50

The fake gateway (fakes/discord_gateway.py, its own thread) names `--shards` in GET
/gateway/bot and lets `--max-concurrency` shards IDENTIFY at once; the bot's front-end
(`[discord] shards = "auto"`) connects all of them, then `--commands` `/papers list` from
servers spread over every shard are sent, `--rate` a second, and answered over REST
(deferred, then a follow-up). The commands' own work is left out (a fixed reply: what the handlers
cost is measured elsewhere; `--handlers` runs them, on a fresh database). Printed, as one
JSON line: how long until every shard was READY and every command answered, and the event
loop's lateness (bot.loopwatch: the longest stall and the 99th percentile) over the whole
run, stalls over 100 ms logged with their stack; and the same for an idle loop over 2 s
first, the machine's own noise (on a shared machine, a process not scheduled looks like
a stall too). Figures, not assertions: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import handlers
from bot.adapters import discord_adapter
from bot.adapters.discord_adapter import DiscordAdapter, start_discord
from bot.clock import utcnow
from bot.config import Secrets, parse_config
from bot.loopwatch import LoopWatch
from bot.models import CommandRequest, Reply
from fakes.discord_gateway import TOKEN, FakeDiscordGateway, guild_on_shard
from storage import Store


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the front-end did not get there in time")
        await asyncio.sleep(0.01)


async def run(shards: int, max_concurrency: int, commands: int, rate: float, spacing: float,
              run_handlers: bool, idle_seconds: float = 2.0) -> dict:
    discord_adapter.IDENTIFY_SPACING = spacing
    idle = LoopWatch(0, record=True).start()
    await asyncio.sleep(idle_seconds)
    idle.stop()
    with tempfile.TemporaryDirectory() as tmp, FakeDiscordGateway(
            shards=shards, max_concurrency=max_concurrency, identify_window=spacing * 0.8) as fake:
        config = parse_config({"storage": {"path": str(Path(tmp) / "bot.db")},
                               "discord": {"api_base": fake.api_base}}, Secrets({}))
        store = Store(config.storage_path)
        ctx = handlers.Context(store, config, utcnow)

        async def on_command(request: CommandRequest) -> Reply:
            if run_handlers:
                return await handlers.handle(ctx, request)
            return Reply(f"{request.verb} in {request.channel.key}")

        adapter = DiscordAdapter(TOKEN, api_base=config.discord.api_base)
        watch = LoopWatch(100, record=True).start()
        began = time.monotonic()
        running = await start_discord(adapter, config, on_command, lambda *args: [])
        try:
            await until(lambda: running.frontend.client is not None
                        and len(running.frontend.client.ready_shards) == shards, 60 + shards * spacing)
            ready = time.monotonic() - began
            sent = time.monotonic()
            loop = asyncio.get_running_loop()

            def send() -> None:  # from a thread of its own, `rate` a second, round the shards
                start = time.monotonic()
                for i in range(commands):
                    time.sleep(max(start + i / rate - time.monotonic(), 0))
                    fake.interact("list", guild_id=guild_on_shard(i % shards, shards, i), channel_id=str(1000 + i))

            await loop.run_in_executor(None, send)
            await until(lambda: len(fake.followups) >= commands, 120)
            answered = time.monotonic() - sent
        finally:
            await running.close()
            await adapter.close()
            watch.stop()
            store.close()
        return {"shards": shards, "max_concurrency": max_concurrency, "identify_spacing_s": spacing,
                "all_ready_s": round(ready, 2), "commands": commands, "rate": rate,
                "all_answered_s": round(answered, 2),
                "too_soon": len(fake.too_soon), "loop_max_ms": round(watch.max_ms(), 1),
                "loop_p99_ms": round(watch.percentile_ms(0.99), 1), "idle_loop_max_ms": round(idle.max_ms(), 1),
                "idle_loop_p99_ms": round(idle.percentile_ms(0.99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--identify-spacing", type=float, default=discord_adapter.IDENTIFY_SPACING,
                        help="seconds between IDENTIFYs of one bucket (Discord's: 5, the bot waits 5.5)")
    parser.add_argument("--connecting", type=int, default=discord_adapter.CONNECTING_AT_ONCE,
                        help="shards opening their connection at the same time (CONNECTING_AT_ONCE)")
    parser.add_argument("--rate", type=float, default=50.0, help="commands a second")
    parser.add_argument("--handlers", action="store_true", help="run the commands (SQLite included)")
    args = parser.parse_args()
    discord_adapter.CONNECTING_AT_ONCE = args.connecting
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("discord").setLevel(logging.ERROR)
    result = asyncio.run(run(args.shards, args.max_concurrency, args.commands, args.rate, args.identify_spacing,
                             args.handlers))
    print(json.dumps({**result, "handlers": args.handlers, "connecting_at_once": args.connecting}))


if __name__ == "__main__":
    main()
