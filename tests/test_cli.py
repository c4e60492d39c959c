"""The whole cycle through the real CLI, against local fake Hugging Face and arXiv servers."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli import main
from bot.sources.arxiv import parse_rss
from fakes.http import Canned

from .fakes import fixture, hf_json, rss

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_file(tmp_path, server):
    server.route("/api/daily_papers", hf_json())
    server.route("/rss/cs.CV+cs.LG", rss())
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\npath = "{tmp_path / "bot.db"}"\n'
        f'[sources.huggingface]\nbase_url = "{server.url}"\n'
        f'[sources.arxiv]\nbase_url = "{server.url}"\napi_url = "{server.url}/api/query"\n'
        'categories = ["cs.CV", "cs.LG"]\n'
        # The fixtures were listed in 2024; by default papers older than a week are not posted.
        "[delivery]\nmax_age_days = 100000\n"
    )
    return str(path)


def cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_cards(out: str) -> list[str]:
    return re.findall(r"^\[console:ml\] (.+)$", out, re.MULTILINE)


def expected_titles(word: str) -> set[str]:
    """Computed from the fixtures independently of the bot's matcher."""
    pattern = re.compile(rf"(?<![^\W_]){word}(?![^\W_])", re.IGNORECASE)
    titles = set()
    for item in json.loads(fixture("hf_daily_papers_2024-10-25.json")):
        if pattern.search(item["title"] + " " + item["paper"]["summary"]):
            titles.add(item["title"])
    for p in parse_rss(fixture("arxiv_rss_synthetic.xml")):
        if not p.is_update and pattern.search(p.title + " " + p.summary):
            titles.add(p.title)
    return titles


def test_subscribe_then_poll_prints_exactly_the_matching_papers_once(capsys, config_file, monkeypatch):
    # Each poll asks arXiv twice (the listing, then the other source's papers' categories): paced
    # here at 0.05 s, not arXiv's 3 s (test_enrich.py checks the pacing, with a clock of its own).
    monkeypatch.setattr("bot.sources.arxiv.ARXIV_INTERVAL", 0.05)
    code, out, _ = cli(capsys, "--config", config_file, "command", "--channel", "console:ml", "--user", "u1",
                       "subscribe diffusion")
    assert code == 0 and 'Subscribed this channel to `diffusion` (#1)' in out

    code, out, err = cli(capsys, "--config", config_file, "poll")
    assert code == 0
    cards = printed_cards(out)
    assert set(cards) == expected_titles("diffusion") == {
        "SMITE: Segment Me In TimE",  # listed by both sources: posted once
        "MotionCLR: Motion Generation and Training-free Editing via Understanding Attention Mechanisms",
        "Synthetic Diffusion-based Planning for Fixture Robots",
    }
    assert len(cards) == len(set(cards))
    assert "huggingface: 6 listed, 6 new, 2 queued for delivery" in out
    assert "arxiv: 5 listed, 3 new, 1 queued for delivery"  # SMITE and Skywork came from HF first in out
    assert "delivered: 3 sent, 0 to retry, 0 failed" in out

    code, out, _ = cli(capsys, "--config", config_file, "poll")
    assert code == 0 and printed_cards(out) == []
    assert "huggingface: 6 listed, 0 new, 0 queued" in out

    code, out, _ = cli(capsys, "--config", config_file, "command", "--channel", "console:ml", "--user", "u1", "list")
    assert '#1 `diffusion`' in out and "3 posted" in out


def test_a_failing_source_does_not_stop_the_other(capsys, config_file, server):
    server.route("/api/daily_papers", Canned(status=500, body=b"down"))
    cli(capsys, "--config", config_file, "command", "--channel", "console:ml", "--user", "u1", "subscribe diffusion")
    code, out, err = cli(capsys, "--config", config_file, "poll")
    assert code == 0
    assert re.search(r"^huggingface: FAILED: HTTP 500 from http://127\.0\.0\.1:\d+$", out, re.MULTILINE)
    assert set(printed_cards(out)) == {"SMITE: Segment Me In TimE",
                                       "Synthetic Diffusion-based Planning for Fixture Robots"}
    assert "Traceback" not in err


def test_poll_exits_1_when_every_source_fails(capsys, config_file, server):
    server.route("/api/daily_papers", Canned(body=b"not json"))
    server.route("/rss/cs.CV+cs.LG", Canned(status=503, body=b""))
    code, out, _ = cli(capsys, "--config", config_file, "poll")
    assert code == 1
    assert "huggingface: FAILED: response is not valid JSON" in out and "arxiv: FAILED: HTTP 503" in out


def test_command_errors_exit_1_and_bad_channels_exit_2(capsys, config_file):
    code, out, _ = cli(capsys, "--config", config_file, "command", "--channel", "console:ml", "--user", "u1",
                       "unsubscribe 5")
    assert code == 1 and "no subscription #5" in out
    code, _, err = cli(capsys, "--config", config_file, "command", "--channel", "irc:#x", "--user", "u1", "list")
    assert code == 2 and "bad channel 'irc:#x'" in err


def test_a_bad_channel_is_named_in_one_short_line(capsys, config_file):
    code, _, err = cli(capsys, "--config", config_file, "command", "--channel", "console:" + "x" * 5000,
                       "--user", "u1", "list")
    assert code == 2 and "at most 80 characters" in err and "(5,000 characters)" in err and len(err) < 200
    # A Discord channel by its name: every card to it would fail; refused at once instead.
    code, _, err = cli(capsys, "--config", config_file, "command", "--channel", "discord:general", "--user", "u1",
                       "subscribe diffusion")
    assert code == 2 and "a Discord channel id is a number" in err


