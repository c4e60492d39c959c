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

    async def fetch(self) -> list[Paper]:
        """Return the papers currently listed. Raises SourceError on any failure."""
        ...


def make_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


async def get_bytes(
    client: httpx.AsyncClient,
    source: str,
    url: str,
    *,
    params: dict | None = None,
    max_bytes: int = 20 * 1024 * 1024,
) -> bytes:
    """GET `url` and return the body; every failure becomes a SourceError with a clear reason."""
    try:
        async with client.stream("GET", url, params=params) as response:
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
