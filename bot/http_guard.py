"""Our two small HTTP servers (Slack's POST /slack/events, /healthz + /metrics), hardened.

aiohttp's server has no read timeout of its own for a request's headers and body (its
`keepalive_timeout` only covers idle keep-alive connections, and in recent releases the
first request), and no cap on connections. So each server is started here, on the bot's
event loop, through a thin protocol wrapper that

- closes a connection that has not delivered a whole request (headers and body) within
  `read_timeout` seconds of connecting or of the first byte of a later request on a
  kept-alive connection (slow or stalled clients, "slowloris"); a kept-alive connection
  may sit idle, between requests, for `idle_timeout`; and
- takes at most `max_connections` connections at once (a share of the process's file
  limit, see `connection_cap`, enforced at accept() by `_Listener`); beyond that a new
  connection replaces the oldest one still waiting for its request (or, when all are
  busy, is closed at once). So the sockets the bot needs for its sources, Slack and
  the database are never taken by a flood, and slow clients cannot lock Slack out.

Refused requests are not logged one by one: `RejectLog` writes one summary line (counts
by reason) at most every `interval` seconds, and aiohttp's own tracebacks for malformed
HTTP go to DEBUG through `QuietServerLog`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)
_AIOHTTP_SERVER_LOG = logging.getLogger("aiohttp.server")

# Slack gives up on a request after 3 seconds; a request that takes longer than this to
# arrive is either broken or hostile. Generous enough for a slow proxy.
READ_TIMEOUT = 10.0
# Between two requests on a kept-alive connection. Longer than a reverse proxy keeps an idle
# upstream connection (nginx: 60 s), so the proxy closes it first and never sends a request
# on a connection we are closing; an idle connection still makes room at the cap.
IDLE_TIMEOUT = 75.0


def connection_cap(share: float = 0.25, ceiling: int = 256) -> int:
    """How many connections one server may hold: `share` of the file limit, at most `ceiling`.

    With `ulimit -n 256` the Slack endpoint takes at most 64 descriptors and the metrics
    server 16 (a sixteenth), which leaves the rest for SQLite, httpx and Slack's client.
    """
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return min(64, ceiling)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return ceiling
    return max(4, min(ceiling, int(soft * share)))


class RejectLog:
    """Counts refused requests by reason and logs one summary line per `interval` at most."""

    def __init__(self, name: str, *, interval: float = 60.0, logger: logging.Logger = log,
                 monotonic: Callable[[], float] = time.monotonic):
        self.name = name
        self.interval = interval
        self.logger = logger
        self.monotonic = monotonic
        self.counts: dict[str, int] = {}
        self.total = 0  # since start, for tests and curiosity
        self._last = -1e18
        self._handle: asyncio.TimerHandle | None = None

    def note(self, reason: str) -> None:
        """One refused request; `reason` is one of our own fixed strings, never client text."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.total += 1
        if self._handle is not None:
            return
        delay = max(0.0, self._last + self.interval - self.monotonic())
        try:
            self._handle = asyncio.get_running_loop().call_later(delay, self.flush)
        except RuntimeError:  # no loop (a unit test): say it now
            self.flush()

    def flush(self) -> None:
        self._handle = None
        if not self.counts:
            return
        total = sum(self.counts.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        self.counts = {}
        self._last = self.monotonic()
        self.logger.warning("%s: refused %d (%s); one such summary at most every %g s",
                            self.name, total, reasons, self.interval)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.flush()


class QuietServerLog:
    """aiohttp's server logger, minus a traceback for every malformed request a client sends.

    aiohttp logs "Error handling request" with the full traceback at ERROR when it cannot
    parse a request; those are counted as rejects instead (one line at DEBUG). Anything
    else, such as a bug in one of our handlers, is logged as before.
    """

    def __init__(self, rejects: RejectLog, logger: logging.Logger = _AIOHTTP_SERVER_LOG):
        self.rejects = rejects
        self.logger = logger

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if not self._malformed(exc_info):
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg, *args, exc_info=None, **kwargs) -> None:
        if not self._malformed(exc_info):  # a first request with a bad method (TLS, garbage) comes here
            self.logger.debug(msg, *args, exc_info=exc_info, **kwargs)

    def _malformed(self, exc) -> bool:
        if not isinstance(exc, HttpProcessingError):
            return False
        self.rejects.note("malformed HTTP")
        self.logger.debug("malformed HTTP request: %.200r", str(exc))  # client text: bounded, quoted
        return True

    def __getattr__(self, name):  # debug, warning, error, isEnabledFor, ...
        return getattr(self.logger, name)


