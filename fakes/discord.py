"""A fake Discord REST API (v10) on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

from .http import LocalServer


class FakeDiscord(LocalServer):
    """A fake Discord REST API (v10) on 127.0.0.1: login and channel messages.

    `script(channel_id, (status, body, headers), ...)` queues answers for posts to a
    channel; otherwise a post creates a message. 429s carry `Via`, as Discord's do, so
    discord.py treats them as rate limits rather than a Cloudflare ban. With `min_interval`
    set, every accepted post also carries the X-RateLimit-* headers Discord sends (one
    message per `min_interval` per channel), which discord.py's limiter waits on before
    the next post rather than running into the 429.
    """

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.scripts: dict[str, list[tuple[int, dict, dict]]] = {}
        self.messages: dict[str, list[dict]] = {}  # channel -> created messages
        self.nonces: dict[str, dict] = {}
        self.min_interval = 0.0  # > 0: per-channel rate limit, 429 with retry_after and Via
        self.last_post: dict[str, float] = {}
        self.post_times: dict[str, list[float]] = {}  # channel -> when each post was accepted (monotonic)
        self.rate_limited = 0
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

            def do_GET(self):  # noqa: N802
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
                    wait = fake.last_post.get(channel, -1e9) + fake.min_interval - now
                    if wait > 0:
                        fake.rate_limited += 1
                        return self._send(429, {"message": "You are being rate limited.",
                                                "retry_after": round(wait, 3), "global": False},
                                          {"Via": "1.1 google", "Retry-After": str(int(wait) + 1),
                                           "X-RateLimit-Scope": "user"})
                    fake.last_post[channel] = now
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
                limits = {}
                if fake.min_interval:
                    limits = {"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0",
                              "X-RateLimit-Reset-After": f"{fake.min_interval:.3f}",
                              "X-RateLimit-Reset": f"{time.time() + fake.min_interval:.3f}",
                              "X-RateLimit-Bucket": "channel-messages"}
                return self._send(200, message, limits)

            def log_message(self, *args):
                pass

        self.serve(Handler)

    def replies(self, channel: str, message_id: str) -> list[dict]:
        """The messages created in `channel` as replies to message `message_id`, in order."""
        return [m for m in self.messages.get(channel, [])
                if str((m.get("message_reference") or {}).get("message_id")) == message_id]

    def script(self, channel: str, *answers: tuple[int, dict, dict]) -> None:
        self.scripts[channel] = list(answers)

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"
