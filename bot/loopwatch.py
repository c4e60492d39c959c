"""Event-loop stalls: a debug watchdog that names the code holding the loop, and a recorder.

Everything the bot does runs on one asyncio event loop; code that holds it (a long SQLite
transaction, matching thousands of papers) delays every command and every post. A heartbeat
timer on the loop notes when it last ran and how late it was. A thread of its own checks the
heartbeat: when the loop has not run for `threshold_ms`, it takes the loop thread's stack
(`sys._current_frames()`), while the loop is still stuck, and logs it; when the loop runs
again, one more line gives the stall's full length.

The same lateness samples give the benchmarks' figures: `max_ms()` (the longest stall) and
`percentile_ms(0.99)`, over every heartbeat, as Node's monitorEventLoopDelay does.

Enabled in `papers-bot run` by `[debug] loop_watchdog_ms` (0: off).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.01
STACK_LINES = 30  # innermost frames kept in the log line


class LoopWatch:
    """Heartbeat on the running loop, and a watcher thread that reports stalls.

    `start()` must be called from the loop's own thread (inside a coroutine); `stop()` from
    anywhere. With `threshold_ms` 0 nothing is logged, only lateness is recorded.
    """

    def __init__(self, threshold_ms: float = 250.0, *, heartbeat: float = HEARTBEAT_SECONDS,
                 record: bool = False, logger: logging.Logger = log):
        self.threshold = threshold_ms / 1000
        self.heartbeat = heartbeat
        self.record = record
        self.log = logger
        self.samples: list[float] = []  # each heartbeat's lateness, in seconds (when recording)
        self.stalls: list[tuple[float, str]] = []  # (seconds, stack) of each reported stall
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LoopWatch:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        self._handle = self._loop.call_later(self.heartbeat, self._beat, self._last + self.heartbeat)
        if self.threshold > 0:
            self._thread = threading.Thread(target=self._watch, name="papers-bot-loopwatch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _beat(self, due: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._last = now
        if self.record:
            self.samples.append(max(now - due, 0.0))
        if not self._stop.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.heartbeat, self._beat, now + self.heartbeat)

    def _watch(self) -> None:
        check = max(min(self.threshold / 5, 0.05), 0.005)
        reported: float | None = None  # the heartbeat of the stall already reported
        while not self._stop.wait(check):
            with self._lock:
                last = self._last
            stalled = time.monotonic() - last
            if reported is not None and last != reported:
                self.log.warning("event loop stall ended: the loop was held for %.0f ms",
                                 (last - reported) * 1000)
                reported = None
            if reported is None and stalled >= self.threshold:
                reported = last
                stack = self._stack()
                self.stalls.append((stalled, stack))
                self.log.warning("event loop stalled for %.0f ms so far (over %.0f ms); the loop thread is at:\n%s",
                                 stalled * 1000, self.threshold * 1000, stack)

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (the loop thread is gone)"
        lines = traceback.format_stack(frame)
        return "".join(lines[-STACK_LINES:]).rstrip()

    # ---- figures for the benchmarks ----

    def max_ms(self) -> float:
        return max(self.samples, default=0.0) * 1000

    def percentile_ms(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def start_watchdog(threshold_ms: int) -> LoopWatch | None:
    """The `[debug] loop_watchdog_ms` watchdog on the running loop; None when it is 0 (off)."""
    if threshold_ms <= 0:
        return None
    log.info("loop watchdog on: event-loop stalls over %d ms are logged with their stack", threshold_ms)
    return LoopWatch(threshold_ms).start()
