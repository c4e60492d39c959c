"""The loop watchdog: stalls are logged with the stack that caused them; an idle loop is quiet."""

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bot.config import Secrets, parse_config
from bot.loopwatch import DEBUG_THRESHOLD_MS, LoopWatch, start_watchdog, watchdog_threshold_ms

LINUX = sys.platform.startswith("linux")


@pytest.fixture(autouse=True)
def small_heap_for_collections():
    """Late in the suite the test process holds a large heap: a full collection there takes
    ~160 ms, over these tests' thresholds. CI once saw the collector test's own collection
    as two stalls: the 400 ms GIL hold, then, after the loop got one turn, 161 ms of the
    collection proper. Everything made before the test is frozen (out of the collector's
    reach), so the tests' collections are as short as in a small process; automatic ones
    are off meanwhile (gc.collect works all the same)."""
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()


def hold_the_loop_with_a_blocking_call():
    time.sleep(0.4)  # what a long synchronous SQLite transaction or matching run looks like


def hold_the_gil(seconds: float) -> None:
    """Hold the GIL, as a long garbage collection or C call does: no other thread runs Python,
    the loop's and the watchdog's included (a PyDLL call keeps the GIL while it runs)."""
    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))


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
    ended = [r.getMessage() for r in caplog.records if "stall ended" in r.getMessage()]
    assert len(ended) == 1
    if LINUX:  # /proc tells the loop thread's time on and waiting for a CPU
        assert "the loop thread ran" in ended[0] and "for a CPU" in ended[0]
    assert len(watch.stalls) == 1 and "hold_the_loop_with_a_blocking_call" in watch.stalls[0][1]
    # The recorder saw the heartbeat that came after the 0.4 s sleep at least 0.4 s late.
    assert watch.max_ms() >= 350
    assert watch.percentile_ms(0.5) <= watch.max_ms()
    # The stall was sampled after it was seen, for the benchmarks' "where the time went".
    (where, seconds), *_ = watch.profile_seconds().items()
    assert where.endswith("| tests/test_loopwatch.py:hold_the_loop_with_a_blocking_call") and seconds > 0
    assert sys.getswitchinterval() == switch_interval  # profiling shortened it only while it ran


@pytest.mark.skipif(not LINUX, reason="holds the GIL through libc's usleep")
async def test_a_garbage_collection_in_another_thread_that_holds_the_gil_is_logged_with_that_thread(caplog):
    """Neither the loop nor the watchdog's thread runs while another thread holds the GIL. The
    stall is logged once: by the watchdog's thread if it gets the GIL first when the hold ends
    (the loop thread's stack then shows only where it waited), else by the heartbeat when the
    loop runs again; either way with the collection named as its cause, and the stack of the
    thread that ran it."""
    caplog.set_level(logging.WARNING, logger="bot.loopwatch")
    watch = LoopWatch(150, record=True).start()

    def slow_collection(phase: str, info: dict) -> None:  # after the watch's callback: inside its timing
        if phase == "start" and threading.current_thread().name == "collector":
            hold_the_gil(0.4)

    def collect() -> None:
        gc.collect()
        time.sleep(0.3)  # still here when the stall is logged

    gc.callbacks.append(slow_collection)
    collector = threading.Thread(target=collect, name="collector")
    try:
        await asyncio.sleep(0.05)
        collector.start()
        await asyncio.sleep(0.6)
    finally:
        collector.join()
        gc.callbacks.remove(slow_collection)
        watch.stop()
    messages = [r.getMessage() for r in caplog.records]
    stalled = [m for m in messages if "stalled for" in m]
    assert len(stalled) == 1, messages
    assert "thread collector:" in stalled[0] and ", in collect\n" in stalled[0]  # its stack
    cause = [m for m in messages if "garbage collection held the GIL" in m]
    assert len(cause) == 1 and "generation 2" in cause[0] and "in thread collector" in cause[0], messages
    # Told by the heartbeat (unseen) or at the end of the stall the watchdog's thread saw.
    assert "unseen while it lasted" in cause[0] or "stall ended" in cause[0]
    assert len(watch.stalls) == 1 and watch.stalls[0][0] >= 0.35
    assert watch.max_ms() >= 350
    assert watch._on_collection not in gc.callbacks  # stop() took its callback off