def test_the_command_may_be_typed_unquoted_with_its_options(capsys, config_file):
    base = ("--config", config_file, "command", "--channel", "console:ml", "--user", "u1")
    code, out, _ = cli(capsys, *base, "subscribe", "diffusion", "--me")  # --me was refused by argparse
    assert code == 0 and "Subscribed this channel to `diffusion` (#1)" in out and "Its cards mention you" in out
    code, out, _ = cli(capsys, *base, "--", "list", "--me")
    assert code == 0 and "#1 `diffusion` · here · mentions you" in out
    code, _, err = cli(capsys, *base)
    assert code == 2 and "give the command" in err


def test_channel_refs_of_every_platform_are_accepted(capsys, config_file):
    for ref in ("console:ml", "slack:C123", "discord:123"):
        code, out, _ = cli(capsys, "--config", config_file, "command", "--channel", ref, "--user", "u1",
                           "subscribe diffusion")
        assert code == 0 and "(#" in out


def test_config_errors_are_one_clear_line(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sources.arxiv]\ncategorys = []\n")
    code, out, err = cli(capsys, "--config", str(bad), "poll")
    assert code == 2 and err.strip() == (
        f"papers-bot: config error: {bad}: unknown key 'categorys' in [sources.arxiv] "
        "(known: enabled, interval_minutes, categories, base_url, api_url)")


def test_no_action_prints_help(capsys):
    code, out, _ = cli(capsys)
    assert code == 2 and "{run,poll,command,status,backfill,export,import}" in out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_without_network_says_so_keeps_running_and_stops_on_ctrl_c(tmp_path):
    port = _closed_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "bot.db"}"\n'
        f'[sources.huggingface]\nbase_url = "http://127.0.0.1:{port}"\n'
        f'[sources.arxiv]\nbase_url = "http://127.0.0.1:{port}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
    env["PAPERS_BOT_CONFIG"] = str(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        db = tmp_path / "bot.db"
        # Wait until both sources have been tried (their failures are recorded in storage).
        while time.monotonic() < deadline:
            if db.exists() and proc.poll() is None:
                import sqlite3

                with sqlite3.connect(db) as conn:
                    try:
                        if conn.execute("SELECT count(*) FROM source_state").fetchone()[0] == 2:
                            break
                    except sqlite3.OperationalError:
                        pass
            time.sleep(0.1)
        assert proc.poll() is None, "the bot exited instead of waiting for the network"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert f"huggingface: cannot reach http://127.0.0.1:{port}" in err
    assert f"arxiv: cannot reach http://127.0.0.1:{port}" in err
    assert "retrying in" in err and "stopped" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text, expected, code",
    [
        ("preview diffusion", "`diffusion`: no papers were stored in the last 30 days", 0),
        ("search diffusion", "No stored paper matches `diffusion`.", 0),
        ("trending", "No Hugging Face papers with upvotes were listed since", 0),
        ("digest daily 08:30", "This channel now gets a daily digest at 08:30 (UTC).", 0),
        ("timezone Asia/Tokyo", "Time zone set to Asia/Tokyo", 0),
        ("pause", "Paused.", 0),
        ("resume", "This channel is not paused.", 0),
        ("status", "Sources:\n• huggingface: last success never", 0),
        ("unsubscribe all", "This channel has no subscriptions to remove.", 0),
        ("show nope", "`nope` is not an arXiv id", 1),
        ("digest hourly", "Say `off`, `daily HH:MM` or `weekly DAY HH:MM`.", 1),
    ],
)
def test_every_command_runs_through_the_cli(capsys, config_file, text, expected, code):
    got, out, _ = cli(capsys, "--config", config_file, "command", "--channel", "console:ml", "--user", "u1", text)
    assert got == code and expected in out


@pytest.mark.parametrize("action",
                         [["command", "--channel", "console:ml", "--user", "me", "list"], ["status"], ["export"]])
def test_a_reader_that_stops_early_gets_no_traceback(tmp_path, action):
    # `papers-bot command ... list | head -1`: the reader is gone before the bot writes.
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "bot.db"}"\n')
    for n in range(3):
        assert main(["--config", str(config), "command", "--channel", "console:ml", "--user", "me",
                     f"subscribe topic{n}"]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader closed early
    try:
        proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(config), *action], cwd=ROOT, env=env,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no BrokenPipeError, no "Exception ignored"
    assert proc.returncode == 128 + signal.SIGPIPE  # as `cat` or `grep` report it to `set -o pipefail`


def test_a_one_shot_poll_keeps_the_index_in_its_process_and_its_file_with_auto(capsys, config_file, monkeypatch,
                                                                                 tmp_path):
    # `worker_process = "auto"` (the default) past its threshold: a process that lives for one
    # poll would build the index in a worker process at every run, and keep no file for the
    # next (README: "a one-shot `papers-bot poll` writes it before it exits").
    import bot.poller

    monkeypatch.setattr("bot.sources.arxiv.ARXIV_INTERVAL", 0.05)
    monkeypatch.setattr(bot.poller, "AUTO_WORKER_FROM", 1)
    monkeypatch.setattr(bot.poller, "_cores", lambda: 2)
    monkeypatch.setattr(bot.poller.Poller, "INDEX_SAVE_MIN", 1)
    cli(capsys, "--config", config_file, "command", "--channel", "console:ml", "--user", "u1", "subscribe diffusion")
    code, out, _ = cli(capsys, "--config", config_file, "poll")
    assert code == 0 and len(printed_cards(out)) == 3
    assert (tmp_path / "bot.db.index").exists()
