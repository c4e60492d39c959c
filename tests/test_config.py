import pytest

from bot.config import SCHEMA, Secrets, load_config, parse_config
from bot.errors import ConfigError


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.storage_path == "papers-bot.db"
    assert config.sources["huggingface"]["base_url"] == "https://huggingface.co"
    assert config.sources["arxiv"]["categories"][0] == "cs.LG"
    assert config.source_file is None


def test_file_values_override_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[storage]\npath = "x.db"\n[sources.huggingface]\nbase_url = "http://127.0.0.1:8000/"\n'
        "interval_minutes = 5\n[sources.arxiv]\nenabled = false\ncategories = [\"cs.CL\"]\n"
    )
    config = load_config(str(path), env={})
    assert config.storage_path == "x.db"
    assert config.sources["huggingface"]["base_url"] == "http://127.0.0.1:8000"
    assert config.sources["huggingface"].interval_minutes == 5.0
    assert config.sources["arxiv"].enabled is False and config.sources["arxiv"]["categories"] == ("cs.CL",)


def test_config_file_is_found_by_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[storage]\npath = "cwd.db"\n')
    other = tmp_path / "other.toml"
    other.write_text('[storage]\npath = "env.db"\n')
    assert load_config(None, env={}).storage_path == "cwd.db"
    assert load_config(None, env={"PAPERS_BOT_CONFIG": str(other)}).storage_path == "env.db"
    assert load_config(str(other), env={"PAPERS_BOT_CONFIG": "nope.toml"}).storage_path == "env.db"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"storage": {"pth": "x"}}, "unknown key 'pth' in [storage]"),
        ({"storrage": {"path": "x"}}, "unknown section [storrage]"),
        ({"sources": {"huggingface": {"interval_minutes": "5"}}},
         "[sources.huggingface] interval_minutes must be a float"),
        ({"sources": {"huggingface": {"enabled": "yes"}}}, "[sources.huggingface] enabled must be a bool"),
        ({"sources": {"arxiv": {"interval_minutes": 0}}}, "must be greater than 0"),
        ({"sources": {"arxiv": {"categories": ["cs.LG", "not a cat"]}}}, "not arXiv categories"),
        ({"sources": {"arxiv": {"categories": []}}}, "at least one"),
        ({"sources": {"huggingface": {"base_url": "ftp://x"}}}, "http:// or https:// URL"),
        ({"limits": {"max_subscriptions_per_channel": True}}, "must be an int, got bool"),
        ({"sourcs": {}}, "unknown section [sourcs]"),  # an empty table of a mistyped name, too
        ({"delivery": {"admin_channel": "discord:ops"}}, "must be like slack:C123, discord:123 or console:ops"),
        ({"sources": {"huggingfac": {}}}, "unknown section [sources.huggingfac]"),
        ({"logging": {"level": "LOUD"}}, "must be one of"),
        ({"version": 2}, "unknown key 'version'"),
        ({"matching": {"worker_process": "yes"}}, '[matching] worker_process must be true, false or "auto"'),
        ({"discord": {"gateway_url": "https://gateway.discord.gg"}},
         "[discord] gateway_url must be a ws:// or wss:// URL"),
    ],
)
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data, Secrets({}))
    assert message in str(err.value)


def test_secrets_in_the_file_are_refused():
    with pytest.raises(ConfigError, match="secrets are never read from the config file"):
        parse_config({"slack": {"bot_token": "xoxb-123"}}, Secrets({}))


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\npath=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad), env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.toml"), env={})


def test_secrets_come_from_the_environment_and_never_show_in_repr():
    secrets = Secrets.from_env({"SLACK_BOT_TOKEN": "xoxb-very-secret", "UNRELATED": "x"})
    assert secrets.get("SLACK_BOT_TOKEN") == "xoxb-very-secret"
    config = parse_config({}, secrets)
    assert "xoxb-very-secret" not in repr(config)
    assert "SLACK_BOT_TOKEN" in repr(config)


def test_schema_defaults_are_valid():
    # Every default must pass its own check: the built-in config is usable as-is.
    data = {}
    for section, keys in SCHEMA.items():
        node = data
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update({key: spec[1] for key, spec in keys.items()})
    assert parse_config(data, Secrets({})).log_level == "INFO"


def test_discords_global_share_reaches_the_adapter_and_is_bounded():
    from bot.adapters import build_adapters

    config = parse_config({"discord": {"requests_per_second": 25}}, Secrets({"DISCORD_TOKEN": "discord-test-token"}))
    assert build_adapters(config)["discord"].global_limit == (25, 1.0)
    with pytest.raises(ConfigError, match="requests_per_second.*must be from 1 to 50"):
        parse_config({"discord": {"requests_per_second": 60}})


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_the_worker_process_is_chosen_by_the_subscriptions_found_unless_set(value):
    assert parse_config({}, Secrets({})).match_worker == "auto"
    assert parse_config({"matching": {"worker_process": value}}, Secrets({})).match_worker is value
