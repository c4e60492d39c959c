"""The command line: `papers-bot run | poll | command`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Sequence, TextIO

from .adapters.console import render_reply
from .app import App
from .config import Config, ConfigError, load_config
from .models import ChannelRef, CommandRequest

log = logging.getLogger("bot")


class RedactSecrets(logging.Filter):
    """Defence in depth: a token that reaches a log line anyway is replaced by [redacted]."""

    def __init__(self, secrets: Sequence[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(s in message for s in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "[redacted]")
                record.msg, record.args = message, None
        return True


def setup_logging(config: Config, verbose: bool, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactSecrets(list(config.secrets.values.values())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("DEBUG" if verbose else config.log_level)
    # httpx logs every request at INFO; keep that for -v.
    logging.getLogger("httpx").setLevel("DEBUG" if verbose else "WARNING")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="papers-bot", description="New ML papers from Hugging Face and arXiv, in chat.")
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: $PAPERS_BOT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="action", metavar="{run,poll,command}")
    sub.add_parser("run", help="poll every source on its interval and deliver, until Ctrl-C")
    sub.add_parser("poll", help="one full cycle (every source, then deliveries), then exit")
    cmd = sub.add_parser("command", help="run one /papers command and print the reply")
    cmd.add_argument("--channel", required=True, help="console:NAME, slack:CHANNEL_ID or discord:CHANNEL_ID")
    cmd.add_argument("--user", required=True, help="the user id the command is run as")
    cmd.add_argument("text", nargs="+", help='the command, e.g. "subscribe diffusion"')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.action:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"papers-bot: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config, args.verbose)
    if args.action == "command":
        try:
            channel = ChannelRef.parse(args.channel)
        except ValueError as exc:
            print(f"papers-bot: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(_command(config, CommandRequest(channel, args.user, " ".join(args.text))))
    if args.action == "poll":
        return asyncio.run(_poll(config))
    return _run(config)


async def _command(config: Config, request: CommandRequest) -> int:
    app = App(config)
    try:
        reply = await app.handle_command(request)
    finally:
        await app.aclose()
    print(render_reply(reply))
    return 0 if reply.ok else 1


async def _poll(config: Config) -> int:
    app = App(config)
    try:
        reports, delivered = await app.poll_once()
    finally:
        await app.aclose()
    for report in reports:
        print(report.line())
    print(delivered.line())
    # Exit 1 only when nothing could be fetched at all; one source down is a normal day.
    return 1 if reports and not any(r.ok for r in reports) else 0


def _run(config: Config) -> int:
    async def run() -> None:
        app = App(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        names = ", ".join(s.name for s in app.sources) or "none"
        log.info("papers-bot running: sources %s; adapters %s; database %s; Ctrl-C stops",
                 names, ", ".join(app.adapters), config.storage_path)
        try:
            await app.run(stop)
        finally:
            await app.aclose()
        log.info("stopped")

    try:
        asyncio.run(run())
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    return 0
