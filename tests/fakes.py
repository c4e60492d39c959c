"""Fakes for every outside service. Servers bind to 127.0.0.1 only."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bot.errors import SourceError
from bot.models import Card, ChannelRef, Delivery, Paper, PostResult

FIXTURES = Path(__file__).parent / "fixtures"


def due_now(store, now, cards: int = 1000, digest_max: int = 1000) -> list[Delivery]:
    """What the dispatcher's path offers now, oldest first: every channel of `due_channels`,
    each planned with `plan_burst`. With room for all (fewer than `cards` outstanding in a
    channel) the plan decides nothing: no digest, no overflow, nothing written."""
    due: list[Delivery] = []
    for channel, _ in store.due_channels(now):
        due_cards, due_digest = store.plan_burst(channel, now, cards, digest_max)
        due += due_cards + due_digest
    return sorted(due, key=lambda d: d.id)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Canned:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


class FakeHTTPServer:
    """A scriptable HTTP server on 127.0.0.1:<random port>.

    `server.route("/api/daily_papers", Canned(...), Canned(...))` answers the first request
    with the first response, and so on; the last one repeats. Requests are recorded.
    """

    def __init__(self):
        self.routes: dict[str, list[Canned]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                fake.requests.append((path, self.path, dict(self.headers)))
                queue = fake.routes.get(path)
                if callable(queue):  # a function of the full request path
                    queue = [queue(self.path)]
                if not queue:
                    canned = Canned(404, b'{"error":"Not Found"}')
                else:
                    canned = queue.pop(0) if len(queue) > 1 else queue[0]
                if canned.delay:
                    time.sleep(canned.delay)
                try:
                    self.send_response(canned.status)
                    self.send_header("Content-Type", canned.content_type)
                    self.send_header("Content-Length", str(len(canned.body)))
                    for key, value in canned.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(canned.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, path: str, *responses: Canned) -> None:
        self.routes[path] = list(responses)

    def route_fn(self, path: str, answer) -> None:
        """Answer `path` with `answer(full_path_with_query) -> Canned`."""
        self.routes[path] = answer

    def paths(self) -> list[str]:
        return [r[0] for r in self.requests]

    def __enter__(self) -> FakeHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def hf_json(name: str = "hf_daily_papers_2024-10-25.json") -> Canned:
    return Canned(body=fixture(name))


def rss(name: str = "arxiv_rss_synthetic.xml") -> Canned:
    return Canned(body=fixture(name), content_type="application/rss+xml")


def paper(paper_id: str, title: str = "A synthetic paper", summary: str = "Synthetic abstract.", **kw) -> Paper:
    """A clearly synthetic Paper for unit tests."""
    return Paper(id=paper_id, title=title, summary=summary, source=kw.pop("source", "arxiv"), **kw)


class FakeSource:
    """A scriptable Source: `.papers` to list, or `.fail_with(exc)`."""

    def __init__(self, name: str = "fake", papers: list[Paper] | None = None):
        self.name = name
        self.papers = papers or []
        self.error: Exception | None = None
        self.calls = 0

    def fail_with(self, error: Exception | None) -> None:
        self.error = error

    async def fetch(self) -> list[Paper]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.papers)


def source_error(message: str = "cannot reach http://127.0.0.1:9 (ConnectError)") -> SourceError:
    return SourceError("fake", message)


class RecordingAdapter:
    """Keeps what it was asked to post; scriptable results."""

    def __init__(self, platform: str = "console", results: list[PostResult] | None = None):
        self.platform = platform
        self.posts: list[tuple[ChannelRef, Card]] = []
        self.results = list(results or [])

    async def post_text(self, channel: ChannelRef, text: str) -> PostResult:
        self.posts.append((channel, text))
        return PostResult(ok=True, message_id=f"t{len(self.posts)}")

    async def post(self, channel: ChannelRef, card: Card) -> PostResult:
        self.posts.append((channel, card))
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, Exception):
                raise result
            return result
        return PostResult(ok=True, message_id=f"m{len(self.posts)}")


def json_body(data) -> bytes:
    return json.dumps(data).encode()


class FakeSlack:
    """A fake Slack Web API (and response_url endpoint) on 127.0.0.1.

    `POST /api/<method>` answers `{"ok": true, ...}`; `script(method, (status, body, headers), ...)`
    queues other answers. Every call is recorded as (method, parsed body, headers).
    """

    def __init__(self):
        self.calls: list[tuple[str, dict, dict]] = []
        self.scripts: dict[str, list[tuple[int, dict, dict]]] = {}
        self.messages: dict[str, list[dict]] = {}  # channel -> what was posted, for conversations.history
        self.real_ts = False  # True: timestamps from the clock, as Slack's are
        self.min_interval = 0.0  # > 0: per-channel rate limit, 429 + Retry-After when exceeded
        self.last_post: dict[str, float] = {}
        self.rate_limited = 0
        self.lock = threading.Lock()
        self.ts = 1000
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (slack_sdk reads some methods with GET)
                self.do_POST()

            def do_POST(self):  # noqa: N802
                from urllib.parse import parse_qsl

                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    body = json.loads(raw or "{}")
                else:
                    body = dict(parse_qsl(raw))
                body.update(dict(parse_qsl(self.path.partition("?")[2])))
                method = self.path.split("?")[0].rsplit("/", 1)[-1]
                fake.calls.append((method, body, dict(self.headers)))
                status, answer, headers = fake._answer(method, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _answer(self, method: str, body: dict) -> tuple[int, dict, dict]:
        queue = self.scripts.get(method)
        if queue:
            return queue.pop(0)
        if method == "chat.postMessage" and self.min_interval:
            with self.lock:
                now = time.monotonic()
                last = self.last_post.get(body.get("channel"), -1e9)
                if now - last < self.min_interval:
                    self.rate_limited += 1
                    return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
                self.last_post[body.get("channel")] = now
        if method == "auth.test":
            return 200, {"ok": True, "user_id": "UBOT", "bot_id": "BBOT", "team_id": "T1", "user": "papers"}, {}
        if method == "chat.postMessage":
            self.ts += 1
            ts = f"{time.time():.6f}" if self.real_ts else f"{self.ts}.000100"
            self.messages.setdefault(body.get("channel"), []).append({"ts": ts, "text": body.get("text"),
                                                                      "metadata": body.get("metadata")})
            return 200, {"ok": True, "channel": body.get("channel"), "ts": ts}, {}
        if method == "conversations.history":
            oldest = float(body.get("oldest") or 0)
            found = [m for m in reversed(self.messages.get(body.get("channel"), [])) if float(m["ts"]) >= oldest]
            return 200, {"ok": True, "messages": found, "has_more": False}, {}
        return 200, {"ok": True}, {}

    def script(self, method: str, *answers: tuple[int, dict, dict]) -> None:
        self.scripts[method] = list(answers)

    def called(self, method: str) -> list[dict]:
        return [body for name, body, _ in self.calls if name == method]

    @property
    def api_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/api/"

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeSlack:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeDiscord:
    """A fake Discord REST API (v10) on 127.0.0.1: login and channel messages.

    `script(channel_id, (status, body, headers), ...)` queues answers for posts to a
    channel; otherwise a post creates a message. 429s carry `Via`, as Discord's do, so
    discord.py treats them as rate limits rather than a Cloudflare ban.
    """

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.scripts: dict[str, list[tuple[int, dict, dict]]] = {}
        self.messages: dict[str, list[dict]] = {}  # channel -> created messages
        self.nonces: dict[str, dict] = {}
        self.min_interval = 0.0  # > 0: per-channel rate limit, 429 with retry_after and Via
        self.last_post: dict[str, float] = {}
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
                    fake.next_id += 1
                    message = {"id": str((int(time.time() * 1000) - 1420070400000) << 22 | fake.next_id % 4096),
                               "channel_id": channel, "content": body.get("content") or "", "nonce": nonce,
                               "author": {"id": "42"}, "embeds": body.get("embeds") or []}
                    fake.messages.setdefault(channel, []).append(message)
                    if nonce:
                        fake.nonces[nonce] = message
                return self._send(200, message)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def script(self, channel: str, *answers: tuple[int, dict, dict]) -> None:
        self.scripts[channel] = list(answers)

    @property
    def api_base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/api/v10"

    def __enter__(self) -> FakeDiscord:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
