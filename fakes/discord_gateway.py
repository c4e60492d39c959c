"""A protocol-level fake of Discord on 127.0.0.1: the gateway WebSocket and the REST routes discord.py uses.

The gateway speaks just enough of Discord's protocol (v10, JSON, uncompressed frames) for
discord.py's Client: op 10 HELLO, op 2 IDENTIFY (a wrong token is closed with 4004
"Authentication failed", as Discord does), op 1 / op 11 heartbeats, op 6 RESUME, op 9
INVALID_SESSION, and the dispatches READY and INTERACTION_CREATE. `interact("list")` sends a
`/papers list` application command; `submit_modal` submits the last modal the bot opened
(MODAL_SUBMIT), `click` presses a button on a message the bot sent.

Sharding, as Discord's: `shards` is the count GET /gateway/bot names and the fewest the
gateway takes: an IDENTIFY without `shard`, or with `[i, n]` and n below it, is closed with
4011 (Sharding required); a shard id outside 0..n-1 with 4010 (Invalid shard). Each bucket
(shard id % `max_concurrency`) may IDENTIFY once per `identify_window` seconds; one sooner
gets op 9, as Discord answers it, and is counted in `too_soon`. `required_shards`, when set,
is the fewest shards taken instead (Discord's requirement can grow past what it last said);
`refuse_connections = k` answers the next k gateway connections with HTTP 503. An interaction goes to the
session of its server's shard, (guild_id >> 22) % n (`guild_on_shard` makes such ids);
direct messages to shard 0. `drop(shard)` cuts a shard's TCP connection.

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


def guild_on_shard(shard: int, count: int, n: int = 0) -> str:
    """A server id (a snowflake) that Discord places on `shard` of `count`: (id >> 22) % count."""
    return str(((1000 + n) * count + shard) << 22)


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
                 identify_close: int | None = None, shards: int = 1, max_concurrency: int = 1,
                 identify_window: float = 5.0, session_starts: tuple[int, int] = (1000, 0),
                 gateway_bot_url: str | None = None, required_shards: int | None = None):
        self.token = token  # what REST accepts
        self.gateway_token = token if gateway_token is None else gateway_token  # what IDENTIFY accepts
        self.heartbeat_ms = heartbeat_ms
        self.identify_close = identify_close  # e.g. 4014: close every IDENTIFY with this code
        self.shards = shards  # what GET /gateway/bot names
        self.required_shards = required_shards  # the fewest shards IDENTIFY takes; None: `shards`
        self.refuse_connections = 0  # the next this many gateway connections get HTTP 503 (an outage)
        self.max_concurrency = max_concurrency
        self.identify_window = identify_window  # seconds between IDENTIFYs of one bucket
        # GET /gateway/bot's session_start_limit: how many starts are left (less the IDENTIFYs taken
        # since), and in how many milliseconds they reset.
        self.session_starts = session_starts
        self.gateway_bot_url = gateway_bot_url  # the address GET /gateway/bot names; None: this gateway
        self.identified_at: list[tuple[int, float]] = []  # (shard id, time.monotonic()) of each IDENTIFY taken
        self.too_soon: list[int] = []  # shards that IDENTIFYed before their bucket's window had passed
        self.interactions: list[tuple[int, str]] = []  # (shard, guild id or "dm") each interaction went to
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
        self.refused: list[str] = []  # the paths of the gateway connections refused (refuse_connections)
        self.heartbeats = 0
        self.ready = threading.Event()  # set when a session got READY
        self._sockets: dict[web.WebSocketResponse, int] = {}  # identified session -> last sequence number
        self._shard_of: dict[web.WebSocketResponse, tuple[int, int]] = {}  # session -> (shard id, count)
        self._session_shard: dict[str, tuple[int, int]] = {}  # session id -> (shard id, count), for RESUME
        self._transports: dict[web.WebSocketResponse, object] = {}
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
                 dm: str | None = None, user_id: str = USER_ID, guild_id: str = GUILD_ID,
                 channel_id: str = CHANNEL_ID) -> str:
        """Send `/papers <subcommand>` to the session of the server's shard; returns the interaction token.

        `permissions` is the member's permission bits (16 = Manage Channels); `dm`, a direct
        message channel id: sent there, by `user_id`, outside any server.
        """
        return self._interact(2, {"id": "9001", "name": "papers", "type": 1, "guild_id": guild_id,
                                  "options": [{"name": subcommand, "type": 1,
                                               "options": [{"name": k, "type": 5 if isinstance(v, bool) else 3,
                                                            "value": v}
                                                           for k, v in (options or {}).items()]}]},
                              permissions=permissions, user_id=user_id, dm=dm, guild_id=guild_id,
                              channel_id=channel_id)

    def submit_modal(self, values: dict[str, str], *, permissions: int = 1 << 4, user_id: str = USER_ID,
                     guild_id: str = GUILD_ID) -> str:
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
                              permissions=permissions, user_id=user_id, guild_id=guild_id)

    def click(self, message: dict, label: str, *, permissions: int = 1 << 4, user_id: str = USER_ID,
              guild_id: str = GUILD_ID) -> str:
        """Click the button labelled `label` on a message the bot sent (INTERACTION_CREATE type 3,
        MESSAGE_COMPONENT, with the message, as Discord sends it)."""
        buttons = [b for row in message.get("components") or [] for b in row.get("components", [])]
        (button,) = [b for b in buttons if b.get("label") == label]
        return self._interact(3, {"custom_id": button["custom_id"], "component_type": 2},
                              permissions=permissions, user_id=user_id, message=message, guild_id=guild_id)

    def press(self, custom_id: str, *, channel_id: str = CHANNEL_ID, permissions: int = 1 << 4,
              dm: str | None = None, user_id: str = USER_ID, guild_id: str = GUILD_ID) -> str:
        """Press a button by its custom_id on one of the bot's messages in `channel_id` (or the
        direct message `dm`): a component interaction. Returns the interaction token."""
        channel = dm or channel_id
        return self._interact(3, {"custom_id": custom_id, "component_type": 2}, permissions=permissions,
                              user_id=user_id, dm=dm, channel_id=channel, guild_id=guild_id,
                              message=_message(channel, {"content": ""}, _user(BOT_ID, "papers", bot=True)))

    def _interact(self, kind: int, data: dict, *, permissions: int, user_id: str = USER_ID,
                  message: dict | None = None, dm: str | None = None, channel_id: str = CHANNEL_ID,
                  guild_id: str = GUILD_ID) -> str:
        interaction_token = f"itoken-{next(_ids)}"
        payload: dict = {
            "id": snowflake(), "application_id": APP_ID, "type": kind, "token": interaction_token, "version": 1,
            "guild_id": guild_id, "channel_id": channel_id,
            "channel": {"id": channel_id, "type": 0, "guild_id": guild_id, "name": "papers", "position": 0,
                        "permission_overwrites": [], "nsfw": False, "parent_id": None},
            "member": {"user": _user(user_id, "ada"), "roles": [], "joined_at": "2026-01-01T00:00:00+00:00",
                       "deaf": False, "mute": False, "flags": 0, "permissions": str(permissions)},
            "app_permissions": str(1 << 11), "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id}, "context": 0, "attachment_size_limit": 8388608,
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
        asyncio.run_coroutine_threadsafe(self._dispatch_interaction(data), self._loop).result(5)

    async def _dispatch_interaction(self, data: dict) -> None:
        """To the session of the server's shard, as Discord routes it (direct messages: shard 0)."""
        guild = data.get("guild_id")
        for ws, (shard, count) in list(self._shard_of.items()):
            if ws in self._sockets and shard == (0 if guild is None else (int(guild) >> 22) % count):
                self.interactions.append((shard, guild or "dm"))
                await self._dispatch(ws, "INTERACTION_CREATE", data)
                return
        raise RuntimeError(f"no session of the shard of server {guild}: the interaction would be lost")

    def drop(self, shard: int) -> None:
        """Cut the TCP connection of `shard`'s session, without a close frame (a network failure)."""

        def cut() -> None:
            for ws, (shard_id, _count) in list(self._shard_of.items()):
                transport = self._transports.get(ws)
                if shard_id == shard and ws in self._sockets and transport is not None:
                    self._sockets.pop(ws, None)
                    transport.abort()  # type: ignore[attr-defined]

        self._loop.call_soon_threadsafe(cut)

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

    async def _dispatch(self, ws: web.WebSocketResponse, event: str, data: dict) -> None:
        self._sockets[ws] = seq = self._sockets.get(ws, 0) + 1
        await ws.send_str(json.dumps({"op": 0, "s": seq, "t": event, "d": data}))

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_connections > 0:
            self.refuse_connections -= 1
            self.refused.append(request.path)
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections.append(request.query_string)
        self.paths.append(request.path)
        self._transports[ws] = request.transport
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
                    shard, count = data.get("shard") or (0, 1)
                    refusal = self._refuse_shard(data.get("shard"))
                    if refusal:
                        self.closed_with.append(refusal[0])
                        await ws.close(code=refusal[0], message=refusal[1])
                        break
                    if self._too_soon(shard):
                        self.too_soon.append(shard)
                        await ws.send_str(json.dumps({"op": 9, "s": None, "t": None, "d": False}))
                        continue
                    self.sessions.append(f"session-{next(_ids)}")
                    self._shard_of[ws] = self._session_shard[self.sessions[-1]] = (shard, count)
                    await self._dispatch(ws, "READY", {
                        "v": 10, "user": _user(BOT_ID, "papers", bot=True), "guilds": [], "private_channels": [],
                        "relationships": [], "session_type": "normal", "session_id": self.sessions[-1],
                        "resume_gateway_url": self.resume_url, "application": {"id": APP_ID, "flags": 0},
                        "shard": [shard, count],
                    })
                    self.ready.set()
                elif op == 6:
                    self.resumes.append(data)
                    if data.get("token") != self.gateway_token:
                        self.closed_with.append(4004)
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    self._sockets[ws] = data.get("seq") or 0
                    self._shard_of[ws] = self._session_shard.get(data.get("session_id"), (0, 1))
                    await self._dispatch(ws, "RESUMED", {})
        finally:
            self._sockets.pop(ws, None)
            self._shard_of.pop(ws, None)
            self._transports.pop(ws, None)
        return ws

    def _refuse_shard(self, shard: list[int] | None) -> tuple[int, bytes] | None:
        """Discord's answer to an IDENTIFY's `shard` it does not take: a close code and reason."""
        if shard is None:
            shard = [0, 1]
        shard_id, count = shard
        if not 0 <= shard_id < count:
            return 4010, b"Invalid shard."
        if count < (self.shards if self.required_shards is None else self.required_shards):
            return 4011, b"Sharding required."
        return None

    def _too_soon(self, shard: int) -> bool:
        """Whether an IDENTIFY of `shard` now comes within its bucket's window (else it is counted)."""
        now, bucket = time.monotonic(), shard % self.max_concurrency
        with self._lock:
            if any(s % self.max_concurrency == bucket and now - at < self.identify_window
                   for s, at in self.identified_at):
                return True
            self.identified_at.append((shard, now))
        return False

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
        left, reset_after = self.session_starts
        return _json({"url": self.gateway_bot_url or self.gateway_url, "shards": self.shards, "session_start_limit": {
            "total": 1000, "remaining": max(left - len(self.identified_at), 0), "reset_after": reset_after,
            "max_concurrency": self.max_concurrency}})

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
    parser.add_argument("--shards", type=int, default=1, help="the shard count GET /gateway/bot names")
    parser.add_argument("--max-concurrency", type=int, default=1, help="IDENTIFYs allowed at once (per 5 s)")
    args = parser.parse_args()
    fake = FakeDiscordGateway(args.token, shards=args.shards, max_concurrency=args.max_concurrency)
    fake.port = args.port
    with fake:
        print(f"api_base = {fake.api_base!r}\ngateway_url = {fake.gateway_url!r}\ntoken = {fake.token!r}", flush=True)
        print("type a /papers subcommand (e.g. `list`, `search diffusion`) to send it, `K: list` to send it from a "
              "server on shard K; Ctrl-D ends", flush=True)
        seen = 0
        try:
            while True:
                line = input("> ").strip()
                shard, colon, rest_of_line = line.partition(":")
                on_shard = int(shard) if colon and shard.strip().isdigit() else 0
                line = rest_of_line.strip() if colon and shard.strip().isdigit() else line
                if line:
                    name, _, rest = line.partition(" ")
                    option = {"search": "words", "subscribe": "query", "preview": "query", "show": "paper"}.get(name)
                    count = max([n for _, n in fake._shard_of.values()] or [1])
                    try:
                        fake.interact(name, {option: rest} if option and rest else None, permissions=1 << 4,
                                      guild_id=guild_on_shard(on_shard, count))
                    except RuntimeError as exc:
                        print(exc, flush=True)
                        continue
                    fake.wait_for(lambda seen=seen: len(fake.followups) > seen, 10)
                for item in fake.followups[seen:]:
                    print(json.dumps(item["body"], indent=1)[:2000], flush=True)
                seen = len(fake.followups)
        except (EOFError, KeyboardInterrupt):
            pass


if __name__ == "__main__":
    main()
