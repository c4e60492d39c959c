"""The loop watchdog: stalls are logged with the stack that caused them; an idle loop is quiet."""

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from bot.config import Secrets, parse_config
from bot.loopwatch import LoopWatch, start_watchdog


def hold_the_loop_with_a_blocking_call():
    time.sleep(0.4)  # what a long synchronous SQLite transaction or matching run looks like


async def test_a_stall_is_logged_with_the_stack_of_the_blocking_function(caplog):
    caplog.set_level(logging.WARNING, logger="bot.loopwatch")
    switch_interval = sys.getswitchinterval()
    watch = LoopWatch(250, record=True, profile=True).start()
    try:
        await asyncio.sleep(0.05)
        hold_the_loop_with_a_blocking_call()
        await asyncio.sleep(0.15)  # the loop runs again: the end of the stall is logged
    finally:
        watch.stop()
    stalled = [r for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalled) == 1
    message = stalled[0].getMessage()
    assert "hold_the_loop_with_a_blocking_call" in message and "time.sleep(0.4)" in message
    assert stalled[0].levelno == logging.WARNING
    assert any("stall ended" in r.getMessage() for r in caplog.records)
    assert len(watch.stalls) == 1 and "hold_the_loop_with_a_blocking_call" in watch.stalls[0][1]
    # The recorder saw the heartbeat that came after the 0.4 s sleep at least 0.4 s late.
    assert watch.max_ms() >= 350
    assert watch.percentile_ms(0.5) <= watch.max_ms()
    # The stall was sampled after it was seen, for the benchmarks' "where the time went".
    (where, seconds), *_ = watch.profile_seconds().items()
    assert where.endswith("| tests/test_loopwatch.py:hold_the_loop_with_a_blocking_call") and seconds > 0
    assert sys.getswitchinterval() == switch_interval  # profiling shortened it only while it ran


async def test_an_idle_loop_reports_no_stall(caplog):
    caplog.set_level(logging.WARNING, logger="bot.loopwatch")
    watch = LoopWatch(250, record=True).start()
    try:
        for _ in range(10):
            await asyncio.sleep(0.06)
    finally:
        watch.stop()
    assert watch.stalls == []
    assert not [r for r in caplog.records if r.name == "bot.loopwatch"]
    assert len(watch.samples) > 10  # the heartbeat ran all along


async def test_the_watchdog_is_off_at_zero_and_on_with_a_threshold():
    assert start_watchdog(0) is None
    watch = start_watchdog(300)
    assert watch is not None
    try:
        assert watch.threshold == 0.3 and watch._thread is not None and watch._thread.is_alive()
    finally:
        watch.stop()
    assert not watch._thread.is_alive()


def test_the_config_key_defaults_to_off_and_refuses_negatives():
    assert parse_config({}, Secrets({})).loop_watchdog_ms == 0
    assert parse_config({"debug": {"loop_watchdog_ms": 250}}, Secrets({})).loop_watchdog_ms == 250
    try:
        parse_config({"debug": {"loop_watchdog_ms": -1}}, Secrets({}))
    except Exception as exc:
        assert "[debug] loop_watchdog_ms" in str(exc)
    else:
        raise AssertionError("a negative threshold was accepted")


def test_papers_bot_run_starts_the_watchdog_from_the_config(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once this block ends: every poll fails fast
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "bot.db"}"\n'
        f'[sources.huggingface]\nbase_url = "http://127.0.0.1:{port}"\n'
        f'[sources.arxiv]\nenabled = false\n'
        f'[debug]\nloop_watchdog_ms = 250\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
    env["PAPERS_BOT_CONFIG"] = str(config)
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (tmp_path / "bot.db").exists():
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "loop watchdog on: event-loop stalls over 250 ms are logged" in err
    assert "Traceback" not in err
