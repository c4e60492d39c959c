"""Slack Socket Mode on 127.0.0.1: a WebSocket server speaking hello / envelope / ack, the Web API
that hands out its URL (apps.connections.open), and the two ways a firewall breaks it.

The wire format is Slack's (docs.slack.dev/apis/events-api/using-socket-mode; the envelopes match
slack_sdk's own tests/slack_sdk/socket_mode/mock_socket_mode_server.py):

* server -> client on connect: {"type": "hello", "num_connections": 1, "connection_info": {...}, ...}
* server -> client: {"envelope_id": ..., "type": "slash_commands" | "events_api" | "interactive",
  "payload": {...}, "accepts_response_payload": bool}
* client -> server: {"envelope_id": ..., "payload": {...}?}  (the ack, within 3 seconds)
* server -> client: {"type": "disconnect", "reason": "refresh_requested"}  (reconnect elsewhere)
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Callable

from aiohttp import WSMsgType, web

from .slack import FakeSlack

# Slack's WebSocket URLs carry a one-time ticket in the query: it must never reach a log.
TICKET = "fake-ticket-0f9e8d7c"


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` from a thread that is not the fake's; its last value (truthy) or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(interval)


class FakeSocketMode:
    """A Socket Mode WebSocket server in its own thread and event loop.

    Every connection gets `hello` first (unless `hello=False`); `send(envelope)` goes to every
    open connection; the acks clients send back are kept in `acks` by envelope id.
    """

    def __init__(self, *, hello: bool = True):
        self.hello = hello
        self.acks: dict[str, dict] = {}
        self.received: list[dict] = []
        self.connections = 0  # ever accepted
        self._open: set[web.WebSocketResponse] = set()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"ws://{host}:{port}/link/?ticket={TICKET}&app_id=A111"

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()  # answers pings by itself, as Slack's servers do
        await ws.prepare(request)
        self.connections += 1
        self._open.add(ws)
        try:
            if self.hello:
                await ws.send_str(json.dumps({
                    "type": "hello", "num_connections": len(self._open),
                    "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
                    "connection_info": {"app_id": "A111"}}))
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                self.received.append(data)
                if data.get("envelope_id"):
                    self.acks[data["envelope_id"]] = data
        finally:
            self._open.discard(ws)
        return ws

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/link/", self._link)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.SockSite(runner, self._sock).start())
        self._ready.set()
        self._loop.run_forever()
        for ws in list(self._open):
            self._loop.run_until_complete(ws.close())
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def _call(self, coro_fn) -> None:
        asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout=5)

    def send(self, message: dict) -> int:
        """Send `message` to every open connection; how many got it."""
        sockets = list(self._open)

        async def send_all():
            for ws in sockets:
                await ws.send_str(json.dumps(message))

        self._call(send_all)
        return len(sockets)

    def slash_command(self, text: str, *, response_url: str, command: str = "/papers", channel: str = "C123",
                      user: str = "U1") -> str:
        """Send a slash command envelope; its envelope id."""
        envelope_id = str(uuid.uuid4())
        payload = {"token": "unused-in-socket-mode", "team_id": "T111", "team_domain": "fake", "channel_id": channel,
                   "channel_name": "general", "user_id": user, "user_name": "someone", "command": command,
                   "text": text, "api_app_id": "A111", "is_enterprise_install": "false",
                   "response_url": response_url, "trigger_id": "111.222.fake"}
        sent = self.send({"envelope_id": envelope_id, "type": "slash_commands", "payload": payload,
                          "accepts_response_payload": True})
        assert sent, "no open Socket Mode connection"
        return envelope_id

    def ask_to_reconnect(self) -> None:
        """What Slack sends before it retires a connection (every few hours)."""
        self.send({"type": "disconnect", "reason": "refresh_requested",
                   "debug_info": {"host": "applink-fake"}})

    def drop(self) -> None:
        """Close every connection from the server side, as a restart or a network cut would."""
        sockets = list(self._open)

        async def close_all():
            for ws in sockets:
                await ws.close()

        self._call(close_all)

    def __enter__(self) -> FakeSocketMode:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class HangingServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte, like a proxy or middlebox that
    swallows the WebSocket upgrade. Connections stay open until the server is closed."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link/?ticket={TICKET}&app_id=A111"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


class FakeSlackSocketMode(FakeSlack):
    """FakeSlack whose apps.connections.open hands out `socket_url` (a fresh call each time, as
    Slack's URLs are single-use), and whose `hang` methods never answer until the fake closes."""

    def __init__(self, socket_url: str | None = None):
        super().__init__()
        self.socket_url = socket_url
        self.hang: set[str] = set()
        self._release = threading.Event()

    def _answer(self, method: str, body: dict) -> tuple[int, dict, dict]:
        if method in self.hang:
            self._release.wait(60)
            return 200, {"ok": False, "error": "fake_closed"}, {}
        if method == "apps.connections.open" and not self.scripts.get(method):
            return 200, {"ok": True, "url": self.socket_url}, {}
        return super()._answer(method, body)

    def __exit__(self, *exc) -> None:
        self._release.set()
        super().__exit__(*exc)
