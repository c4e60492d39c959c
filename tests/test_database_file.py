"""The database file: deleted or replaced under a running bot, damaged or read-only at start."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli import main
from bot.errors import StorageError
from storage import Store

from .fakes import hf_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_file(tmp_path, server):
    server.route("/api/daily_papers", hf_json())
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\npath = "{tmp_path / "data" / "bot.db"}"\n'
        f'[sources.huggingface]\nbase_url = "{server.url}"\n'
        "[sources.arxiv]\nenabled = false\n"
        "[delivery]\nsweep_seconds = 1\n"
    )
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "PAPERS_BOT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _polled(db: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM source_state WHERE last_success IS NOT NULL").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _run_until_polled(config: Path, db: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config), "run"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not _polled(db) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None and _polled(db), "the bot did not start polling"
    return proc


def _stopped(proc: subprocess.Popen, within: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the bot kept running for {within} s")
    return proc.returncode, err, time.monotonic() - started


def test_run_stops_with_one_line_when_its_database_file_is_deleted(config_file, tmp_path):
    db = tmp_path / "data" / "bot.db"
    proc = _run_until_polled(config_file, db)
    db.unlink()
    code, err, _ = _stopped(proc, within=10)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"papers-bot: the database file {db} was deleted while papers-bot was running; "
        "restore it (or a backup) and start papers-bot again")
    assert "Traceback" not in err


def test_run_stops_when_its_database_file_is_replaced(config_file, tmp_path):
    db = tmp_path / "data" / "bot.db"
    proc = _run_until_polled(config_file, db)
    shutil.copy(db, tmp_path / "other.db")
    os.replace(tmp_path / "other.db", db)  # say, a backup restored over it while the bot runs
    code, err, _ = _stopped(proc, within=10)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"papers-bot: the database file {db} was replaced by another file")
    assert "Traceback" not in err


def test_check_file_passes_while_the_file_is_the_one_opened(tmp_path):
    store = Store(tmp_path / "bot.db")
    store.check_file()
    (tmp_path / "bot.db").unlink()
    with pytest.raises(StorageError, match="was deleted"):
        store.check_file()
    store.close()


def _damaged(db: Path, how: str) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    if how == "random bytes":
        db.write_bytes(os.urandom(64 * 1024))
        return
    Store(db).close()  # the schema alone is a few dozen pages
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)


IMPORT_FILE = '[[channel]]\nchannel = "console:ml"\nsubscriptions = ["diffusion"]\n'

ACTIONS = [
    ["status"],
    ["poll"],
    ["command", "--channel", "console:ml", "--user", "u1", "list"],
    ["command", "--channel", "console:ml", "--user", "u1", "subscribe diffusion"],
    ["export"],
    ["import", "IMPORT"],
    ["backfill", "--days", "1"],
    ["run"],
]


def _every_action_refuses(capsys, config: Path, tmp_path: Path, expected: str) -> None:
    (tmp_path / "import.toml").write_text(IMPORT_FILE)
    for action in ACTIONS:
        args = [str(tmp_path / "import.toml") if a == "IMPORT" else a for a in action]
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 1, (action, captured)
        assert len(lines) == 1 and lines[0].startswith("papers-bot: ") and expected in lines[0], (action, lines)
        assert captured.out == "" and "Traceback" not in captured.err


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_a_damaged_database_stops_every_command_with_one_line(capsys, config_file, tmp_path, how):
    db = tmp_path / "data" / "bot.db"
    _damaged(db, how)
    before = db.read_bytes()
    _every_action_refuses(capsys, config_file, tmp_path,
                          f"the database file {db} is damaged or not a papers-bot database")
    assert db.read_bytes() == before  # nothing written over it


def test_a_damaged_database_stops_run_as_a_process(config_file, tmp_path):
    db = tmp_path / "data" / "bot.db"
    _damaged(db, "random bytes")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config_file), "run"], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, err, _ = _stopped(proc, within=20)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "is damaged" in err and "Traceback" not in err


def _make_read_only(path: Path):
    """Really read-only, also for root (who ignores permission bits): the immutable
    attribute where the file system has one, else chmod. Returns the undo."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"running as root and cannot make {path} immutable: {done.stderr.decode().strip()}")
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    return lambda: path.chmod(mode)


def test_a_read_only_database_file_stops_every_command_with_one_line(capsys, config_file, tmp_path):
    db = tmp_path / "data" / "bot.db"
    Store(db).close()
    undo = _make_read_only(db)
    try:
        with pytest.raises(OSError):
            db.open("ab").close()  # the file system says so too, whoever runs the test
        _every_action_refuses(capsys, config_file, tmp_path, f"the database file {db} is read-only")
    finally:
        undo()


def test_a_read_only_directory_stops_every_command_with_one_line(capsys, config_file, tmp_path):
    db = tmp_path / "data" / "bot.db"
    Store(db).close()  # closed cleanly: no -wal or -shm file left, and none can be made now
    undo = _make_read_only(db.parent)
    try:
        _every_action_refuses(capsys, config_file, tmp_path, f"cannot open the database file {db}")
    finally:
        undo()
