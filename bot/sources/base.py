"""What every source shares: the Source protocol, bounded HTTP GETs, text hygiene,
and the range checks every parsed paper passes before it may be stored."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import stat
import time
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import httpx

from .. import __version__
from ..errors import SourceError
from ..models import Listing, Paper, Validators

try:
    import fcntl
except ImportError:  # not on Windows: there each process paces its own requests
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

USER_AGENT = f"papers-bot/{__version__} (+https://github.com/papers-bot/papers-bot)"


class Source(Protocol):
    """A source's listing, as the poller sees it."""

    name: str

    async def fetch(self, validators: Validators) -> Listing:
        """The papers listed now, with the validators to send next time; `Listing.papers`
        is None when nothing changed since `validators` (HTTP 304). Raises SourceError on
        any failure. Nothing is kept between calls: the caller stores the returned
        validators once it has stored the papers."""
        ...


class PaperSource(Source, Protocol):
    """Everything a registered source offers (see bot/sources/__init__.py)."""

    async def fetch_one(self, paper_id: str) -> Paper | None:
        """The paper with this arXiv id, or None when the source does not know it."""
        ...

    def backfill_plan(self, days: int, today: date) -> BackfillPlan:
        """Which of the `days` days before `today` a backfill fetches, and why others are left out."""
        ...

    async def fetch_day(self, day: date) -> list[Paper]:
        """The papers the source listed (or had submitted) on `day`."""
        ...


@dataclass(frozen=True)
class BackfillPlan:
    days: tuple[date, ...]
    note: str | None = None  # what is left to the poller, and why
    counted: str = "listed"  # what a day's count is, for the progress line ("submitted")


Setting = tuple[type, Any, Callable[[Any], "str | None"] | None]


@dataclass(frozen=True)
class SourceSpec:
    """One registered source: everything the rest of the bot needs to know about it.

    `name` is the source's one name: its config section [sources.NAME], its source_state
    row, Paper.source, the metrics label and `source:NAME` in queries."""

    name: str
    label: str  # for people: "Hugging Face"
    interval_minutes: float  # the default of [sources.NAME] interval_minutes
    settings: Mapping[str, Setting]  # the other keys of [sources.NAME]: key -> (type, default, check)
    # (client, config, max_bytes); a fetcher with a `pacer` (a `Pacer`) has its pacing shared
    # with this machine's other processes on the same database by `bot.sources.connect`.
    connect: Callable[[httpx.AsyncClient, SourceConfig, int], PaperSource]
    aliases: tuple[str, ...] = ()  # other spellings `source:` accepts in queries (older subscriptions)


@dataclass(frozen=True)
class SourceConfig:
    """One [sources.NAME] section, checked against its SourceSpec."""

    enabled: bool = True
    interval_minutes: float = 30.0
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]


def url_problem(value: str) -> str | None:
    if not re.match(r"^https?://[^\s/]+", value):
        return "must be an http:// or https:// URL"
    return None


UNCONDITIONAL = Validators()  # a first request: nothing stored to send back


def make_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


# Seconds by which two processes' `_boot` may differ and still be one boot (they read two
# clocks a few microseconds apart; the wall clock set by hand moves it further, and is then
# taken for a reboot once: one request not paced with the others').
BOOT_SLACK = 1.0


def _boot() -> float:
    """When this machine's monotonic clock started, by the wall clock: the same in every
    process during one boot (NTP adjusts both clocks' rate alike), another after a reboot.
    Always the real clocks, whatever a Pacer's `monotonic`."""
    return time.time() - time.monotonic()


