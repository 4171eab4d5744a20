"""docs/OPERATIONS.md, followed literally, works: its settings table is the settings object's, and its commands run.

Every ```sh block of the guide is run here, in order, with bash, against a deployment made for the test
(Postgres, a data directory with its SQLite database and secret key, storage with files in it), unless an
HTML comment `<!-- not run here: REASON -->` stands on the line before it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.settings import Settings
from tests.services import fresh_postgres_database

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "OPERATIONS.md"
BLOCK = re.compile(r"(?:^(?P<mark><!--.*?-->)\n)?^```(?P<language>\w*)\n(?P<body>.*?)^```$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run here: (?P<reason>\S.*\S) -->")


def blocks(language: str) -> list[tuple[str | None, str]]:
    """Return the guide's fenced blocks in `language`, each with the HTML comment on the line before it."""
    return [(match["mark"], match["body"]) for match in BLOCK.finditer(GUIDE.read_text()) if match["language"] == language]


def settings_table() -> dict[str, str]:
    """Return the guide's "Every setting" table: variable to its default column."""
    section = GUIDE.read_text().split("## Every setting", 1)[1]
    return {match[1]: match[2].strip() for match in re.finditer(r"^\| `(STYLEQ_[A-Z0-9_]+)` \|([^|]*)\|", section, re.M)}


def test_the_settings_table_lists_every_setting_and_nothing_else():
    documented = set(settings_table())
    fields = {f"STYLEQ_{name.upper()}" for name in Settings.model_fields}

    assert sorted(fields - documented) == [], "settings missing from the guide's table"
    assert sorted(documented - fields) == [], "the guide's table names variables no setting reads"


def test_the_settings_table_gives_each_default():
    table = settings_table()
    for name, field in Settings.model_fields.items():
        variable, default, value = f"STYLEQ_{name.upper()}", table[f"STYLEQ_{name.upper()}"], field.default
        if field.default_factory is not None:
            assert "`~/" in default, f"{variable}: {default} (computed per user: say where)"
        elif value is None or value == ():
            assert default.startswith("unset"), f"{variable}: {default} (default unset)"
        elif isinstance(value, bool):
            assert default.startswith(f"`{str(value).lower()}`"), f"{variable}: {default} (default {value})"
        elif isinstance(value, tuple):
            # Lists of numbers are written as their variable takes them: comma-separated.
            assert default.startswith(f"`{','.join(f'{item:g}' for item in value)}`"), f"{variable}: {default} (default {value})"
        elif isinstance(value, float) and value.is_integer():
            assert default.startswith(f"`{int(value)}`"), f"{variable}: {default} (default {value})"
        else:
            assert default.startswith(f"`{value}`"), f"{variable}: {default} (default {value})"


def test_blocks_not_run_here_say_why():
    for mark, _body in blocks("sh"):
        if mark is not None and "not run" in mark:
            assert NOT_RUN.fullmatch(mark), f"say why a block is not run: {mark}"


def test_the_alert_rules_and_the_log_line_parse():
    (rules,) = [yaml.safe_load(body) for _, body in blocks("yaml") if "alert:" in body]
    for rule in rules["groups"][0]["rules"]:
        assert rule["alert"] and rule["expr"], rule
    for _, body in blocks("json"):
        assert json.loads(body)["logger"] == "gunicorn.access"


@pytest.mark.timeout(300)
def test_every_command_block_of_the_guide_runs(tmp_path):
    data_dir, storage = tmp_path / "data", tmp_path / "storage"
    storage.mkdir()
    data_dir.mkdir()
    (storage / "ab" / "upload.png").parent.mkdir()
    (storage / "ab" / "upload.png").write_bytes(b"an upload")
    (storage / "ab" / ".upload.png.partial").write_bytes(b"half a file")
    with fresh_postgres_database() as database_url:
        upgrade_database(database_url)
        environment = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path / "home"),
            "STYLEQ_DATA_DIR": str(data_dir),
            "STYLEQ_STORAGE_DIR": str(storage),
            "STYLEQ_DATABASE_URL": database_url,
            "STYLEQ_LOG_FORMAT": "text",
        }
        # The default SQLite database beside it, and the secret key that making the first key leaves in the data
        # directory (none is set): made here as `styleq keys create --name operator` makes it, without a process.
        from styleq.cli.service import make_key_with_webhook_secret

        upgrade_database(f"sqlite:///{data_dir / 'styleq.db'}")
        make_key_with_webhook_secret(
            Settings(data_dir=data_dir, database_url=database_url, storage_dir=storage, secret_key=None), "operator"
        )
        assert (data_dir / "secret-key").is_file()

        ran = 0
        for mark, body in blocks("sh"):
            if mark is not None and NOT_RUN.fullmatch(mark):
                continue
            said = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", body], env=environment, capture_output=True, text=True, cwd=tmp_path, timeout=120
            )
            assert said.returncode == 0, f"this block of the guide failed:\n{body}\n{said.stdout}\n{said.stderr}"
            ran += 1

    assert ran >= 6
    backup = tmp_path / "backup"
    assert (backup / "secret-key").read_text() == (data_dir / "secret-key").read_text().strip() + "\n" or (
        backup / "secret-key"
    ).read_text().strip() == (data_dir / "secret-key").read_text().strip()
    assert oct((backup / "secret-key").stat().st_mode & 0o777) == "0o600"
    assert (backup / "styleq.dump").stat().st_size > 0
    tables = subprocess.run(["sqlite3", str(backup / "styleq.db"), ".tables"], capture_output=True, text=True)
    assert "jobs" in tables.stdout
    assert (backup / "storage" / "ab" / "upload.png").read_bytes() == b"an upload"
    assert not (backup / "storage" / "ab" / ".upload.png.partial").exists()


def test_the_guide_points_copied_workers_at_their_own_name():
    text = " ".join(GUIDE.read_text().split())
    assert "`HOSTNAME_NODE`" in text and "Workers do not use it" not in text
    assert "'DATABASE_URL'" not in text