@pytest.mark.skipif(not LINUX, reason="holds the GIL through libc's usleep")
async def test_a_stall_the_watchdogs_thread_did_not_see_is_logged_by_the_heartbeat(caplog):
    caplog.set_level(logging.WARNING, logger="bot.loopwatch")
    watch = LoopWatch(150, record=True)
    watch._watch = lambda: None  # type: ignore[method-assign]  # its thread never looks: as when it gets no turn

    def holder() -> None:
        hold_the_gil(0.4)
        time.sleep(0.3)  # still here when the loop runs again

    thread = threading.Thread(target=holder, name="holder")
    watch.start()
    try:
        await asyncio.sleep(0.05)
        thread.start()
        await asyncio.sleep(0.6)
    finally:
        thread.join()
        watch.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "event loop stalled for" in messages[0] and "unseen while it lasted" in messages[0]
    assert "thread holder:" in messages[0] and ", in holder\n" in messages[0]
    assert len(watch.stalls) == 1 and watch.stalls[0][0] >= 0.35


async def test_a_stall_seen_by_the_watchdog_is_not_logged_twice(caplog):
    caplog.set_level(logging.WARNING, logger="bot.loopwatch")
    watch = LoopWatch(100).start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the watchdog's thread runs meanwhile (sleep lets go of the GIL)
        await asyncio.sleep(0.1)
    finally:
        watch.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "stalled for" in m]) == 1, messages
    assert not [m for m in messages if "unseen" in m]
    assert len(watch.stalls) == 1


async def test_a_stall_ended_gives_that_stalls_length_when_the_report_was_slow_and_another_began():
    """The watchdog's thread takes a while to write a report (formatting stacks reads the
    sources); meanwhile the loop ran again and stalled once more. The line ending the first
    stall gives the first stall's length, not that stall, the turn between and the second."""
    messages: list[str] = []

    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())
            if "so far" in record.getMessage() and len(messages) == 1:
                time.sleep(1.0)  # writing the first report: both stalls come and go meanwhile

    logger = logging.getLogger("test_loopwatch.slow_report")
    logger.propagate = False
    handler = SlowHandler()
    logger.addHandler(handler)
    watch = LoopWatch(150, logger=logger).start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the first stall
        await asyncio.sleep(0.3)  # the loop runs
        time.sleep(0.3)  # the second stall, which the watchdog's thread is still too busy to see
        await asyncio.sleep(0.5)
    finally:
        watch.stop()
        logger.removeHandler(handler)
    ended = [m for m in messages if "stall ended" in m]
    assert ended, messages
    held_ms = float(ended[0].split("held for ")[1].split(" ms")[0])
    assert 280 <= held_ms < 550, ended[0]  # the first stall (~300 ms); with the turn and the second ~900


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


def test_debug_logging_turns_the_watchdog_on_unless_the_config_sets_a_threshold():
    assert watchdog_threshold_ms(0, debug=False) == 0
    assert watchdog_threshold_ms(0, debug=True) == DEBUG_THRESHOLD_MS == 250
    assert watchdog_threshold_ms(100, debug=True) == 100
    assert watchdog_threshold_ms(400, debug=False) == 400


def test_the_config_key_defaults_to_off_and_refuses_negatives():
    assert parse_config({}, Secrets({})).loop_watchdog_ms == 0
    assert parse_config({"debug": {"loop_watchdog_ms": 250}}, Secrets({})).loop_watchdog_ms == 250
    try:
        parse_config({"debug": {"loop_watchdog_ms": -1}}, Secrets({}))
    except Exception as exc:
        assert "[debug] loop_watchdog_ms" in str(exc)
    else:
        raise AssertionError("a negative threshold was accepted")


@pytest.mark.parametrize("how", ["config", "-v"])
def test_papers_bot_run_starts_the_watchdog_from_the_config_or_with_v(tmp_path, how):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once this block ends: every poll fails fast
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "bot.db"}"\n'
        f'[sources.huggingface]\nbase_url = "http://127.0.0.1:{port}"\n'
        f'[sources.arxiv]\nenabled = false\n'
        + ('[debug]\nloop_watchdog_ms = 250\n' if how == "config" else "")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
    env["PAPERS_BOT_CONFIG"] = str(config)
    verbose = ["-v"] if how == "-v" else []
    proc = subprocess.Popen([sys.executable, "-m", "bot", *verbose, "run"], cwd=tmp_path, env=env,
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
