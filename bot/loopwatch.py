"""Event-loop stalls: a debug watchdog that names the code holding the loop, and a recorder.

Everything the bot does runs on one asyncio event loop; code that holds it (a long SQLite
transaction, matching thousands of papers) delays every command and every post. A heartbeat
timer on the loop notes when it last ran and how late it was. A thread of its own checks the
heartbeat: when the loop has not run for `threshold_ms`, it takes the loop thread's stack
(`sys._current_frames()`), while the loop is still stuck, and logs it; when the loop runs
again, one more line gives the stall's full length.

The same lateness samples give the benchmarks' figures: `max_ms()` (the longest stall) and
`percentile_ms(0.99)`, over every heartbeat, as Node's monitorEventLoopDelay does.

Enabled in `papers-bot run` by `[debug] loop_watchdog_ms`, and at DEBUG_THRESHOLD_MS by
`papers-bot -v run` (or `[logging] level = "DEBUG"`) when that is 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import traceback
from collections import Counter, deque

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.01
STACK_LINES = 30  # innermost frames kept in the log line
OTHER_STACK_LINES = 12  # innermost frames kept for each other thread
DEBUG_THRESHOLD_MS = 250  # `papers-bot -v run`'s threshold when the config sets none
COLLECTION_NOTED = 0.005  # garbage collections at least this long (seconds) are kept for the stall reports
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
        # Python hands the GIL to a waiting thread only after sys.getswitchinterval() (Python: 5 ms; `run`: 1 ms)
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
        self._reporters: list[threading.Thread] = []  # the heartbeat's reports, being written out (stop() waits)
        # The heartbeat (its time) of the stall the watching thread reported: the heartbeat
        # that ends it says nothing more. Written and read under _lock.
        self._reported_beat: float | None = None
        # How long that stall lasted, set by the heartbeat that ended it (under _lock): the
        # watching thread may read `_last` only later, after the loop ran and perhaps stalled again.
        self._ended_after: float | None = None
        # Garbage collections of COLLECTION_NOTED or more: (start, end, generation, thread name).
        self._collections: deque[tuple[float, float, int, str]] = deque(maxlen=64)
        self._collecting: dict[int, tuple[float, int, str]] = {}  # thread -> its collection: start, generation, name
        self._schedstat: str | None = None  # /proc's per-thread scheduler counters of the loop thread
        # The last reading of them before the current stall: (time, ns on a CPU, ns waiting for one).
        self._sched_before: tuple[float, int, int] | None = None

    def start(self) -> LoopWatch:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        self._handle = self._loop.call_later(self.heartbeat, self._beat, self._last + self.heartbeat)
        if self.profile is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(PROFILE_SWITCH_INTERVAL)
        if self.threshold > 0:
            path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
            self._schedstat = path if os.path.exists(path) else None
            gc.callbacks.append(self._on_collection)
            self._thread = threading.Thread(target=self._watch, name="papers-bot-loopwatch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        for reporter in self._reporters:
            reporter.join(1.0)
        self._reporters.clear()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _beat(self, due: float) -> None:
        now = time.monotonic()
        with self._lock:
            before, self._last = self._last, now
            seen = self._reported_beat == before
            if seen:
                self._ended_after = now - before
            sched_before = self._sched_before  # the watcher may take a new one as soon as _last moves
        if self.record:
            self.samples.append(max(now - due, 0.0))
        if self.threshold > 0 and not seen and now - before >= self.threshold:
            self._report_unseen(before, now, sched_before)
        if not self._stop.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.heartbeat, self._beat, now + self.heartbeat)

    def _report_unseen(self, before: float, now: float, sched_before: tuple[float, int, int] | None) -> None:
        """A stall the watching thread did not see while it lasted (it got no turn either:
        another thread held the GIL, or the process no CPU), noticed on the loop thread. Where
        the other threads are is taken here (frames only); it is written out and logged in a
        thread of its own: formatting a stack reads the source files (linecache), 170 ms once
        in CI, which would be a stall of the loop made by its own watchdog."""
        frames = self._other_frames()
        causes = self._causes(before, now, sched_before)

        def report() -> None:
            stack = self._format_frames(frames)
            self.stalls.append((now - before, stack))
            self.log.warning("event loop stalled for %.0f ms (over %.0f ms), unseen while it lasted: the watchdog's "
                             "thread got no turn either, so another thread held the GIL or no CPU was free%s; "
                             "the other threads are now at:\n%s", (now - before) * 1000, self.threshold * 1000,
                             causes, stack)

        reporter = threading.Thread(target=report, name="papers-bot-loopwatch-report", daemon=True)
        self._reporters = [r for r in self._reporters if r.is_alive()] + [reporter]
        reporter.start()

    def _watch(self) -> None:
        check = self.profile_interval = max(min(self.threshold / 5, 0.05), 0.005)
        reported: float | None = None  # the heartbeat of the stall already reported
        while not self._stop.wait(check):
            report = False
            with self._lock:
                last = self._last
                stalled = time.monotonic() - last
                if reported is None and stalled >= self.threshold:
                    reported = self._reported_beat = last
                    self._ended_after = None
                    report = True
                held = self._ended_after
            if reported is not None and last != reported:
                # The stall's own length, as the heartbeat that ended it measured: `last` may
                # be a later heartbeat, when this thread was slow to look (writing its report).
                held = held if held is not None else last - reported
                self.log.warning("event loop stall ended: the loop was held for %.0f ms%s",
                                 held * 1000, self._causes(reported, reported + held, self._sched_before))
                reported = None
            if report:
                stack = self._stack()
                self.stalls.append((stalled, stack))
                self.log.warning("event loop stalled for %.0f ms so far (over %.0f ms); the loop thread is at:\n%s"
                                 "\nthe other threads are at:\n%s", stalled * 1000, self.threshold * 1000, stack,
                                 self._other_stacks())
            elif reported is None and stalled < self.threshold / 2:  # the loop runs: a reading from before a stall
                reading = self._sched()
                with self._lock:
                    self._sched_before = reading
            if reported is not None and self.profile is not None:
                self.profile[self._where()] += 1

    def _on_collection(self, phase: str, info: dict) -> None:
        """gc.callbacks: note the collections long enough to matter, in any thread."""
        me = threading.get_ident()
        if phase == "start":
            self._collecting[me] = (time.monotonic(), info.get("generation", -1), threading.current_thread().name)
            return
        started = self._collecting.pop(me, None)
        if started is not None and time.monotonic() - started[0] >= COLLECTION_NOTED:
            self._collections.append((started[0], time.monotonic(), started[1], started[2]))

    def _sched(self) -> tuple[float, int, int] | None:
        """(now, ns the loop thread ran, ns it waited for a CPU), where Linux tells."""
        if self._schedstat is None:
            return None
        try:
            with open(self._schedstat, "rb") as f:
                ran, waited = f.read().split()[:2]
            return time.monotonic(), int(ran), int(waited)
        except (OSError, ValueError):  # the thread is gone, or another kernel's format
            return None

    def _causes(self, start: float, end: float, sched_before: tuple[float, int, int] | None) -> str:
        """What is known of a stall from `start` to `end` (monotonic): the garbage collections
        that overlapped it and, on Linux, the loop thread's time on and waiting for a CPU."""
        parts = []
        # Those still under way count up to now: a collection runs Python (gc.callbacks, weakref
        # callbacks, __del__), where the loop may get the GIL back before it ends.
        now = time.monotonic()
        ongoing = [(began, now, generation, name) for began, generation, name in list(self._collecting.values())]
        overlapping = [c for c in list(self._collections) + ongoing if c[1] > start and c[0] < end]
        if overlapping:
            held = sum(min(c_end, end) - max(c_start, start) for c_start, c_end, _, _ in overlapping)
            longest = max(overlapping, key=lambda c: c[1] - c[0])
            parts.append(f"garbage collection held the GIL {held * 1000:.0f} ms of it (the longest: generation "
                         f"{longest[2]}, {(longest[1] - longest[0]) * 1000:.0f} ms, in thread {longest[3]})")
        before, after = sched_before, self._sched()
        if before is not None and after is not None:
            parts.append(f"in the {(after[0] - before[0]) * 1000:.0f} ms around it the loop thread ran "
                         f"{(after[1] - before[1]) / 1e6:.0f} ms and waited {(after[2] - before[2]) / 1e6:.0f} ms "
                         "for a CPU")
        return "".join(f"; {part}" for part in parts)

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (the loop thread is gone)"
        lines = traceback.format_stack(frame)
        return "".join(lines[-STACK_LINES:]).rstrip()

    def _other_stacks(self) -> str:
        """The innermost frames of every thread but the loop's and the watcher's, by name."""
        return self._format_frames(self._other_frames())

    def _other_frames(self) -> list[tuple[str, traceback.StackSummary]]:
        """Every thread's but the loop's and the watcher's frames (their names, files and
        lines: no source read), by thread name."""
        names = {t.ident: t.name for t in threading.enumerate()}
        skip = {self._loop_thread, threading.get_ident()}
        if self._thread is not None and self._thread.is_alive():  # a dead thread's id may be another's now
            skip.add(self._thread.ident or 0)
        out = []
        for ident, frame in sys._current_frames().items():
            if ident in skip or names.get(ident, "").startswith("papers-bot-loopwatch"):
                continue
            summary = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
            summary.reverse()  # outermost first, as traceback.format_stack
            out.append((str(names.get(ident, ident)), summary))
        return out

    @staticmethod
    def _format_frames(frames: list[tuple[str, traceback.StackSummary]]) -> str:
        """`_other_frames` as text, the innermost OTHER_STACK_LINES lines of each (reads the sources)."""
        out = [f"thread {name}:\n" + "".join(summary.format()[-OTHER_STACK_LINES:]).rstrip()
               for name, summary in frames]
        return "\n".join(out) or "  (no other thread)"

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


def watchdog_threshold_ms(configured: int, debug: bool) -> int:
    """The watchdog's threshold: `[debug] loop_watchdog_ms`, or with debug logging (`-v`)
    DEBUG_THRESHOLD_MS when that is 0; 0 (off) otherwise."""
    if configured > 0:
        return configured
    return DEBUG_THRESHOLD_MS if debug else 0


def start_watchdog(threshold_ms: int) -> LoopWatch | None:
    """The `[debug] loop_watchdog_ms` watchdog on the running loop; None when it is 0 (off)."""
    if threshold_ms <= 0:
        return None
    log.info("loop watchdog on: event-loop stalls over %d ms are logged with their stack", threshold_ms)
    return LoopWatch(threshold_ms).start()
