"""Slack distribution: workspaces install the app through OAuth (bolt's flow over the bot's own
database), each is posted to with its own token, an uninstall pauses its channels and a reinstall
resumes them; tokens are encrypted at rest and never shown. Real HTTP throughout: a browser's GETs
to the bot's Slack HTTP server, signed events, and the fake Slack Web API (fakes/slack.py)."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from cryptography.fernet import Fernet

import handlers
from bot import cli
from bot.adapters import build_adapters
from bot.config import Secrets, parse_config
from bot.dispatch import Dispatcher
from bot.errors import ConfigError
from bot.models import SLACK_UNINSTALLED, ChannelRef, Match, OutboxCounts, SlackInstallation

from .fakes import paper
from .test_slack import SECRET, command_body, post, sign, wait_for

KEY = Fernet.generate_key().decode()
CLIENT_ID = "1111.2222"
CLIENT_SECRET = "client-secret-for-tests-0123"
TOKEN_A = "xoxb-111-aaaaaaaaaaaaaaaaaaaaaaaa"
TOKEN_B = "xoxb-222-bbbbbbbbbbbbbbbbbbbbbbbb"
TOKEN_A2 = "xoxb-111-cccccccccccccccccccccccc"
COOKIE = "slack-app-oauth-state"
C_A = ChannelRef("slack", "CAAA1")  # a channel of workspace TA
C_B = ChannelRef("slack", "CBBB1")  # a channel of workspace TB


def config_data(tmp_path: Path, slack, port: int) -> dict:
    return {"storage": {"path": str(tmp_path / "bot.db")},
            "slack": {"mode": "http", "port": port, "host": "127.0.0.1", "api_url": slack.api_url,
                      "client_id": CLIENT_ID, "authorize_url": f"{slack.url}/oauth/v2/authorize",
                      "redirect_uri": f"http://127.0.0.1:{port}/slack/oauth_redirect"}}


def secrets(key: str | None = KEY) -> dict[str, str]:
    values = {"SLACK_SIGNING_SECRET": SECRET, "SLACK_CLIENT_SECRET": CLIENT_SECRET}
    if key is not None:
        values["PAPERS_BOT_TOKEN_KEY"] = key
    return values


class Bot:
    def __init__(self, url, adapters, running, config):
        self.url, self.adapters, self.running, self.config = url, adapters, running, config


@pytest.fixture
async def bot(tmp_path, slack, store, clock, unused_tcp_port):
    """The Slack adapter in distribution mode, its HTTP server up, over the test's store."""
    config = parse_config(config_data(tmp_path, slack, unused_tcp_port), Secrets(secrets()))
    adapters = build_adapters(config, installations=store)
    ctx = handlers.Context(store, config, clock)

    async def on_command(request):
        return await handlers.handle(ctx, request)

    running = await adapters["slack"].start(on_command)
    assert running is not None
    yield Bot(f"http://127.0.0.1:{unused_tcp_port}", adapters, running, config)
    await running.close()