class _Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: the cap and the read deadline."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self.guard = guard
        self.inner: asyncio.Protocol | None = inner
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False  # between requests on a kept-alive connection
        self.counted = True  # against the cap

    def connection_made(self, transport) -> None:
        self.transport = transport  # counted against the cap since accept() (see _Listener)
        self.guard.connections[transport] = self
        self.expect_request()
        assert self.inner is not None  # connection_lost has not run yet
        self.inner.connection_made(transport)

    @property
    def waiting(self) -> bool:
        """Still waiting for a whole request (not in a handler): the clock runs."""
        return self._timer is not None

    def evict(self) -> None:
        """Close to make room for a new connection; no longer counted from now on."""
        self.stop_clock()
        self.guard.connections.pop(self.transport, None)
        self.guard.accepted -= 1
        self.counted = False
        if self.transport is not None:  # always, for a connection in guard.connections
            self.transport.abort()

    def expect_request(self) -> None:
        """Start the clock: a whole request must arrive within read_timeout."""
        self.stop_clock()
        self._timer = asyncio.get_running_loop().call_later(self.guard.read_timeout, self._expired)

    def idle(self) -> None:
        """A response went out: the next request may take idle_timeout to start."""
        self.stop_clock()
        self._idle = True
        self._timer = asyncio.get_running_loop().call_later(self.guard.idle_timeout, self._expired)

    def stop_clock(self) -> None:
        self._idle = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._idle:  # an idle keep-alive connection closing is no refusal
            self.guard.rejects.note("read timeout")
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._idle:
            self.expect_request()  # a new request has begun: it has read_timeout to arrive
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self.stop_clock()
        if self.inner is None:
            return
        if self.counted:
            self.guard.connections.pop(self.transport, None)
            self.guard.accepted -= 1
            self.counted = False
        inner, self.inner = self.inner, None
        inner.connection_lost(exc)


class ConnectionGuard:
    """The live connections of one server, the cap, and the per-request read deadline."""

    def __init__(self, rejects: RejectLog, *, read_timeout: float, max_connections: int, max_body: int,
                 idle_timeout: float = IDLE_TIMEOUT):
        self.rejects = rejects
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self.connections: dict[asyncio.Transport | None, _Connection] = {}  # by transport
        self.accepted = 0  # sockets accepted and not yet closed: what the cap counts

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Connection(self, factory())

    def make_room(self) -> bool:
        """At the cap: close the oldest connection still waiting for its request, if there is one.

        So a client that holds connections open without sending (or sends a byte at a
        time) cannot lock Slack out: a new connection takes the place of the oldest idle
        one. Connections whose request is being handled are never closed here.
        """
        for connection in self.connections.values():  # oldest first
            if connection.waiting:
                self.rejects.note("idle connection closed for a new one")
                connection.evict()
                return True
        return False

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """Reads the whole body while the connection's clock runs, then stops it for the handler."""
        connection = self.connections.get(request.transport)
        length = request.content_length or 0
        if length > self.max_body:  # say so now rather than wait for it
            self.rejects.note("body too large")
            raise web.HTTPRequestEntityTooLarge(self.max_body, length, headers={"Connection": "close"})
        try:
            await request.read()
        except web.HTTPException as exc:  # 413: larger than client_max_size
            self.rejects.note(f"HTTP {exc.status}")
            raise
        except Exception:  # the client went away, or the clock ran out and closed it
            self.rejects.note("broken body")
            raise web.HTTPBadRequest() from None
        if connection is not None:
            connection.stop_clock()
        try:
            return await handler(request)
        finally:
            if connection is not None and connection.inner is not None:
                connection.idle()  # until the next request on this kept-alive connection


