"""A scriptable HTTP server on 127.0.0.1 (the fake HF and arXiv APIs of tests and benchmarks)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass
class Canned:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


class LocalServer:
    """An HTTP server on 127.0.0.1:<random port>, in a thread of its own: `with server: ...`."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeHTTPServer(LocalServer):
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

        self.serve(Handler)

    def route(self, path: str, *responses: Canned) -> None:
        self.routes[path] = list(responses)

    def route_fn(self, path: str, answer) -> None:
        """Answer `path` with `answer(full_path_with_query) -> Canned`."""
        self.routes[path] = answer

    def paths(self) -> list[str]:
        return [r[0] for r in self.requests]


def json_body(data) -> bytes:
    return json.dumps(data).encode()

