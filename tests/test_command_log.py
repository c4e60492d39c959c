"""The per-user rate limit is kept in the database: every `papers-bot command` process counts."""

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import handlers
from bot.models import ChannelRef

ROOT = Path(__file__).resolve().parent.parent


def test_separate_command_processes_share_the_per_user_limit(tmp_path):
    db = tmp_path / "bot.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{db}"\n[sources.huggingface]\nenabled = false\n'
                      "[sources.arxiv]\nenabled = false\n[limits]\ncommands_per_minute = 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}

    def command(user: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot", "--config", str(config), "command", "--channel",
                               "console:ml", "--user", user, "list"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    first, second, third = command("ada"), command("ada"), command("ada")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert third.returncode == 1
    assert third.stdout.startswith("You are sending commands too fast: the limit is 2 a minute. Try again in ")
    assert "Traceback" not in third.stderr
    assert command("grace").returncode == 0  # per user
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT user, count(*) FROM command_log GROUP BY user ORDER BY user").fetchall() == [
            ("ada", 2), ("grace", 1)]  # the refused one is not counted


@pytest.mark.backends
def test_the_window_slides_and_old_rows_are_pruned(store, make_config, clock):
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 2}), clock)

    def run(user="ada"):
        return asyncio.run(handlers.handle(ctx, handlers.request_from_text(ChannelRef("console", "ml"), user, "help")))

    assert run().ok
    clock.advance(seconds=30)
    assert run().ok
    refused = run()
    assert not refused.ok and "Try again in 30 seconds." in refused.text
    clock.advance(seconds=30)  # the first one left the window
    assert run().ok
    assert not run().ok
    clock.advance(minutes=5)
    assert run("grace").ok
    rows = store.db.execute('SELECT "user" FROM command_log').fetchall()
    assert rows == [("grace",)]  # everything older than a minute was pruned