async def install(bot: Bot, code: str, *, state: str | None = None, cookie: str | None = None) -> tuple[int, str]:
    """What an installer's browser does: open /slack/install (sent on to Slack's authorization page
    with a state and its cookie), then come back from Slack to /slack/oauth_redirect with a code."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.get(f"{bot.url}/slack/install", allow_redirects=False) as response:
            assert response.status == 302
            location = urlsplit(response.headers["Location"])
            issued = response.cookies[COOKIE].value
        query = parse_qs(location.query)
        assert f"{location.scheme}://{location.netloc}{location.path}" == bot.config.slack.authorize_url
        assert query["client_id"] == [CLIENT_ID] and "chat:write" in query["scope"][0].split(",")
        assert query["state"] == [issued]
        state = issued if state is None else state
        cookie = issued if cookie is None else cookie
        async with session.get(f"{bot.url}/slack/oauth_redirect", params={"code": code, "state": state},
                               headers={"Cookie": f"{COOKIE}={cookie}"}) as response:
            return response.status, await response.text()


async def event(bot: Bot, team: str, kind: dict) -> int:
    body = json.dumps({"type": "event_callback", "team_id": team, "api_app_id": "A0PAPERS", "event": kind,
                       "event_id": f"Ev{time.monotonic_ns()}", "event_time": int(time.time())})
    headers = {**sign(body, int(time.time())), "Content-Type": "application/json"}
    status, _ = await post(f"{bot.url}/slack/events", body, headers)
    return status


async def command(bot: Bot, slack, team: str, channel: ChannelRef, text: str) -> None:
    body = command_body(slack, text, channel=channel.channel_id).replace("team_id=T1", f"team_id={team}")
    before = len(slack.called("1"))
    status, _ = await post(f"{bot.url}/slack/events", body, sign(body, int(time.time())))
    assert status == 200
    await wait_for(lambda: len(slack.called("1")) > before)


def queue(store, clock, channel: ChannelRef, paper_id: str) -> None:
    store.add_papers([paper(paper_id, f"Diffusion {paper_id}")], clock())
    sub = store.add_subscription(channel, f"diffusion {paper_id}", "U1", clock()).subscription
    store.enqueue(paper_id, [Match(sub.id, channel, sub.query, ("diffusion in title",))], clock())


def posts(slack) -> dict[str, list[str]]:
    """channel -> the tokens chat.postMessage was called with for it, in order."""
    found: dict[str, list[str]] = {}
    for call in slack.calls:
        if call[0] == "chat.postMessage":
            found.setdefault(call[1]["channel"], []).append(slack.token_of(call))
    return found


async def test_two_workspaces_install_and_each_gets_its_cards_with_its_own_token(bot, slack, store, clock):
    slack.add_workspace("code-a", "TA", "Lab <A>", TOKEN_A)
    slack.add_workspace("code-b", "TB", "Lab B", TOKEN_B)
    status, page = await install(bot, "code-a")
    assert status == 200 and "installed in Lab &lt;A&gt;" in page  # the team's name, escaped
    assert (await install(bot, "code-b"))[0] == 200
    (access, _) = slack.called("oauth.v2.access")
    assert access["code"] == "code-a"
    assert [i.team_id for i in store.slack_installations()] == ["TA", "TB"]

    # Each channel's workspace is learnt from its commands (the reply goes to the response_url).
    await command(bot, slack, "TA", C_A, "subscribe diffusion")
    await command(bot, slack, "TB", C_B, "subscribe diffusion")
    assert store.slack_channel_team(C_A) == "TA" and store.slack_channel_team(C_B) == "TB"
    auth_tokens = {slack.token_of(call) for call in slack.calls if call[0] == "auth.test"}
    assert auth_tokens == {TOKEN_A, TOKEN_B}  # bolt authorized each command with its workspace's token

    queue(store, clock, C_A, "2411.00001")
    queue(store, clock, C_B, "2411.00002")
    report = await Dispatcher(store, bot.adapters, clock).dispatch()
    assert report.sent == 2
    assert posts(slack) == {C_A.channel_id: [TOKEN_A], C_B.channel_id: [TOKEN_B]}


async def test_uninstall_pauses_the_workspace_and_a_reinstall_resumes_it(bot, slack, store, clock):
    slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
    slack.add_workspace("code-b", "TB", "Lab B", TOKEN_B)
    await install(bot, "code-a")
    await install(bot, "code-b")
    await command(bot, slack, "TA", C_A, "status")
    await command(bot, slack, "TB", C_B, "status")
    own_pause = ChannelRef("slack", "CAAA2")  # paused by hand before: an uninstall and reinstall leave it so
    await command(bot, slack, "TA", own_pause, "pause")

    assert await event(bot, "TA", {"type": "app_uninstalled"}) == 200
    await wait_for(lambda: store.slack_installation("TA") is None)
    settings = store.channel_settings(C_A)
    assert settings.paused and settings.paused_reason == SLACK_UNINSTALLED
    assert not store.channel_settings(C_B).paused
    assert store.channel_settings(own_pause).paused_reason != SLACK_UNINSTALLED

    queue(store, clock, C_A, "2411.00001")
    queue(store, clock, C_B, "2411.00002")
    dispatcher = Dispatcher(store, bot.adapters, clock)
    assert (await dispatcher.dispatch()).sent == 1  # workspace TB's; TA's card waits, neither sent nor failed
    assert posts(slack) == {C_B.channel_id: [TOKEN_B]}
    assert store.count_pending(C_A) == 1 and store.delivery_counts().failed == 0

    slack.add_workspace("code-a2", "TA", "Lab A", TOKEN_A2)  # installed again: a new token
    assert (await install(bot, "code-a2"))[0] == 200
    assert not store.channel_settings(C_A).paused
    assert store.channel_settings(own_pause).paused
    assert (await dispatcher.dispatch()).sent == 1
    assert posts(slack)[C_A.channel_id] == [TOKEN_A2]
    assert store.delivery_counts() == OutboxCounts(sent=2)


async def test_a_channel_shared_with_another_workspace_stays_with_the_one_it_was_learnt_from(bot, slack, store,
                                                                                              clock):
    # A Slack Connect channel: people of both workspaces press its cards' buttons. A press from
    # workspace TB made TA's channel TB's, and TB's uninstall then paused it (TA still has the app).
    slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
    slack.add_workspace("code-b", "TB", "Lab B", TOKEN_B)
    await install(bot, "code-a")
    await install(bot, "code-b")
    await command(bot, slack, "TA", C_A, "status")
    store.add_papers([paper("2411.00001", "Shared reading")], clock())
    press = {"type": "block_actions", "team": {"id": "TB"}, "user": {"id": "UB1", "team_id": "TB"},
             "channel": {"id": C_A.channel_id}, "response_url": f"{slack.url}/respond/9", "trigger_id": "1",
             "actions": [{"type": "button", "action_id": "papers_save", "value": "2411.00001"}]}
    assert await signed_payload(bot, press) == 200
    await wait_for(lambda: slack.called("9"))
    assert slack.called("9")[0]["text"].startswith("Saved “Shared reading”")  # TB's people may use it
    assert store.slack_channel_team(C_A) == "TA"
    assert await event(bot, "TB", {"type": "app_uninstalled"}) == 200
    await wait_for(lambda: store.slack_installation("TB") is None)
    assert not store.channel_settings(C_A).paused
    queue(store, clock, C_A, "2411.00002")
    assert (await Dispatcher(store, bot.adapters, clock).dispatch()).sent == 1
    assert posts(slack) == {C_A.channel_id: [TOKEN_A]}
    # Once the workspace it was learnt from has no app, the channel is learnt again from its requests.
    assert await event(bot, "TA", {"type": "app_uninstalled"}) == 200
    await wait_for(lambda: store.slack_installation("TA") is None)
    slack.add_workspace("code-b2", "TB", "Lab B", TOKEN_B)
    await install(bot, "code-b2")
    await command(bot, slack, "TB", C_A, "status")
    assert store.slack_channel_team(C_A) == "TB"


async def test_tokens_revoked_pauses_like_an_uninstall(bot, slack, store):
    slack.add_workspace("code-b", "TB", "Lab B", TOKEN_B)
    await install(bot, "code-b")
    await command(bot, slack, "TB", C_B, "status")
    assert await event(bot, "TB", {"type": "tokens_revoked", "tokens": {"oauth": ["UB1"]}}) == 200
    await command(bot, slack, "TB", C_B, "help")  # a user token only: the bot stays, and still answers
    assert store.slack_installation("TB") is not None and not store.channel_settings(C_B).paused
    assert await event(bot, "TB", {"type": "tokens_revoked", "tokens": {"bot": ["UTBBOT"]}}) == 200
    await wait_for(lambda: store.slack_installation("TB") is None)
    assert store.channel_settings(C_B).paused_reason == SLACK_UNINSTALLED


@pytest.mark.parametrize("case", ["expired", "unknown", "reused", "other browser"])
async def test_a_bad_or_expired_state_is_refused_with_a_clear_page(bot, slack, store, clock, case):
    slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
    if case == "expired":
        now = clock()
        store.issue_slack_oauth_state("old-state", now.replace(year=2020), now.replace(year=2020))
        status, page = await install(bot, "code-a", state="old-state", cookie="old-state")
    elif case == "unknown":
        status, page = await install(bot, "code-a", state="made-up", cookie="made-up")
    elif case == "other browser":  # the state is good, but not the one this browser was given
        status, page = await install(bot, "code-a", cookie="another")
    else:
        slack.add_workspace("code-a-again", "TA", "Lab A", TOKEN_A)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            async with session.get(f"{bot.url}/slack/install", allow_redirects=False) as response:
                state = response.cookies[COOKIE].value
            url = f"{bot.url}/slack/oauth_redirect"
            for code in ("code-a", "code-a-again"):
                async with session.get(url, params={"code": code, "state": state},
                                       headers={"Cookie": f"{COOKIE}={state}"}) as response:
                    status, page = response.status, await response.text()
        assert store.slack_installation("TA") is not None  # the first use installed it
        store.remove_slack_installation("TA", clock())
    assert status in (400, 401)
    assert "Not installed" in page and "Start the installation again" in page
    assert ("expired or was already used" in page) if case != "other browser" else ("another browser" in page)
    assert store.slack_installations() == []
    assert slack.called("oauth.v2.access") == ([] if case != "reused" else slack.called("oauth.v2.access")[:1])


async def test_tokens_are_encrypted_at_rest_and_never_shown(tmp_path, slack, store, clock, unused_tcp_port,
                                                            monkeypatch, capsys):
    config = parse_config(config_data(tmp_path, slack, unused_tcp_port), Secrets(secrets()))
    logs = io.StringIO()
    cli.setup_logging(config, True, logs)  # -v: slack_sdk's debug lines too (oauth.v2.access's answer)
    adapters = build_adapters(config, installations=store)
    ctx = handlers.Context(store, config, clock)

    async def on_command(request):
        return await handlers.handle(ctx, request)

    running = await adapters["slack"].start(on_command)
    try:
        bot = Bot(f"http://127.0.0.1:{unused_tcp_port}", adapters, running, config)
        slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
        assert (await install(bot, "code-a"))[0] == 200
        await command(bot, slack, "TA", C_A, "subscribe diffusion")
        queue(store, clock, C_A, "2411.00001")
        assert (await Dispatcher(store, adapters, clock).dispatch()).sent == 1
    finally:
        await running.close()
    assert "oauth.v2.access" in logs.getvalue()  # the debug lines were there, and redacted
    assert TOKEN_A not in logs.getvalue() and CLIENT_SECRET not in logs.getvalue()

    raw = sqlite3.connect(tmp_path / "bot.db")
    (sealed,) = raw.execute("SELECT sealed FROM slack_installations WHERE team_id = 'TA'").fetchone()
    raw.close()
    assert TOKEN_A.encode() not in sealed and b"xoxb" not in sealed
    assert json.loads(Fernet(KEY.encode()).decrypt(sealed))["bot_token"] == TOKEN_A
    for path in tmp_path.glob("bot.db*"):  # the database and its WAL
        assert TOKEN_A.encode() not in path.read_bytes(), path.name

    # papers-bot status and export, as a user runs them
    config_file = tmp_path / "config.toml"
    data = config_data(tmp_path, slack, unused_tcp_port)
    config_file.write_text("\n".join(f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
                                     for section, keys in data.items()))
    for name, value in secrets().items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    for action in ("status", "export"):
        assert cli.main(["--config", str(config_file), action]) == 0
        out = capsys.readouterr()
        assert TOKEN_A not in out.out + out.err and KEY not in out.out + out.err
        if action == "status":
            assert "Slack workspaces installed (1): TA (Lab A)." in out.out
    assert "slack:CAAA1" in out.out  # export did show the channel


def test_a_missing_or_wrong_key_stops_at_start_with_one_line(tmp_path, slack, store, clock, unused_tcp_port,
                                                           monkeypatch, capsys):
    data = config_data(tmp_path, slack, unused_tcp_port)
    for key, expected in ((None, "needs PAPERS_BOT_TOKEN_KEY"), ("not-a-key", "is not a Fernet key")):
        with pytest.raises(ConfigError, match=expected):
            build_adapters(parse_config(data, Secrets(secrets(key))), installations=store)
    with pytest.raises(ConfigError, match="needs SLACK_CLIENT_SECRET"):
        build_adapters(parse_config(data, Secrets({"PAPERS_BOT_TOKEN_KEY": KEY})), installations=store)

    # A workspace installed under one key; the bot started with another.
    from bot.adapters.slack_oauth import Sealer, Workspaces

    workspaces = Workspaces(store, Sealer(KEY), "http://127.0.0.1:1/api/")
    from slack_sdk.oauth.installation_store import Installation

    workspaces.installed(Installation(team_id="TA", bot_token=TOKEN_A, bot_id="B1", bot_user_id="U1", user_id="U2"))
    config_file = tmp_path / "config.toml"
    config_file.write_text(f'[storage]\npath = "{tmp_path / "bot.db"}"\n[slack]\nmode = "http"\n'
                           f'client_id = "{CLIENT_ID}"\napi_url = "{slack.api_url}"\n')
    for name, value in secrets(Fernet.generate_key().decode()).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli.main(["--config", str(config_file), "command", "--channel", "slack:CAAA1", "--user", "U1",
                     "status"]) == 2
    err = capsys.readouterr().err
    assert "PAPERS_BOT_TOKEN_KEY does not open the Slack tokens stored" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_distribution_needs_http_mode(make_config):
    with pytest.raises(ConfigError, match='needs \\[slack\\] mode = "http"'):
        make_config(slack={"client_id": CLIENT_ID})


@pytest.mark.backends
def test_state_store_and_channel_teams(store, clock):
    now = clock()
    store.issue_slack_oauth_state("s1", now.replace(hour=13), now)
    assert store.consume_slack_oauth_state("s1", now) is True
    assert store.consume_slack_oauth_state("s1", now) is False  # once
    store.issue_slack_oauth_state("s2", now.replace(hour=13), now)
    assert store.consume_slack_oauth_state("s2", now.replace(hour=14)) is False  # expired
    assert store.slack_channel_team(C_A) is None
    assert store.set_slack_channel_team(C_A, "TA") is True
    assert store.set_slack_channel_team(C_A, "TA") is False
    assert store.slack_channel_team(C_A) == "TA"




def installation(team_id: str, clock, sealed: bytes = b"sealed-bytes") -> SlackInstallation:
    return SlackInstallation(team_id=team_id, sealed=sealed, installed_at=clock(), team_name=f"Lab {team_id}",
                             bot_user_id="UBOT", bot_scopes="commands,chat:write", installer_user_id="U1")


@pytest.mark.backends
def test_installations_are_kept_removed_and_pause_and_resume_their_channels(store, clock):
    c_a2, c_b = ChannelRef("slack", "CAAA2"), C_B
    for channel, team in ((C_A, "TA"), (c_a2, "TA"), (c_b, "TB")):
        store.set_slack_channel_team(channel, team)
    assert store.save_slack_installation(installation("TA", clock), clock()) == []
    store.save_slack_installation(installation("TB", clock), clock())
    assert store.slack_installation("TA") == installation("TA", clock)  # the sealed bytes as given
    assert [i.team_id for i in store.slack_installations()] == ["TA", "TB"]
    assert store.slack_installation("TX") is None

    assert store.remove_slack_installation("TA", clock()) == [C_A, c_a2]
    assert store.slack_installation("TA") is None and store.slack_installation("TB") is not None
    assert store.remove_slack_installation("TA", clock()) == []  # a repeated event: paused already
    clock.advance(minutes=1)
    store.save_slack_installation(installation("TA", clock, b"new-sealed"), clock())
    assert store.slack_installation("TA").sealed == b"new-sealed"
    assert store.remove_slack_installation("TA", clock()) == [C_A, c_a2]
    assert store.save_slack_installation(installation("TA", clock), clock()) == [C_A, c_a2]
    assert store.save_slack_installation(installation("TA", clock), clock()) == []  # nothing left to resume
    assert not store.channel_settings(C_A).paused and not store.channel_settings(c_b).paused
    store.update_channel_settings(c_a2, clock(), paused=True, paused_reason=None)  # paused by hand
    assert store.remove_slack_installation("TA", clock()) == [C_A]
    assert store.channel_settings(C_A).paused_reason == SLACK_UNINSTALLED
    assert store.channel_settings(C_A).paused and not store.channel_settings(c_b).paused
    assert store.save_slack_installation(installation("TA", clock), clock()) == [C_A]
    assert store.channel_settings(c_a2).paused  # stays paused: not the uninstall's


async def signed_payload(bot: Bot, payload: dict) -> int:
    from urllib.parse import urlencode

    body = urlencode({"payload": json.dumps(payload)})
    status, _ = await post(f"{bot.url}/slack/events", body, sign(body, int(time.time())))
    return status


async def test_app_home_modals_and_mentions_use_the_workspaces_own_token(bot, slack, store):
    from tests.test_slack_modal import edit, submission

    slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
    slack.add_workspace("code-b", "TB", "Lab B", TOKEN_B)
    await install(bot, "code-a")
    await install(bot, "code-b")

    # App Home, opened in workspace TB: views.publish with TB's token
    assert await event(bot, "TB", {"type": "app_home_opened", "user": "UB1", "channel": "DUB1", "tab": "home"}) == 200
    await wait_for(lambda: "UB1" in slack.home_views)
    (publish,) = [call for call in slack.calls if call[0] == "views.publish"]
    assert slack.token_of(publish) == TOKEN_B

    # The subscribe form in workspace TA: opened, previewed and submitted with TA's token
    await command(bot, slack, "TA", C_A, "help")
    body = command_body(slack, "subscribe", channel=C_A.channel_id).replace("team_id=T1", "team_id=TA")
    assert (await post(f"{bot.url}/slack/events", body, sign(body, int(time.time()))))[0] == 200
    await wait_for(lambda: slack.called("views.open"))
    view = next(iter(slack.views.values()))
    typed = edit(view, "diffusion")
    typed["team"]["id"] = typed["user"]["team_id"] = typed["view"]["team_id"] = "TA"
    assert await signed_payload(bot, typed) == 200
    await wait_for(lambda: slack.called("views.update"))
    submitted = submission(slack.views[view["id"]], "diffusion")
    submitted["team"]["id"] = submitted["user"]["team_id"] = submitted["view"]["team_id"] = "TA"
    assert await signed_payload(bot, submitted) == 200
    await wait_for(lambda: [s.query for s in store.subscriptions(C_A)] == ["diffusion"])
    modal_calls = [call for call in slack.calls if call[0] in ("views.open", "views.update")]
    assert modal_calls and {slack.token_of(call) for call in modal_calls} == {TOKEN_A}

    # A mention in workspace TB is answered in its thread with TB's token
    assert await event(bot, "TB", {"type": "app_mention", "user": "UB1", "channel": C_B.channel_id,
                                   "ts": "1700000000.000200", "text": "<@UTBBOT> help"}) == 200
    await wait_for(lambda: slack.called("chat.postMessage"))
    (answer,) = [call for call in slack.calls if call[0] == "chat.postMessage"]
    assert answer[1]["channel"] == C_B.channel_id and slack.token_of(answer) == TOKEN_B
    assert store.slack_channel_team(C_B) == "TB"  # learnt from the mention


async def test_a_flood_of_install_links_is_refused_before_it_fills_the_database(bot, store):
    bot.adapters["slack"].workspaces.state_store.max_states = 3
    statuses = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for _ in range(5):
            async with session.get(f"{bot.url}/slack/install", allow_redirects=False) as response:
                statuses.append((response.status, await response.text()))
    assert [status for status, _ in statuses] == [302, 302, 302, 503, 503]
    assert "Try again" in statuses[-1][1]
    raw = sqlite3.connect(store.path)
    assert raw.execute("SELECT count(*) FROM slack_oauth_states").fetchone() == (3,)
    raw.close()


def test_the_token_lookup_benchmark_reports_its_figures(capsys):
    from bench.slack_tokens import main

    figures = main(["--workspaces", "3", "--posts", "50"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figures["workspaces"] == 3 and figures["posts"] == 50
    assert 0 < figures["p50_us"] <= figures["p95_us"] <= figures["max_us"]


class WriteLockHolder:
    """Another process's writer (a second `papers-bot` process, say the poller): holds the
    database's write lock until told to let go."""

    def __init__(self, path: Path):
        import threading

        self.path, self.held, self.go = path, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        raw = sqlite3.connect(self.path, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        self.held.set()
        self.go.wait(30)
        raw.execute("COMMIT")
        raw.close()

    async def __aenter__(self) -> "WriteLockHolder":
        import asyncio

        self.thread.start()
        await asyncio.to_thread(self.held.wait, 30)
        return self

    async def __aexit__(self, *exc) -> None:
        import asyncio

        self.go.set()
        await asyncio.to_thread(self.thread.join, 30)


@pytest.mark.parametrize("what", ["install link", "first command from a channel"])
async def test_the_install_pages_and_events_never_hold_the_event_loop_while_the_database_is_busy(
        bot, slack, store, tmp_path, what):
    """While another process writes, the bot's writes for Slack distribution (an install link's
    state, a channel's workspace) wait their turn off the event loop: everything
    else the process does goes on meanwhile (before, the loop stood still for the whole busy
    timeout, 10 s, and the install page then failed)."""
    import asyncio

    slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
    assert (await install(bot, "code-a"))[0] == 200
    if what == "install link":
        async def request() -> int:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
                async with session.get(f"{bot.url}/slack/install", allow_redirects=False) as response:
                    return response.status
        expected = 302
    elif what == "first command from a channel":
        body = command_body(slack, "help", channel=C_A.channel_id).replace("team_id=T1", "team_id=TA")

        async def request() -> int:
            return (await post(f"{bot.url}/slack/events", body, sign(body, int(time.time()))))[0]
        expected = 200

    async with WriteLockHolder(tmp_path / "bot.db"):
        pending = asyncio.ensure_future(request())
        await asyncio.sleep(0.5)  # the loop turns while the write waits (a held loop ends this sleep late)
        loop_went_on = not pending.done()
    assert loop_went_on, "the event loop stood still until the database's busy timeout"
    assert await pending == expected
    if what == "first command from a channel":
        await wait_for(lambda: store.slack_channel_team(C_A) == "TA")


async def test_a_workspace_whose_token_this_key_cannot_open_waits_and_the_others_go_on(tmp_path, slack, store, clock,
                                                                                      caplog, unused_tcp_port):
    """Two processes started with different keys (one front-end misconfigured, say) leave tokens
    sealed with each. The key's check at start opens every stored installation, so a process
    with the wrong key stops there with one line; and a token that still cannot be opened when
    posting (sealed since) makes that workspace's papers wait, never given up, without a
    traceback, while the other workspaces are posted to."""
    from slack_sdk.oauth.installation_store import Installation

    from bot.adapters.slack_oauth import Sealer, Workspaces

    caplog.set_level("INFO")
    other_key = Fernet.generate_key().decode()
    mine = Workspaces(store, Sealer(KEY), slack.api_url)
    theirs = Workspaces(store, Sealer(other_key), slack.api_url)
    mine.installed(Installation(team_id="TA", bot_token=TOKEN_A, bot_id="BA", bot_user_id="UA", user_id="U1"))
    theirs.installed(Installation(team_id="TB", bot_token=TOKEN_B, bot_id="BB", bot_user_id="UB", user_id="U2"))
    with pytest.raises(ConfigError, match="PAPERS_BOT_TOKEN_KEY does not open"):
        mine.check_key()

    # This process starts while only TA is installed (its check passes); TB installs through the other.
    store.remove_slack_installation("TB", clock())
    config = parse_config(config_data(tmp_path, slack, unused_tcp_port), Secrets(secrets()))
    adapters = build_adapters(config, installations=store)
    theirs.installed(Installation(team_id="TB", bot_token=TOKEN_B, bot_id="BB", bot_user_id="UB", user_id="U2"))
    store.set_slack_channel_team(C_A, "TA")
    store.set_slack_channel_team(C_B, "TB")
    queue(store, clock, C_A, "2411.00001")
    queue(store, clock, C_B, "2411.00002")
    report = await Dispatcher(store, adapters, clock).dispatch()
    assert report.sent == 1 and report.retrying == 1 and report.failed == 0
    assert posts(slack) == {C_A.channel_id: [TOKEN_A]}
    assert store.count_pending(C_B) == 1
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a token the key cannot open"
    # Why it waits is kept with the delivery (`status` shows the last error): the key, named.
    (error,) = store.db.execute("SELECT error FROM deliveries WHERE channel = ?", [C_B.key]).fetchone()
    assert "PAPERS_BOT_TOKEN_KEY does not open" in error


async def test_a_card_refused_with_a_revoked_token_goes_out_within_a_minute_of_the_reinstall(bot, slack, store, clock):
    # The token is revoked before Slack tells the bot (no event yet): the post is refused, and
    # the card waits a minute (WORKSPACE_WAIT), not TOKEN_REFUSED_WAIT's 15, before its next try.
    slack.add_workspace("code-a", "TA", "Lab A", TOKEN_A)
    await install(bot, "code-a")
    await command(bot, slack, "TA", C_A, "status")
    queue(store, clock, C_A, "2411.00001")
    dispatcher = Dispatcher(store, bot.adapters, clock)
    slack.revoke(TOKEN_A)
    assert (await dispatcher.dispatch()).sent == 0
    assert store.count_pending(C_A) == 1 and store.delivery_counts().failed == 0

    assert await event(bot, "TA", {"type": "app_uninstalled"}) == 200
    await wait_for(lambda: store.slack_installation("TA") is None)
    slack.add_workspace("code-a2", "TA", "Lab A", TOKEN_A2)
    assert (await install(bot, "code-a2"))[0] == 200
    clock.advance(seconds=61)
    assert (await dispatcher.dispatch()).sent == 1
    assert posts(slack)[C_A.channel_id][-1] == TOKEN_A2
