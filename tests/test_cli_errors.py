"""Every failure of the `styleq` command is one clear line and a non-zero exit: the real entry point, as a user runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def styleq(*arguments: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the installed `styleq` console script as a user would."""
    return subprocess.run([*STYLEQ, *arguments], env=environment, capture_output=True, text=True, timeout=120)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *fragments: str, status: int = 1) -> None:
    """The command failed with `status` and said why on exactly one line of standard error, with no traceback."""
    lines = result.stderr.strip().splitlines()
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


@pytest.fixture(params=["sqlite", "postgres"])
def unmigrated_database(request, tmp_path) -> Iterator[str]:
    """A database no one has run `styleq db upgrade` on: a new SQLite file, or a new Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.mark.parametrize("command", [*DATABASE_COMMANDS, ["db", "upgrade"]], ids=" ".join)
def test_a_database_that_cannot_be_reached_is_one_line_naming_it_without_its_password(environment, command):
    environment["STYLEQ_DATABASE_URL"] = f"postgresql+psycopg://styleq:hunter2@127.0.0.1:{free_port()}/styleq"

    result = styleq(*command, environment=environment)

    assert_one_line_failure(result, "cannot use the database postgresql+psycopg://styleq:***@127.0.0.1", "Connection refused")
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_database_without_the_schema_is_one_line_saying_to_migrate_it(environment, unmigrated_database, command):
    environment["STYLEQ_DATABASE_URL"] = unmigrated_database

    result = styleq(*command, environment=environment)

    assert_one_line_failure(result, "has no styleq tables yet", "`styleq db upgrade`")
    # `keys create` fails before it makes a key: neither the key nor its hash is anywhere.
    assert "sq_" not in result.stdout and not HEX_DIGEST.search(result.stdout + result.stderr)


def test_a_database_url_without_its_driver_is_one_line(environment):
    environment["STYLEQ_DATABASE_URL"] = "mysql://styleq@127.0.0.1/styleq"

    assert_one_line_failure(styleq("keys", "list", environment=environment), "STYLEQ_DATABASE_URL is not a database URL styleq can use")


def test_submit_to_something_that_is_not_a_url_is_refused_before_uploading(environment, images_dir):
    result = styleq(
        "submit",
        str(images_dir / "rainier.jpg"),
        str(images_dir / "autumn-oak.jpg"),
        "--url",
        "notaurl",
        "--key",
        "sq_x",
        environment=environment,
    )

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Error: Invalid value for '--url': 'notaurl' is not an http:// or https:// URL" in result.stderr


def test_submit_to_an_api_that_is_not_running_is_one_line(environment, images_dir):
    url = f"http://127.0.0.1:{free_port()}"

    result = styleq(
        "submit",
        str(images_dir / "rainier.jpg"),
        str(images_dir / "autumn-oak.jpg"),
        "--url",
        url,
        "--key",
        "sq_x",
        environment=environment,
    )

    assert_one_line_failure(result, f"cannot reach the styleq API at {url}")


def test_transfer_of_a_missing_file_names_it_without_a_traceback(environment, images_dir, tmp_path):
    result = styleq(
        "transfer",
        str(tmp_path / "missing.jpg"),
        str(images_dir / "autumn-oak.jpg"),
        "-o",
        str(tmp_path / "out.png"),
        environment=environment,
    )

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Error: Invalid value for 'CONTENT'" in result.stderr and "missing.jpg" in result.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is installed here: GPU 0 may exist")
@pytest.mark.parametrize("command", [["worker", "--gpus", "0"], ["up", "--gpus", "0", "--port", "1"]], ids=" ".join)
def test_a_gpu_this_machine_does_not_have_is_refused_in_one_line(environment, command, tmp_path):
    result = styleq(*command, environment=environment)

    assert_one_line_failure(result, "--gpus 0: nvidia-smi lists no GPU on this machine", "--gpus none")
    assert not (tmp_path / "data").exists(), "`styleq up` refuses before it sets anything up"
