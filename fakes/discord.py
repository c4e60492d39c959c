"""A fake Discord REST API (v10) on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler

from .http import LocalServer


class FakeDiscord(LocalServer):
    """A fake Discord REST API (v10) on 127.0.0.1: login and channel messages.

    `script(channel_id, (status, body, headers), ...)` queues answers for posts to a
    channel; otherwise a post creates a message. 429s carry `Via`, as Discord's do, so
    discord.py treats them as rate limits rather than a Cloudflare ban.

    Rate limits, as Discord's (shared/reference/platforms-and-delivery.md, 2.1), when set:
    `channel_limit = (n, seconds)`: each channel's message bucket, n posts a window that
    starts with the first post after the last window ran out (Discord's is about 5 per 5 s);
    every accepted post carries X-RateLimit-Limit, -Remaining, -Reset, -Reset-After and
    -Bucket, which discord.py's limiter reads, and a post past it gets a 429 with
    `retry_after` (`global: false`, X-RateLimit-Scope: user). `min_interval = s` is
    `channel_limit = (1, s)`. `global_limit = (n, seconds)`: every request of the bot, n in
    any such span (Discord: 50 a second); past it a 429 with `global: true` and a
    `retry_after` until the span holds none (the bucket resets whole),
    X-RateLimit-Global and X-RateLimit-Scope: global. `rate_limited` counts the 429s,
    `global_limited` those of the global limit.
    """

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.scripts: dict[str, list[tuple[int, dict, dict]]] = {}
        self.messages: dict[str, list[dict]] = {}  # channel -> created messages
        self.nonces: dict[str, dict] = {}
        self.channel_limit: tuple[int, float] | None = None
        self.global_limit: tuple[int, float] | None = None
        self.windows: dict[str, tuple[float, int]] = {}  # channel -> (its window's start, posts in it)
        self.requests: deque[float] = deque()  # when each request of the global span came
        self.post_times: dict[str, list[float]] = {}  # channel -> when each post was accepted (monotonic)
        self.rate_limited = 0
        self.global_limited = 0
        self.lock = threading.Lock()
        self.next_id = 9000
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _global_429(self) -> bool:
                wait = fake.global_wait()
                if wait is None:
                    return False
                self._send(429, {"message": "You are being rate limited.", "retry_after": round(wait, 3),
                                 "global": True},
                           {"Via": "1.1 google", "Retry-After": str(int(wait) + 1), "X-RateLimit-Global": "true",
                            "X-RateLimit-Scope": "global"})
                return True

            def do_GET(self):  # noqa: N802
                if self._global_429():
                    return None
                if self.path.endswith("/users/@me"):
                    return self._send(200, {"id": "42", "username": "papers", "discriminator": "0", "avatar": None,
                                            "bot": True, "global_name": None})
                history = re.search(r"/channels/(\d+)/messages(?:\?(.*))?$", self.path)
                if history:
                    from urllib.parse import parse_qs

                    query = parse_qs(history.group(2) or "")
                    after = int(query.get("after", ["0"])[0])
                    with fake.lock:
                        found = [m for m in fake.messages.get(history.group(1), []) if int(m["id"]) > after]
                    return self._send(200, list(reversed(found))[: int(query.get("limit", ["50"])[0])])
                return self._send(404, {"message": "404: Not Found", "code": 0})

            def do_POST(self):  # noqa: N802
                found = re.search(r"/channels/(\d+)/messages$", self.path)
                if not found:
                    return self._send(404, {"message": "404: Not Found", "code": 0})
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self._global_429():
                    return None
                channel = found.group(1)
                fake.posts.append((channel, body))
                queue = fake.scripts.get(channel)
                if queue:
                    status, answer, headers = queue.pop(0)
                    return self._send(status, answer, headers)
                with fake.lock:
                    nonce = body.get("nonce")
                    if nonce and body.get("enforce_nonce") and nonce in fake.nonces:
                        return self._send(200, fake.nonces[nonce])  # Discord returns the first message
                    now = time.monotonic()
                    limits = fake.take(channel, now)
                    if limits is None:
                        wait = fake.channel_wait(channel, now)
                        fake.rate_limited += 1
                        return self._send(429, {"message": "You are being rate limited.",
                                                "retry_after": round(wait, 3), "global": False},
                                          {"Via": "1.1 google", "Retry-After": str(int(wait) + 1),
                                           "X-RateLimit-Scope": "user"})
                    fake.post_times.setdefault(channel, []).append(now)
                    fake.next_id += 1
                    message = {"id": str((int(time.time() * 1000) - 1420070400000) << 22 | fake.next_id % 4096),
                               "channel_id": channel, "content": body.get("content") or "", "nonce": nonce,
                               "author": {"id": "42"}, "embeds": body.get("embeds") or []}
                    if body.get("message_reference"):  # a reply: Discord returns its reference
                        message["message_reference"] = body["message_reference"]
                        message["type"] = 19
                    fake.messages.setdefault(channel, []).append(message)
                    if nonce:
                        fake.nonces[nonce] = message
                return self._send(200, message, limits)

            def log_message(self, *args):
                pass

        self.serve(Handler)

    def replies(self, channel: str, message_id: str) -> list[dict]:
        """The messages created in `channel` as replies to message `message_id`, in order."""
        return [m for m in self.messages.get(channel, [])
                if str((m.get("message_reference") or {}).get("message_id")) == message_id]

    @property
    def min_interval(self) -> float:
        return self.channel_limit[1] if self.channel_limit else 0.0

    @min_interval.setter
    def min_interval(self, seconds: float) -> None:
        self.channel_limit = (1, seconds) if seconds else None

    def take(self, channel: str, now: float) -> dict[str, str] | None:
        """A post to `channel` now: its rate-limit headers if its bucket has room (taken), else None."""
        if self.channel_limit is None:
            return {}
        size, span = self.channel_limit
        start, used = self.windows.get(channel, (now, 0))
        if now >= start + span:
            start, used = now, 0
        if used >= size:
            return None
        self.windows[channel] = (start, used + 1)
        reset_after = start + span - now
        return {"X-RateLimit-Limit": str(size), "X-RateLimit-Remaining": str(size - used - 1),
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Bucket": "channel-messages"}

    def channel_wait(self, channel: str, now: float) -> float:
        start, _ = self.windows[channel]
        return max(start + self.channel_limit[1] - now, 0.001) if self.channel_limit else 0.0

    def global_wait(self) -> float | None:
        """A request now: None if the global limit lets it through (counted), else how long to wait."""
        if self.global_limit is None:
            return None
        size, span = self.global_limit
        with self.lock:
            now = time.monotonic()
            while self.requests and self.requests[0] <= now - span:
                self.requests.popleft()
            if len(self.requests) >= size:
                self.rate_limited += 1
                self.global_limited += 1
                # Until the span is clear, as Discord's global bucket resets whole: with the time
                # until only the oldest left, every waiting request came back for one free slot,
                # and under a loaded machine some ran out of discord.py's five tries.
                return max(self.requests[-1] + span - now, 0.001)
            self.requests.append(now)
            return None

    def script(self, channel: str, *answers: tuple[int, dict, dict]) -> None:
        self.scripts[channel] = list(answers)

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"
