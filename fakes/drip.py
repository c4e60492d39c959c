"""A fake source that answers at once, then drips its body one byte at a time.

Each byte comes well within any per-read timeout, so only a deadline for the whole
request stops the client. Bounded: it drips at most `total` bytes, then closes, and it
stops at once when the test ends. Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import threading


class DripServer:
    def __init__(self, every: float = 0.1, total: int = 30, content_type: str = "application/json"):
        self.every, self.total, self.content_type = every, total, content_type
        self.sent = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(2.0)
                conn.recv(65536)  # the request; its content does not matter
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
                        f"Content-Length: {self.total + 2}\r\nConnection: close\r\n\r\n")
                conn.sendall(head.encode() + b"[")
                for _ in range(self.total):
                    if self._stop.wait(self.every):
                        return
                    conn.sendall(b" ")
                    self.sent += 1
            except OSError:
                return  # the client gave up: that is the point

    def __enter__(self) -> DripServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._listener.close()