class Pacer:
    """At most one request per `interval` seconds, one at a time (arXiv asks for 3 s, and a
    single connection at a time), `interval` counted from the end of the one before.

    With `shared`, a file that other processes' pacers of the same source use too (the
    bot's other roles and `papers-bot command` runs on this machine and database: README,
    "Roles"), the same holds for all of them together: a request holds the file's lock
    (flock) from its turn to its end, and then writes down when it ended (this machine's
    monotonic clock, which every process reads alike, and the boot it was read in, `_boot`:
    after a reboot the clock starts again, and an earlier boot's time means nothing). The
    next one, in any process, takes the lock and waits `interval` after that. The lock is
    asked for without blocking, every SHARED_POLL seconds while another holds it: no
    thread waits on it, and a cancelled request leaves nothing behind. A file that cannot
    be used is logged once, and the pacing is this process's alone."""

    SHARED_POLL = 0.05  # seconds between two asks for the shared file's lock while another process holds it

    def __init__(self, interval: float, monotonic=None, sleep=None, shared: Path | None = None):
        self.interval = interval
        self.monotonic = monotonic or time.monotonic
        self.sleep = sleep or asyncio.sleep
        self.shared = shared
        self._lock = asyncio.Lock()
        self._last = float("-inf")
        self._held: int | None = None  # the shared file, locked, from a request's turn to its end

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        try:
            wait = self._last + self.interval - self.monotonic()
            if wait > 0:
                await self.sleep(wait)
            if self.shared is not None:
                ended = await self._hold_shared()
                wait = ended + self.interval - self.monotonic()
                if wait > 0:
                    await self.sleep(wait)
        except BaseException:  # cancelled while waiting: __aexit__ will not run, so release here
            self._let_go()
            self._lock.release()
            raise

    async def __aexit__(self, *exc) -> None:
        self._last = self.monotonic()
        try:
            if self._held is not None:
                self._write_end(self._held, self._last)
        finally:
            self._let_go()
            self._lock.release()

    async def _hold_shared(self) -> float:
        """Lock the shared file (held until `_let_go`); when the last request made with it
        ended (-inf: none known). Any failure: this process paces alone from now on."""
        assert self.shared is not None
        if fcntl is None:
            return self._unshared(OSError("no file locks on this system"))
        try:
            fd = os.open(self.shared, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            return self._unshared(exc)
        self._held = fd  # closed by `_let_go`, whatever happens from here
        try:
            st = os.fstat(fd)
            if hasattr(os, "getuid") and st.st_uid != os.getuid():  # another user's (a shared /tmp)
                raise PermissionError(f"the file belongs to user {st.st_uid}")
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a link to another file (O_NOFOLLOW: not a symlink)
                raise PermissionError("not a file of its own (another name links to it)")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file is closed
                    break
                except BlockingIOError:  # another process's request is under way, or waiting its turn
                    await asyncio.sleep(self.SHARED_POLL)
            try:
                ended, read_in = map(float, os.pread(fd, 128, 0).decode("ascii").split())
            except ValueError:  # none yet, or damaged (a crash mid-write): as if none had been made
                return float("-inf")
            if abs(read_in - _boot()) > BOOT_SLACK:  # read before a reboot (the clock started again)
                return float("-inf")
            return min(ended, self.monotonic())  # never a wait longer than the interval
        except OSError as exc:
            self._let_go()
            return self._unshared(exc)

    def _write_end(self, fd: int, ended: float) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{ended!r} {_boot()!r}".encode("ascii"), 0)
        except OSError as exc:
            self._unshared(exc)

    def _let_go(self) -> None:
        fd, self._held = self._held, None
        if fd is not None:
            os.close(fd)

    def _unshared(self, exc: OSError) -> float:
        log.warning("requests are paced by this process alone: the shared pacing file %s cannot be used "
                    "(%s: %s)", self.shared, type(exc).__name__, exc)
        self.shared = None
        return float("-inf")


async def get_bytes(
    client: httpx.AsyncClient,
    source: str,
    url: str,
    *,
    params: dict | None = None,
    max_bytes: int = 20 * 1024 * 1024,
) -> bytes:
    """GET `url` and return the body; every failure becomes a SourceError with a clear reason."""
    body, _validators = await _get(client, source, url, params, max_bytes, None)
    assert body is not None  # only a conditional request can come back empty
    return body


async def get_listing(
    client: httpx.AsyncClient,
    source: str,
    url: str,
    validators: Validators,
    *,
    params: dict | None = None,
    max_bytes: int = 20 * 1024 * 1024,
) -> tuple[bytes | None, Validators]:
    """A conditional GET: the body (None on 304) and the validators to send next time.

    The given ETag / Last-Modified are sent (never empty ones); a 304 keeps them, a full
    answer brings its own (none if it has none)."""
    return await _get(client, source, url, params, max_bytes, validators)


async def _get(
    client: httpx.AsyncClient, source: str, url: str, params: dict | None, max_bytes: int,
    validators: Validators | None,
) -> tuple[bytes | None, Validators]:
    """The client's timeout is also one deadline for the whole request, body included:
    httpx's own timeouts apply to each read, so a server dripping a byte a second
    would otherwise hold the request for as long as it likes."""
    headers = {}
    if validators is not None:
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
    deadline = _deadline(client)
    try:
        async with asyncio.timeout(deadline), client.stream("GET", url, params=params, headers=headers) as response:
            if response.status_code == 304 and validators:
                return None, validators
            if response.status_code != 200:
                raise SourceError(source, _status_message(response), retryable=_retryable(response))
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise SourceError(source, f"response of {declared} bytes is over the {max_bytes}-byte limit")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise SourceError(source, f"response is over the {max_bytes}-byte limit")
            fresh = Validators(response.headers.get("etag") or None, response.headers.get("last-modified") or None)
            return bytes(body), fresh
    except httpx.TimeoutException:
        raise SourceError(source, f"timed out waiting for {_host(url)}") from None
    except TimeoutError:  # the whole-request deadline
        raise SourceError(source, f"timed out waiting for {_host(url)}: no complete response within "
                                  f"{deadline:g}s (the deadline for the whole request)") from None
    except httpx.TransportError as exc:
        raise SourceError(source, f"cannot reach {_host(url)} ({type(exc).__name__}: {exc})") from None


def _deadline(client: httpx.AsyncClient) -> float | None:
    timeout = client.timeout
    values = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t is not None]
    return max(values) if values else None


