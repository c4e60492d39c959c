"""What every source shares: the Source protocol, bounded HTTP GETs, text hygiene."""

from __future__ import annotations

import re
import unicodedata
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
    try:
        async with client.stream("GET", url, params=params, headers=headers) as response:
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
    except httpx.TransportError as exc:
        raise SourceError(source, f"cannot reach {_host(url)} ({type(exc).__name__}: {exc})") from None


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
