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
import os
import sys
import threading
import time
import traceback
from collections import Counter

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.01
STACK_LINES = 30  # innermost frames kept in the log line
PROJECT_PACKAGES = ("bot", "storage", "handlers")
PROFILE_SWITCH_INTERVAL = 0.0001


class LoopWatch:
    """Heartbeat on the running loop, and a watcher thread that reports stalls.

    `start()` must be called from the loop's own thread (inside a coroutine); `stop()` from
    anywhere. With `threshold_ms` 0 nothing is logged, only lateness is recorded.
    """

    def __init__(self, threshold_ms: float = 250.0, *, heartbeat: float = HEARTBEAT_SECONDS,
                 record: bool = False, profile: bool = False, logger: logging.Logger = log):
        self.threshold = threshold_ms / 1000
        self.heartbeat = heartbeat
        self.record = record
        self.log = logger
        # With `profile`, the loop thread's stack is sampled all through every stall: where
        # (the project's functions, outer to inner, and the innermost frame) -> samples.
        # Python hands the GIL to a waiting thread only after sys.getswitchinterval() (5 ms)
        # unless the running one lets go first, as every SQLite call does: the samples would
        # land in SQLite far more often than the time spent there. Profiling shortens it.
        self.profile: Counter[str] | None = Counter() if profile else None
        self.profile_interval = 0.0
        self._switch_interval: float | None = None
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
        if self.profile is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(PROFILE_SWITCH_INTERVAL)
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
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def _beat(self, due: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._last = now
        if self.record:
            self.samples.append(max(now - due, 0.0))
        if not self._stop.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.heartbeat, self._beat, now + self.heartbeat)

    def _watch(self) -> None:
        check = self.profile_interval = max(min(self.threshold / 5, 0.05), 0.005)
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
            if reported is not None and self.profile is not None:
                self.profile[self._where()] += 1

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (the loop thread is gone)"
        lines = traceback.format_stack(frame)
        return "".join(lines[-STACK_LINES:]).rstrip()

    def _where(self) -> str:
        """`poller._poll > deliveries.enqueue | sqlite_utils/db.py:execute`: the project's
        frames, outer to inner, then the innermost frame of all."""
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "?"
        path = frame.f_code.co_filename
        inner = f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}:{frame.f_code.co_name}"
        ours = []
        while frame is not None:
            path = frame.f_code.co_filename
            if any(f"{os.sep}{part}{os.sep}" in path for part in PROJECT_PACKAGES) and path != __file__:
                ours.append(f"{os.path.basename(path)[:-3]}.{frame.f_code.co_name}")
            frame = frame.f_back
        return f"{' > '.join(reversed(ours))} | {inner}"

    def profile_seconds(self) -> dict[str, float]:
        """Every place sampled during stalls, with the seconds it accounts for, most first."""
        return {where: count * self.profile_interval for where, count in (self.profile or Counter()).most_common()}

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
