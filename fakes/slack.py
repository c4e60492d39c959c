"""A fake Slack Web API (and response_url endpoint) on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from .http import LocalServer


class FakeSlack(LocalServer):
    """A fake Slack Web API (and response_url endpoint) on 127.0.0.1.

    `POST /api/<method>` answers `{"ok": true, ...}`; `script(method, (status, body, headers), ...)`
    queues other answers. Every call is recorded as (method, parsed body, headers).
    views.open / views.update keep the modals (`views`) with their ids and hashes.

    Distribution (many workspaces): `add_workspace(code, team_id, name, token)` makes oauth.v2.access
    answer that authorization code (once) with that workspace's bot token; auth.test then names the
    workspace of the token it is called with, and `revoke(token)` makes Slack refuse it. `token_of(call)`
    is the bot token a recorded call carried.
    """

    def __init__(self):
        self.calls: list[tuple[str, dict, dict]] = []
        self.scripts: dict[str, list[tuple[int, dict, dict]]] = {}
        self.messages: dict[str, list[dict]] = {}  # channel -> what was posted, for conversations.history
        self.real_ts = False  # True: timestamps from the clock, as Slack's are
        self.min_interval = 0.0  # > 0: per-channel rate limit, 429 + Retry-After when exceeded
        self.last_post: dict[str, float] = {}
        self.post_times: dict[str, list[float]] = {}  # channel -> when each post was accepted (monotonic)
        self.retry_after = "1"  # the Retry-After of those 429s (Slack sends whole seconds)
        self.rate_limited = 0
        self.lock = threading.Lock()
        self.ts = 1000
        self.views: dict[str, dict] = {}  # view id -> the view as last opened or updated, with its id and hash
        self.view_counter = 0
        self.home_views: dict[str, dict] = {}  # user id -> the App Home view views.publish last set
        self.oauth_codes: dict[str, dict] = {}  # authorization code -> the workspace oauth.v2.access installs
        self.workspaces: dict[str, dict] = {}  # bot token -> its workspace (team_id, name, bot_user_id)
        self.revoked: set[str] = set()
        self._request = threading.local()  # the headers of the request each server thread answers
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
                fake._request.headers = dict(self.headers)  # this thread's request, for _answer
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

        self.serve(Handler)

    def _answer(self, method: str, body: dict) -> tuple[int, dict, dict]:
        queue = self.scripts.get(method)
        if queue:
            return queue.pop(0)
        headers = getattr(self._request, "headers", {})  # the request's, set by the handler's thread
        token = self._bearer(headers)
        if token in self.revoked:
            return 200, {"ok": False, "error": "token_revoked"}, {}
        if method == "oauth.v2.access":
            return self._oauth_access(body, headers)
        if method == "auth.test" and token in self.workspaces:
            team = self.workspaces[token]
            return 200, {"ok": True, "user_id": team["bot_user_id"], "bot_id": f"B{team['team_id']}",
                         "team_id": team["team_id"], "team": team["name"], "user": "papers"}, {}
        if method == "chat.postMessage" and self.min_interval:
            with self.lock:
                now = time.monotonic()
                last = self.last_post.get(body.get("channel"), -1e9)
                if now - last < self.min_interval:
                    self.rate_limited += 1
                    return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": self.retry_after}
                self.last_post[body.get("channel")] = now
                self.post_times.setdefault(body.get("channel"), []).append(now)
        if method == "auth.test":
            return 200, {"ok": True, "user_id": "UBOT", "bot_id": "BBOT", "team_id": "T1", "user": "papers"}, {}
        if method == "chat.postMessage":
            self.ts += 1
            ts = f"{time.time():.6f}" if self.real_ts else f"{self.ts}.000100"
            self.messages.setdefault(body.get("channel"), []).append({"ts": ts, "text": body.get("text"),
                                                                      "metadata": body.get("metadata"),
                                                                      "thread_ts": body.get("thread_ts")})
            return 200, {"ok": True, "channel": body.get("channel"), "ts": ts}, {}
        if method in ("views.open", "views.update"):
            return self._view(method, body)
        if method == "views.publish":
            view = body.get("view")
            view = json.loads(view) if isinstance(view, str) else view
            if not body.get("user_id") or not isinstance(view, dict) or view.get("type") != "home":
                return 200, {"ok": False, "error": "invalid_arguments"}, {}
            self.home_views[body["user_id"]] = view
            return 200, {"ok": True, "view": {"id": "V1", "type": "home", "blocks": view.get("blocks", [])}}, {}
        if method == "conversations.history":
            oldest = float(body.get("oldest") or 0)
            found = [m for m in reversed(self.messages.get(body.get("channel"), [])) if float(m["ts"]) >= oldest]
            return 200, {"ok": True, "messages": found, "has_more": False}, {}
        if method == "conversations.replies":  # the thread's parent, then its replies since `oldest`
            oldest = float(body.get("oldest") or 0)
            thread = [m for m in self.messages.get(body.get("channel"), [])
                      if m["ts"] == body.get("ts") or m.get("thread_ts") == body.get("ts") and float(m["ts"]) >= oldest]
            return 200, {"ok": True, "messages": thread, "has_more": False}, {}
        return 200, {"ok": True}, {}

    def _view(self, method: str, body: dict) -> tuple[int, dict, dict]:
        """views.open needs a trigger_id; views.update a known view_id and, when given, its
        current hash (else hash_conflict), as Slack checks. Each change gives a new hash."""
        view = body.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not isinstance(view, dict) or view.get("type") != "modal":
            return 200, {"ok": False, "error": "invalid_arguments"}, {}
        with self.lock:
            self.view_counter += 1
            if method == "views.open":
                if not body.get("trigger_id"):
                    return 200, {"ok": False, "error": "invalid_trigger_id"}, {}
                view_id = f"V{self.view_counter:04d}"
            else:
                view_id = body.get("view_id") or ""
                current = self.views.get(view_id)
                if current is None:
                    return 200, {"ok": False, "error": "not_found"}, {}
                if body.get("hash") and body["hash"] != current["hash"]:
                    return 200, {"ok": False, "error": "hash_conflict"}, {}
            stored = {**view, "id": view_id, "hash": f"{self.view_counter}.hash", "state": {"values": {}}}
            self.views[view_id] = stored
        return 200, {"ok": True, "view": stored}, {}

    def add_workspace(self, code: str, team_id: str, name: str, token: str) -> None:
        """oauth.v2.access with `code` installs the app in workspace `team_id` with bot token `token`."""
        self.oauth_codes[code] = {"team_id": team_id, "name": name, "token": token, "bot_user_id": f"U{team_id}BOT"}

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def _oauth_access(self, body: dict, headers: dict) -> tuple[int, dict, dict]:
        """Slack's answer to an app exchanging an authorization code: the client id and secret
        (HTTP basic auth, as slack_sdk sends them, or in the body) and a code given once."""
        import base64

        auth = headers.get("Authorization") or headers.get("authorization") or ""
        client_id, secret = body.get("client_id"), body.get("client_secret")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if not client_id or not secret:
            return 200, {"ok": False, "error": "invalid_client_id"}, {}
        with self.lock:
            team = self.oauth_codes.pop(body.get("code") or "", None)
        if team is None:
            return 200, {"ok": False, "error": "invalid_code"}, {}
        self.workspaces[team["token"]] = team
        self.revoked.discard(team["token"])
        return 200, {"ok": True, "app_id": "A0PAPERS", "access_token": team["token"], "token_type": "bot",
                     "scope": "commands,chat:write", "bot_user_id": team["bot_user_id"],
                     "team": {"id": team["team_id"], "name": team["name"]}, "enterprise": None,
                     "is_enterprise_install": False, "authed_user": {"id": f"U{team['team_id']}ADMIN"}}, {}

    @staticmethod
    def _bearer(headers: dict) -> str | None:
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    def token_of(self, call: tuple[str, dict, dict]) -> str | None:
        """The bot token a recorded call (method, body, headers) was made with."""
        return self._bearer(call[2])

    def thread_replies(self, channel: str, ts: str) -> list[dict]:
        """The replies posted in the thread of message `ts` (chat.postMessage with its thread_ts), in order."""
        return [m for m in self.messages.get(channel, []) if m.get("thread_ts") == ts]

    def script(self, method: str, *answers: tuple[int, dict, dict]) -> None:
        self.scripts[method] = list(answers)

    def called(self, method: str) -> list[dict]:
        return [body for name, body, _ in self.calls if name == method]

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

