"""Under `--dist loadgroup`, the tests of one deployment run on one xdist worker, and each deployment (each backend) is a group of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A project whose conftest takes the grouping hook tests/conftest.py takes (tests/groups.py), with deployment fixtures named as the real ones are.
CONFTEST = """
import pytest

from tests.groups import pytest_collection_modifyitems  # noqa: F401 (the hook under test)


# Module-scoped and defined once for several test modules, as tests/integration's `drill` is: a deployment per module.
@pytest.fixture(scope="module", params=[pytest.param(object(), id="fast")])
def drill(request):
    return request.param
"""
# Two more modules of drills, each taking the conftest's module-scoped fixture.
DRILLS = """
import pytest

@pytest.mark.parametrize("n", range(4))
def test_in_a_drill(drill, n):
    pass
"""
TESTS = """
import pytest

@pytest.fixture(scope="session", params=["embedded", "postgres+redis"])
def service(request):
    return request.param

@pytest.fixture(scope="module", params=[pytest.param(object(), id="fast")])
def drill(request):
    return request.param

@pytest.mark.parametrize("n", range(4))
def test_on_a_service(service, n):
    pass

@pytest.mark.parametrize("n", range(4))
def test_in_a_drill(drill, n):
    pass

@pytest.mark.parametrize("n", range(8))
def test_on_no_deployment(n):
    pass
"""


def test_each_deployment_s_tests_run_on_one_worker_in_a_group_of_their_own(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_deployments.py").write_text(TESTS)
    (tmp_path / "test_worker_drills.py").write_text(DRILLS)
    (tmp_path / "test_server_drills.py").write_text(DRILLS)
    # Only xdist among the installed plugins: the others (schemathesis's, hypothesis's, ...) have no part in grouping,
    # and loading them costs each of the four pytest processes about two seconds of CPU.
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "xdist.plugin",
            "-n",
            "3",
            "--dist",
            "loadgroup",
            "-v",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    # xdist writes a grouped test's group after an '@' in its node id.
    workers: dict[str, set[str]] = defaultdict(set)
    ungrouped = 0
    for worker, node in re.findall(r"^\[(gw\d+)\] \[ *\d+%\] PASSED (\S+)", run.stdout, re.MULTILINE):
        if "@" in node:
            workers[node.rpartition("@")[2]].add(worker)
        else:
            ungrouped += 1
    assert set(workers) == {
        "test_deployments.py::service:embedded",
        "test_deployments.py::service:postgres+redis",
        "test_deployments.py::drill:fast",
        "test_worker_drills.py::drill:fast",
        "test_server_drills.py::drill:fast",
    }, run.stdout
    assert all(len(on) == 1 for on in workers.values()), dict(workers)
    assert ungrouped == 8, run.stdout
