"""Every failure of the `styleq` command is one clear line and a non-zero exit.

Most cases run the command group in this process (click's CliRunner), where what a user would see as a traceback is
any exception but click's SystemExit. The last tests run the real entry point, the installed console script in a
process of its own, as a user runs it: a database it cannot reach (exit 1, with a password to hide), a command's own
refusal before it starts anything (`styleq up`), and a value click refuses (exit 2).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from styleq.cli import main
from tests.services import free_port, fresh_postgres_database

STYLEQ = [str(Path(sys.executable).with_name("styleq"))]
# What a SHA-256 key hash (or any other 64-hex-digit secret) looks like in text.
HEX_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
DATABASE_COMMANDS = [
    ["keys", "list"],
    ["keys", "create", "--name", "ci"],
    ["keys", "revoke", "1"],
    ["keys", "rotate-webhook-secret", "1"],
    ["gc"],
]
NO_GPU_HERE = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is installed here: GPU 0 may exist")


@dataclass
class Outcome:
    """What one `styleq` command did: its exit status and output, and the exception it let out (None: none)."""

    returncode: int
    stdout: str
    stderr: str
    unhandled: BaseException | None = None


@pytest.fixture
def styleq() -> Iterator:
    """Run `styleq ARGS` in this process with the environment given; leave logging as it was (the command sets it up)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*arguments: str, environment: dict[str, str]) -> Outcome:
        unset: dict[str, str | None] = {name: None for name in os.environ if name not in environment}
        result = CliRunner().invoke(main, list(arguments), env={**unset, **environment})
        # click ends a clean failure with SystemExit; anything else would be a traceback in a terminal.
        unhandled = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr, unhandled)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def installed_styleq(*arguments: str, environment: dict[str, str]) -> Outcome:
    """Run the installed `styleq` console script as a user would."""
    result = subprocess.run([*STYLEQ, *arguments], env=environment, capture_output=True, text=True, timeout=120)
    return Outcome(result.returncode, result.stdout, result.stderr)


def assert_one_line_failure(result: Outcome, *fragments: str, status: int = 1) -> None:
    """The command failed with `status` and said why on exactly one line of standard error, with no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.unhandled is None, repr(result.unhandled)
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def environment(tmp_path) -> dict[str, str]:
    """A user's environment with a fresh data directory, text log lines and no styleq settings of the test run's own."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("STYLEQ_")}
    return {
        **environment,
        "STYLEQ_DATA_DIR": str(tmp_path / "data"),
        "STYLEQ_MODEL_DIR": str(tmp_path / "models"),
        "STYLEQ_LOG_FORMAT": "text",
    }


def unreachable_database() -> str:
    return f"postgresql+psycopg://styleq:hunter2@127.0.0.1:{free_port()}/styleq"


@pytest.fixture(scope="module")
def unmigrated_postgres() -> Iterator[str]:
    """A new Postgres database for this module's tests, each of which leaves it as empty as it found it."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def unmigrated_database(request, tmp_path) -> Iterator[str]:
    """A database no one has run `styleq db upgrade` on: a new SQLite file, or a Postgres database with no tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = request.getfixturevalue("unmigrated_postgres")
    yield url
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    assert tables == [], "a command that fails on a database without the schema made tables in it"


# `keys list` is the installed command's, below.
@pytest.mark.parametrize("command", [*DATABASE_COMMANDS[1:], ["db", "upgrade"]], ids=" ".join)
def test_a_database_that_cannot_be_reached_is_one_line_naming_it_without_its_password(styleq, environment, command):
    environment["STYLEQ_DATABASE_URL"] = unreachable_database()

    result = styleq(*command, environment=environment)

    assert_one_line_failure(result, "cannot use the database postgresql+psycopg://styleq:***@127.0.0.1", "Connection refused")
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_database_without_the_schema_is_one_line_saying_to_migrate_it(styleq, environment, unmigrated_database, command):
    environment["STYLEQ_DATABASE_URL"] = unmigrated_database

    result = styleq(*command, environment=environment)

    assert_one_line_failure(result, "has no styleq tables yet", "`styleq db upgrade`")
    # `keys create` fails before it makes a key: neither the key nor its hash is anywhere.
    assert "sq_" not in result.stdout and not HEX_DIGEST.search(result.stdout + result.stderr)


def test_a_database_url_without_its_driver_is_one_line(styleq, environment):
    environment["STYLEQ_DATABASE_URL"] = "mysql://styleq@127.0.0.1/styleq"

    assert_one_line_failure(styleq("keys", "list", environment=environment), "STYLEQ_DATABASE_URL is not a database URL styleq can use")


def submit_to(url: str, images_dir: Path) -> list[str]:
    return ["submit", str(images_dir / "rainier.jpg"), str(images_dir / "autumn-oak.jpg"), "--url", url, "--key", "sq_x"]


def assert_not_a_url_refused(result: Outcome) -> None:
    assert result.returncode == 2 and result.unhandled is None and "Traceback" not in result.stderr
    assert "Error: Invalid value for '--url': 'notaurl' is not an http:// or https:// URL" in result.stderr


def test_submit_to_an_api_that_is_not_running_is_one_line(styleq, environment, images_dir):
    url = f"http://127.0.0.1:{free_port()}"

    result = styleq(*submit_to(url, images_dir), environment=environment)

    assert_one_line_failure(result, f"cannot reach the styleq API at {url}")


def test_transfer_of_a_missing_file_names_it_without_a_traceback(styleq, environment, images_dir, tmp_path):
    result = styleq(
        "transfer",
        str(tmp_path / "missing.jpg"),
        str(images_dir / "autumn-oak.jpg"),
        "-o",
        str(tmp_path / "out.png"),
        environment=environment,
    )

    assert result.returncode == 2 and result.unhandled is None and "Traceback" not in result.stderr
    assert "Error: Invalid value for 'CONTENT'" in result.stderr and "missing.jpg" in result.stderr


def assert_no_gpu_0(result: Outcome, tmp_path: Path) -> None:
    assert_one_line_failure(result, "--gpus 0: nvidia-smi lists no GPU on this machine", "--gpus none")
    assert not (tmp_path / "data").exists(), "`styleq up` refuses before it sets anything up"


@NO_GPU_HERE
@pytest.mark.timeout(120)  # were the refusal gone, the worker would run here until stopped
def test_a_gpu_this_machine_does_not_have_is_refused_in_one_line(styleq, environment, tmp_path):
    assert_no_gpu_0(styleq("worker", "--gpus", "0", environment=environment), tmp_path)


# The installed console script, as a user runs it: an exception let out would be a traceback on standard error.


def test_a_database_that_cannot_be_reached_is_one_line_without_its_password_as_a_user_runs_it(environment):
    environment["STYLEQ_DATABASE_URL"] = unreachable_database()

    result = installed_styleq("keys", "list", environment=environment)

    assert_one_line_failure(result, "cannot use the database postgresql+psycopg://styleq:***@127.0.0.1", "Connection refused")
    assert "hunter2" not in result.stderr


@NO_GPU_HERE
def test_a_gpu_this_machine_does_not_have_is_refused_by_up_in_one_line_as_a_user_runs_it(environment, tmp_path):
    assert_no_gpu_0(installed_styleq("up", "--gpus", "0", "--port", "1", environment=environment), tmp_path)


def test_submit_to_something_that_is_not_a_url_is_refused_before_uploading_as_a_user_runs_it(environment, images_dir):
    assert_not_a_url_refused(installed_styleq(*submit_to("notaurl", images_dir), environment=environment))
