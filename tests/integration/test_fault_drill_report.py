"""The fault drills' measured times reach the run's printed summary, in one process and under xdist as `make test` runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Drills shaped like the fault drills, with their `record` fixture (tests/integration/drills.py) and no services:
# one keeps its promise, one breaks it (its time is printed all the same), and one records a time in a fixture's teardown.
DRILLS = """
import pytest

from tests.integration.drills import record


@pytest.fixture
def timed_teardown(record_property):
    yield
    record_property("drill_time", ("a fault timed as its fixture finishes", 3.5, 20))


def test_a_drill_that_keeps_its_promise(record):
    record("a fault recovered from in time", 1.5, 10)


def test_a_drill_that_breaks_its_promise(record):
    record("a fault recovered from too slowly", 12.5, 10)


def test_a_drill_timed_at_teardown(timed_teardown):
    pass
"""
# The suite's own reporting hooks, as tests/conftest.py defines them.
CONFTEST = "from tests.conftest import pytest_runtest_logreport, pytest_terminal_summary\n"


@pytest.mark.parametrize("processes", [[], ["-n", "2", "--dist", "loadgroup"]], ids=["one-process", "xdist"])
def test_the_run_prints_each_drill_s_measured_time_in_its_summary(tmp_path, processes):
    (tmp_path / "test_drills.py").write_text(DRILLS)
    (tmp_path / "conftest.py").write_text(CONFTEST)

    # With the suite's configuration (its markers, warnings as errors, the repository on the path), rooted here.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(REPO / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            *processes,
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert "2 passed, 1 failed" in run.stdout or "1 failed, 2 passed" in run.stdout, run.stdout + run.stderr
    assert "fault drills: measured recovery" in run.stdout, run.stdout
    summary = run.stdout.split("fault drills: measured recovery", 1)[1]
    for fault, seconds, promise in [
        ("a fault recovered from in time", "1.5", "10"),
        ("a fault recovered from too slowly", "12.5", "10"),
        ("a fault timed as its fixture finishes", "3.5", "20"),
    ]:
        assert re.search(rf"{fault}\s+{re.escape(seconds)} s\s+\(promised <= {promise} s\)", summary), summary
