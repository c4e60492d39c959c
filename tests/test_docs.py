"""The docs stay true: every command in the README, every config key in the example."""

import re
import tomllib
from pathlib import Path

import handlers
from bot.config import SCHEMA, Secrets, parse_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_chat_command_is_documented_in_the_readme():
    for cmd in handlers.COMMANDS.values():
        assert f"| `{cmd.usage}` |" in README, f"README lacks a row for `{cmd.usage}`"


def test_every_cli_action_is_documented():
    for action in ("run", "poll", "command --channel REF --user ID", "status", "backfill --days N", "export",
                   "import FILE"):
        assert f"`papers-bot {action}" in README


def test_every_config_key_is_in_the_example_with_its_default():
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    for section, keys in SCHEMA.items():
        node = example
        for part in section.split("."):
            assert part in node, f"config.example.toml lacks [{section}]"
            node = node[part]
        for key, (_type, default, _check) in keys.items():
            assert key in node, f"config.example.toml lacks [{section}] {key}"
            assert node[key] == default, f"[{section}] {key}: example {node[key]!r} != default {default!r}"
    parse_config(example, Secrets({}))  # and the example is a valid config


def test_readme_quick_start_has_two_commands_and_ci_runs_the_test_one():
    start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", start, re.DOTALL)
    assert len(blocks) == 2
    run, test = blocks
    assert run.endswith("papers-bot run") and test.endswith("python -m pytest")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines


def test_every_test_named_by_a_promise_exists():
    promises = README.split("## What the bot promises", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", promises)
    assert len(named) >= 10
    for path, name in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), \
            f"README names {path}::{name}, which is gone"


def test_the_architecture_page_names_only_what_exists():
    """docs/architecture.md names files, modules and values; each must still be there."""
    import importlib

    import bot.models

    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([^`\s]+)`", page))
    paths = {n for n in named if re.fullmatch(r"[\w/]+\.(py|md|toml)", n)}
    paths |= set(re.findall(r"\b((?:bot|handlers|storage|tests|fakes)/[\w/]+\.py)\b", page))
    for path in paths:
        assert (ROOT / path).exists() or (ROOT / "bot" / "adapters" / path).exists(), path
    for dotted in {n for n in named if re.fullmatch(r"(bot|handlers|storage)(\.\w+)+", n)}:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), dotted
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(dotted)
    values = re.search(r"\| seam \|.*?\n\n", page, re.DOTALL)
    assert values
    crossing = [row.split("|")[3] for row in values.group(0).splitlines()[2:] if row.startswith("|")]
    assert len(crossing) == 4
    for name in re.findall(r"`([A-Z]\w+)", " ".join(crossing)):
        known = hasattr(bot.models, name) or name in ("StorageError", "StorageBusy", "SourceError")
        assert known, f"docs/architecture.md names {name}, which bot/models.py does not define"