def _status_message(response: httpx.Response) -> str:
    message = f"HTTP {response.status_code} from {_host(str(response.url))}"
    if response.status_code in (429, 503) and response.headers.get("retry-after"):
        message += f" (retry after {response.headers['retry-after']}s)"
    return message


def _retryable(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _host(url: str) -> str:
    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.netloc.decode()}"
    except Exception:  # a URL we cannot parse is still worth naming
        return url[:100]


_SPACE = re.compile(r"\s+")


def clean_text(text: object, limit: int = 20_000) -> str:
    """Collapse whitespace (arXiv hard-wraps titles and abstracts), drop control characters."""
    if not isinstance(text, str):
        return ""
    text = "".join(c for c in text if c in "\n\t " or unicodedata.category(c)[0] != "C")
    return _SPACE.sub(" ", text).strip()[:limit]


# ---- range checks ----------------------------------------------------------------------
# A listing is outside input: one item with a count too large for SQLite's INTEGER or a
# date `datetime` cannot convert must cost that item only, never the rest of the listing.

MAX_COUNT = 10**9  # upvotes (or comments) beyond this are not real counts
EARLIEST = datetime(1991, 1, 1, tzinfo=timezone.utc)  # arXiv's first year
LATEST = datetime(2999, 12, 31, tzinfo=timezone.utc)  # four-digit years keep stored dates sortable
_TEXT_LIMITS = {"title": 1000, "summary": 20_000, "ai_summary": 2000, "organization": 400,
                "thumbnail": 2000, "github": 2000, "project_page": 2000}


def check_count(value: object, field: str) -> int | None:
    """None for an absent count; a non-negative int of sane size, else ValueError."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} is not a whole number ({bounded_repr(value)})")
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{field} {bounded_repr(value)} is out of range (0 to {MAX_COUNT:,})")
    return value


def check_datetime(value: datetime, field: str) -> datetime:
    """An aware UTC datetime between 1991 and 2999 (a naive one is taken as UTC), else ValueError."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        value = value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError(f"{field} {bounded_repr(value.isoformat())} cannot be represented in UTC") from None
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"{field} {bounded_repr(value.isoformat())} is out of range (1991 to 2999)")
    return value


def parse_iso_datetime(value: object, field: str) -> datetime | None:
    """None for an absent date; an ISO-8601 string within range, else ValueError."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field} is not a date string ({bounded_repr(value)})")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field} {bounded_repr(value)} is not an ISO-8601 date") from None
    return check_datetime(parsed, field)


def check_paper(paper) -> None:
    """Raise ValueError naming the field when a parsed Paper could not be stored as it is.

    The parsers already check what they read; this is the last gate before storage, for
    every source alike.
    """
    if not isinstance(paper.id, str) or not paper.id or len(paper.id) > 40:
        raise ValueError(f"bad id {bounded_repr(paper.id)}")
    if not isinstance(paper.title, str) or not paper.title.strip():
        raise ValueError(f"{paper.id} has no title")
    for field, limit in _TEXT_LIMITS.items():
        value = getattr(paper, field)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise ValueError(f"{paper.id}: {field} is not text of at most {limit} characters")
    for field in ("authors", "categories"):
        values = getattr(paper, field)
        if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values) or len(values) > 10_000:
            raise ValueError(f"{paper.id}: {field} is not a list of names")
    check_count(paper.upvotes, "upvotes")
    if paper.version is not None and (not isinstance(paper.version, int) or not 0 < paper.version < 10_000):
        raise ValueError(f"{paper.id}: version {bounded_repr(paper.version)} is out of range")
    if paper.published is not None:
        if not isinstance(paper.published, datetime):
            raise ValueError(f"{paper.id}: published is not a date")
        check_datetime(paper.published, "published")
    if paper.listed_on is not None:
        if not isinstance(paper.listed_on, date) or not EARLIEST.date() <= paper.listed_on <= LATEST.date():
            raise ValueError(f"{paper.id}: listed_on {bounded_repr(paper.listed_on)} is out of range")


def bounded_repr(value: object, limit: int = 40) -> str:
    """A bounded repr of untrusted input for a log line (2**70 has 22 digits, a hostile one millions)."""
    if isinstance(value, int) and not isinstance(value, bool):
        digits = value.bit_length() * 30103 // 100000 + 1  # never str() a huge int: that is slow, and limited
        return repr(value) if digits < 25 else f"a number of about {digits} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
