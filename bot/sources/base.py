"""What every source shares: the Source protocol, bounded HTTP GETs, text hygiene,
and the range checks every parsed paper passes before it may be stored."""

from __future__ import annotations

import asyncio
import re
import unicodedata
from datetime import date, datetime, timezone
from typing import Protocol

import httpx

from .. import __version__
from ..errors import SourceError
from ..models import Paper

USER_AGENT = f"papers-bot/{__version__} (+https://github.com/papers-bot/papers-bot)"


class Source(Protocol):
    name: str
    validators: dict[str, str]  # ETag / Last-Modified for conditional requests; the poller keeps them

    async def fetch(self) -> list[Paper] | None:
        """Return the papers currently listed, or None when the listing has not changed
        since the last one (HTTP 304). Raises SourceError on any failure."""
        ...


def make_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


class Pacer:
    """At most one request per `interval` seconds, one at a time (arXiv asks for 3 s)."""

    def __init__(self, interval: float, monotonic=None, sleep=None):
        import asyncio
        import time

        self.interval = interval
        self.monotonic = monotonic or time.monotonic
        self.sleep = sleep or asyncio.sleep
        self._lock = asyncio.Lock()
        self._last = float("-inf")

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        wait = self._last + self.interval - self.monotonic()
        if wait > 0:
            try:
                await self.sleep(wait)
            except BaseException:  # cancelled while waiting: __aexit__ will not run, so release here
                self._lock.release()
                raise

    async def __aexit__(self, *exc) -> None:
        self._last = self.monotonic()
        self._lock.release()


ARXIV_INTERVAL = 3.0


class NotModified(Exception):
    """The server answered 304: nothing changed since the validators we sent."""


async def get_bytes(
    client: httpx.AsyncClient,
    source: str,
    url: str,
    *,
    params: dict | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    validators: dict[str, str] | None = None,
) -> bytes:
    """GET `url` and return the body; every failure becomes a SourceError with a clear reason.

    The client's timeout is also one deadline for the whole request, body included:
    httpx's own timeouts apply to each read, so a server dripping a byte a second
    would otherwise hold the request for as long as it likes.

    With `validators` (a dict, updated in place) the request is conditional: the stored
    ETag / Last-Modified are sent (never empty ones), a 304 raises NotModified, and a
    full answer's validators replace them.
    """
    headers = {}
    if validators:
        if validators.get("etag"):
            headers["If-None-Match"] = validators["etag"]
        if validators.get("last-modified"):
            headers["If-Modified-Since"] = validators["last-modified"]
    deadline = _deadline(client)
    try:
        async with asyncio.timeout(deadline), client.stream("GET", url, params=params, headers=headers) as response:
            if response.status_code == 304 and validators:
                raise NotModified()
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
            if validators is not None:
                validators.clear()
                for name in ("etag", "last-modified"):
                    if response.headers.get(name):
                        validators[name] = response.headers[name]
            return bytes(body)
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