# accept() failures that mean "no descriptor or memory right now": wait, then try again.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Listener:
    """Our own accept loop on one listening socket, so the cap holds at accept() itself.

    asyncio's server accepts up to `backlog` sockets in one go before any protocol runs,
    so a cap checked in connection_made comes too late: a burst takes 128 descriptors at
    once. Here, at the cap, the oldest connection still waiting for its request is closed
    to make room (`make_room`), or if every connection is busy in a handler the new socket
    is closed right after accept(), before the next one: at most max_connections sockets,
    plus the evicted ones of one burst until the loop closes them. When accept() itself
    fails for want of descriptors, we pause a second and count it (asyncio logs a
    traceback for each attempt).
    """

    BURST = 32  # accepts per readiness event

    def __init__(self, sock: socket.socket, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]):
        self.sock = sock
        self.guard = guard
        self.factory = factory
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task] = set()
        self._retry: asyncio.TimerHandle | None = None
        self.closed = False

    def start(self) -> None:
        if not self.closed:
            self._retry = None
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        guard = self.guard
        for _ in range(self.BURST):
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    guard.rejects.note("accept() failed: out of file descriptors")
                    self.loop.remove_reader(self.sock.fileno())
                    self._retry = self.loop.call_later(1.0, self.start)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            if guard.accepted >= guard.max_connections and not guard.make_room():
                guard.rejects.note("too many connections")
                conn.close()
                continue
            guard.accepted += 1
            conn.setblocking(False)
            task = self.loop.create_task(self._hand_over(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.guard.wrap(self.factory), conn)
        except BaseException:
            self.guard.accepted -= 1
            conn.close()
            raise

    def close(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in self.tasks:
            task.cancel()


def _listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` resolves to (as asyncio does)."""
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                     flags=socket.AI_PASSIVE):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Served:
    """A running guarded server: `addresses`, `port`, and `await cleanup()`."""

    def __init__(self, runner: web.AppRunner, listeners: list[_Listener], guard: ConnectionGuard):
        self.runner = runner
        self.listeners = listeners
        self.guard = guard
        self.rejects = guard.rejects
        self.addresses = [listener.sock.getsockname() for listener in listeners]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def cleanup(self) -> None:
        for listener in self.listeners:
            listener.close()
        for connection in list(self.guard.connections.values()):
            connection.stop_clock()
        await self.runner.cleanup()
        for transport in list(self.guard.connections):
            if transport is not None:  # never a key: connection_made sets it first
                transport.abort()
        self.guard.rejects.close()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str,
    read_timeout: float = READ_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int | None = None,
    reject_interval: float = 60.0,
    rejects: RejectLog | None = None,
    max_body: int = 1024 * 1024,
) -> Served:
    """Serve `app` on host:port through the guard; `name` prefixes the reject summaries.

    Pass `rejects` to count the handlers' own refusals (bad signatures, ...) in the same lines,
    and `max_body` equal to the app's client_max_size (a larger Content-Length is refused at once).
    """
    rejects = rejects if rejects is not None else RejectLog(name, interval=reject_interval)
    guard = ConnectionGuard(rejects, read_timeout=read_timeout, idle_timeout=idle_timeout,
                            max_connections=max_connections if max_connections is not None else connection_cap(),
                            max_body=max_body)
    app.middlewares.insert(0, guard.middleware)
    # keepalive_timeout and lingering_time: aiohttp's own limits, kept at or below ours.
    runner = web.AppRunner(app, access_log=None, logger=QuietServerLog(rejects),
                           keepalive_timeout=idle_timeout, lingering_time=min(read_timeout, 0.5),
                           shutdown_timeout=2.0)
    await runner.setup()
    server = runner.server
    assert server is not None  # made by setup()
    try:
        listeners = [_Listener(sock, guard, server) for sock in _listening_sockets(host, port, backlog=128)]
    except BaseException:
        await runner.cleanup()
        raise
    for listener in listeners:
        listener.start()
    return Served(runner, listeners, guard)
