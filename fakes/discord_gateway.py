"""A protocol-level fake of Discord on 127.0.0.1: the gateway WebSocket and the REST routes discord.py uses.

The gateway speaks just enough of Discord's protocol (v10, JSON, uncompressed frames) for
discord.py's Client: op 10 HELLO, op 2 IDENTIFY (a wrong token is closed with 4004
"Authentication failed", as Discord does), op 1 / op 11 heartbeats, op 6 RESUME, and the
dispatches READY and INTERACTION_CREATE. `interact("list")` sends a `/papers list`
application command to every identified session; `submit_modal` submits the last modal the
bot opened (MODAL_SUBMIT), `click` presses a button on a message the bot sent.

REST: login (GET /users/@me, 401 for a wrong token), application info, GET /gateway/bot
(naming this fake's own gateway), command sync, interaction callbacks, webhook follow-ups
and edits of the original response, and channel messages (so cards can be posted too).

It runs its own event loop in a thread, so a test's loop (or a `papers-bot run` in
another process: `python -m fakes.discord_gateway`) talks to it like to a server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time

from aiohttp import WSMsgType, web

TOKEN = "discord-test-token"
APP_ID = "1100"
BOT_ID = "42"
GUILD_ID = "7000"
CHANNEL_ID = "123"
USER_ID = "555"
EPOCH_MS = 1420070400000

_ids = itertools.count(1)


def snowflake() -> str:
    return str(((int(time.time() * 1000) - EPOCH_MS) << 22) | (next(_ids) % 4096))


def _user(user_id: str, name: str, bot: bool = False) -> dict:
    return {"id": user_id, "username": name, "discriminator": "0", "avatar": None, "global_name": None, "bot": bot}


def _message(channel_id: str, body: dict, author: dict) -> dict:
    return {"id": snowflake(), "channel_id": channel_id, "type": 0, "content": body.get("content") or "",
            "embeds": body.get("embeds") or [], "components": body.get("components") or [], "attachments": [],
            "author": author, "timestamp": "2026-11-27T12:00:00+00:00", "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False,
            "flags": body.get("flags") or 0, "nonce": body.get("nonce")}


def _json(data, status: int = 200) -> web.Response:
    # discord.py reads a body as JSON only when Content-Type is exactly application/json (no charset).
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


class FakeDiscordGateway:
    """Start with `with FakeDiscordGateway() as fake:`; point api_base / gateway_url at it."""

    def __init__(self, token: str = TOKEN, *, gateway_token: str | None = None, heartbeat_ms: int = 41250,
                 identify_close: int | None = None):
        self.token = token  # what REST accepts
        self.gateway_token = token if gateway_token is None else gateway_token  # what IDENTIFY accepts
        self.heartbeat_ms = heartbeat_ms
        self.identify_close = identify_close  # e.g. 4014: close every IDENTIFY with this code
        self.requests: list[tuple[str, str]] = []  # (method, path with query), every REST request
        self.callbacks: list[dict] = []  # interaction callbacks: {"id", "token", "body"}
        self.followups: list[dict] = []  # {"method", "token", "body", "message"}: follow-ups and edits of @original
        self.posts: list[tuple[str, dict]] = []  # channel id, body: messages the bot sent
        self.synced: list[list[dict]] = []  # application command syncs
        self.connections: list[str] = []  # the query string of each gateway connection
        self.paths: list[str] = []  # the path of each gateway connection: /gateway, or /resume (READY's resume URL)
        self.resumes: list[dict] = []  # RESUME payloads (the "d")
        self.sessions: list[str] = []  # the session ids READY gave out
        self.identifies: list[dict] = []  # IDENTIFY payloads (the "d")
        self.closed_with: list[int] = []  # close codes this fake sent
        self.heartbeats = 0
        self.ready = threading.Event()  # set when a session got READY
        self._sockets: dict[web.WebSocketResponse, int] = {}  # identified session -> last sequence number
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # ---- addresses -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_url(self) -> str:  # what READY names for resuming (Discord's differs from the first one too)
        return f"ws://127.0.0.1:{self.port}/resume"

    # ---- driving it from a test ------------------------------------------------------------

    def interact(self, subcommand: str, options: dict | None = None, *, permissions: int = 1 << 4,
                 dm: str | None = None, user_id: str = USER_ID) -> str:
        """Send `/papers <subcommand>` to every identified session; returns the interaction token.

        `permissions` is the member's permission bits (16 = Manage Channels); `dm`, a direct
        message channel id: sent there, by `user_id`, outside any server.
        """
        return self._interact(2, {"id": "9001", "name": "papers", "type": 1, "guild_id": GUILD_ID,
                                  "options": [{"name": subcommand, "type": 1,
                                               "options": [{"name": k, "type": 5 if isinstance(v, bool) else 3,
                                                            "value": v}
                                                           for k, v in (options or {}).items()]}]},
                              permissions=permissions, user_id=user_id, dm=dm)

    def submit_modal(self, values: dict[str, str], *, permissions: int = 1 << 4, user_id: str = USER_ID) -> str:
        """Submit the last modal the bot opened (an interaction callback of type 9, MODAL), as
        Discord sends it: INTERACTION_CREATE type 5 (MODAL_SUBMIT) with the modal's custom_id and
        its components, each text input's value taken from `values` by its label (else empty)."""
        (modal,) = [c["body"]["data"] for c in self.callbacks if c["body"].get("type") == 9][-1:]

        def filled(component: dict) -> dict:
            if component.get("type") == 1:
                return {"type": 1, "components": [filled(c) for c in component.get("components", [])]}
            if component.get("type") == 18:
                return {"type": 18, "component": filled(component["component"])}
            label = component.get("label") or ""
            return {"type": component["type"], "custom_id": component["custom_id"], "value": values.get(label, "")}

        return self._interact(5, {"custom_id": modal["custom_id"],
                                  "components": [filled(c) for c in modal.get("components", [])]},
                              permissions=permissions, user_id=user_id)

    def click(self, message: dict, label: str, *, permissions: int = 1 << 4, user_id: str = USER_ID) -> str:
        """Click the button labelled `label` on a message the bot sent (INTERACTION_CREATE type 3,
        MESSAGE_COMPONENT, with the message, as Discord sends it)."""
        buttons = [b for row in message.get("components") or [] for b in row.get("components", [])]
        (button,) = [b for b in buttons if b.get("label") == label]
        return self._interact(3, {"custom_id": button["custom_id"], "component_type": 2},
                              permissions=permissions, user_id=user_id, message=message)

    def press(self, custom_id: str, *, channel_id: str = CHANNEL_ID, permissions: int = 1 << 4,
              dm: str | None = None, user_id: str = USER_ID) -> str:
        """Press a button by its custom_id on one of the bot's messages in `channel_id` (or the
        direct message `dm`): a component interaction. Returns the interaction token."""
        channel = dm or channel_id
        return self._interact(3, {"custom_id": custom_id, "component_type": 2}, permissions=permissions,
                              user_id=user_id, dm=dm, channel_id=channel,
                              message=_message(channel, {"content": ""}, _user(BOT_ID, "papers", bot=True)))

    def _interact(self, kind: int, data: dict, *, permissions: int, user_id: str = USER_ID,
                  message: dict | None = None, dm: str | None = None, channel_id: str = CHANNEL_ID) -> str:
        interaction_token = f"itoken-{next(_ids)}"
        payload: dict = {
            "id": snowflake(), "application_id": APP_ID, "type": kind, "token": interaction_token, "version": 1,
            "guild_id": GUILD_ID, "channel_id": channel_id,
            "channel": {"id": channel_id, "type": 0, "guild_id": GUILD_ID, "name": "papers", "position": 0,
                        "permission_overwrites": [], "nsfw": False, "parent_id": None},
            "member": {"user": _user(user_id, "ada"), "roles": [], "joined_at": "2026-01-01T00:00:00+00:00",
                       "deaf": False, "mute": False, "flags": 0, "permissions": str(permissions)},
            "app_permissions": str(1 << 11), "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": GUILD_ID}, "context": 0, "attachment_size_limit": 8388608,
            "data": data,
        }
        if message is not None:
            payload["message"] = message
        self._send_interaction(self._placed(payload, dm, user_id))
        return interaction_token

    @staticmethod
    def _placed(data: dict, dm: str | None, user_id: str) -> dict:
        """The interaction as Discord sends it from a server channel, or from a direct message (`dm`)."""
        data["member"]["user"] = _user(user_id, "ada")
        if dm is None:
            return data
        for key in ("guild_id", "member", "guild_locale"):
            data.pop(key, None)
        (data.get("data") or {}).pop("guild_id", None)
        data.update(channel_id=dm, user=_user(user_id, "ada"), context=1, authorizing_integration_owners={"1": user_id},
                    channel={"id": dm, "type": 1, "recipients": [_user(user_id, "ada")], "last_message_id": None})
        return data

    def _send_interaction(self, data: dict) -> None:
        asyncio.run_coroutine_threadsafe(self._dispatch_all("INTERACTION_CREATE", data), self._loop).result(5)

    def reconnect(self) -> None:
        """Ask every session to reconnect and resume (op 7 RECONNECT), as Discord does now and then."""

        async def send() -> None:
            for ws in list(self._sockets):
                await ws.send_str(json.dumps({"op": 7, "s": None, "t": None, "d": None}))

        asyncio.run_coroutine_threadsafe(send(), self._loop).result(5)

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    # ---- the gateway -----------------------------------------------------------------------

    async def _dispatch_all(self, event: str, data: dict) -> None:
        for ws in list(self._sockets):
            await self._dispatch(ws, event, data)

    async def _dispatch(self, ws: web.WebSocketResponse, event: str, data: dict) -> None:
        self._sockets[ws] = seq = self._sockets.get(ws, 0) + 1
        await ws.send_str(json.dumps({"op": 0, "s": seq, "t": event, "d": data}))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections.append(request.query_string)
        self.paths.append(request.path)
        await ws.send_str(json.dumps({"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": self.heartbeat_ms}}))
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    self.heartbeats += 1
                    await ws.send_str(json.dumps({"op": 11, "s": None, "t": None, "d": None}))
                elif op == 2:
                    self.identifies.append(data)
                    if data.get("token") != self.gateway_token:
                        self.closed_with.append(4004)
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    if self.identify_close:
                        self.closed_with.append(self.identify_close)
                        await ws.close(code=self.identify_close, message=b"Closed by the fake.")
                        break
                    self.sessions.append(f"session-{next(_ids)}")
                    await self._dispatch(ws, "READY", {
                        "v": 10, "user": _user(BOT_ID, "papers", bot=True), "guilds": [], "private_channels": [],
                        "relationships": [], "session_type": "normal", "session_id": self.sessions[-1],
                        "resume_gateway_url": self.resume_url, "application": {"id": APP_ID, "flags": 0},
                        "shard": [0, 1],
                    })
                    self.ready.set()
                elif op == 6:
                    self.resumes.append(data)
                    if data.get("token") != self.gateway_token:
                        self.closed_with.append(4004)
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    self._sockets[ws] = data.get("seq") or 0
                    await self._dispatch(ws, "RESUMED", {})
        finally:
            self._sockets.pop(ws, None)
        return ws

    # ---- REST ------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    @web.middleware
    async def _record(self, request: web.Request, handler):
        if request.path not in ("/gateway", "/resume"):
            self.requests.append((request.method, request.path_qs))
            bot_auth = not request.path.startswith(("/api/v10/interactions/", "/api/v10/webhooks/"))
            if bot_auth and not self._authorized(request):
                return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return await handler(request)

    async def _me(self, request: web.Request) -> web.Response:
        return _json(_user(BOT_ID, "papers", bot=True))

    async def _application(self, request: web.Request) -> web.Response:
        return _json({"id": APP_ID, "name": "papers", "description": "", "icon": None, "bot_public": False,
                                  "bot_require_code_grant": False, "owner": _user("1", "owner"), "verify_key": "00",
                                  "flags": 0})

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})

    async def _sync(self, request: web.Request) -> web.Response:
        commands = await request.json()
        self.synced.append(commands)
        return _json([{**c, "id": str(9001 + i), "application_id": APP_ID, "version": "1"}
                                  for i, c in enumerate(commands)])

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.callbacks.append({"id": request.match_info["id"], "token": request.match_info["token"], "body": body})
        flags = (body.get("data") or {}).get("flags", 0)
        return _json({"interaction": {"id": request.match_info["id"], "type": 2,
                                                  "response_message_loading": body.get("type") == 5,
                                                  "response_message_ephemeral": bool(flags & 64)},
                                  "resource": {"type": body.get("type")}})

    async def _followup(self, request: web.Request) -> web.Response:
        body = await request.json()
        message = _message(CHANNEL_ID, body, _user(BOT_ID, "papers", bot=True))
        self.followups.append({"method": request.method, "token": request.match_info["token"], "body": body,
                               "message": message})
        return _json(message)

    async def _post_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append((request.match_info["channel"], body))
        return _json(_message(request.match_info["channel"], body, _user(BOT_ID, "papers", bot=True)))

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        api = "/api/v10"
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/resume", self._gateway)
        app.router.add_get(f"{api}/users/@me", self._me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._application)
        app.router.add_get(f"{api}/gateway/bot", self._gateway_bot)
        app.router.add_put(f"{api}/applications/{{app}}/commands", self._sync)
        app.router.add_put(f"{api}/applications/{{app}}/guilds/{{guild}}/commands", self._sync)
        app.router.add_post(f"{api}/interactions/{{id}}/{{token}}/callback", self._callback)
        app.router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        app.router.add_patch(f"{api}/webhooks/{{app}}/{{token}}/messages/@original", self._followup)
        app.router.add_post(f"{api}/channels/{{channel}}/messages", self._post_message)
        return app

    # ---- start / stop ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> FakeDiscordGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def main() -> None:  # a fake to point a real `papers-bot run` at, by hand
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=TOKEN)
    args = parser.parse_args()
    fake = FakeDiscordGateway(args.token)
    fake.port = args.port
    with fake:
        print(f"api_base = {fake.api_base!r}\ngateway_url = {fake.gateway_url!r}\ntoken = {fake.token!r}", flush=True)
        print("type a /papers subcommand (e.g. `list`, `search diffusion`) to send it; Ctrl-D ends", flush=True)
        seen = 0
        try:
            while True:
                line = input("> ").strip()
                if line:
                    name, _, rest = line.partition(" ")
                    option = {"search": "words", "subscribe": "query", "preview": "query", "show": "paper"}.get(name)
                    fake.interact(name, {option: rest} if option and rest else None, permissions=1 << 4)
                    fake.wait_for(lambda seen=seen: len(fake.followups) > seen, 10)
                for item in fake.followups[seen:]:
                    print(json.dumps(item["body"], indent=1)[:2000], flush=True)
                seen = len(fake.followups)
        except (EOFError, KeyboardInterrupt):
            pass


if __name__ == "__main__":
    main()
