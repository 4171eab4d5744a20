"""The runner owns a job's story on a worker: claim, checkpoints, previews, finish, fail, resume after a lost worker."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from PIL import Image
from sqlalchemy import select

from shared import jobs
from shared.db import make_engine, make_session_factory, session_scope
from shared.keys import create_api_key
from shared.migrate import upgrade_database
from shared.models import Checkpoint, Job, utcnow
from shared.params import resolve_params
from shared.settings import Settings
from shared.storage import Storage
from tests.services import fresh_postgres_database
from worker.engine import Backbone, Control, get_convention, transfer
from worker.runner import JobRunner, ModelCache

PARAMS = {"size": [24, 32], "iterations": 40}


class RandomModels(ModelCache):
    """Backbones on random VGG16 weights: the arithmetic is real, the download is not needed."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__(model_dir=None, device=torch.device("cpu"))
        self.state_dict = state_dict

    def backbone(self, params):
        return Backbone("vgg16", self.state_dict, get_convention("caffe"), params.layers)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        upgrade_database(url)
        yield url
        return
    with fresh_postgres_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def factory(database):
    engine = make_engine(database)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(tmp_path / "storage")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, preview_every=2, lease_seconds=30)


def submit(factory, storage: Storage, images_dir: Path, **overrides) -> str:
    """Store the seed's pair of images and queue a job for them, as the API does; return its id."""
    content = storage.save_upload((images_dir / "rainier.jpg").read_bytes())
    style = storage.save_upload((images_dir / "autumn-oak.jpg").read_bytes())
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice")
        job, _ = jobs.create_job(session, owner, resolve_params({**PARAMS, **overrides}), content, style)
        return job.id


def make_runner(settings, factory, storage, vgg16_random, worker="gpu0@host/1") -> JobRunner:
    return JobRunner(settings, factory, storage, worker=worker, gpu="cpu", device=torch.device("cpu"), models=RandomModels(vgg16_random))


def picture(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def load(factory, job_id) -> Job:
    with session_scope(factory) as session:
        return session.get(Job, job_id)


def iterations(factory, job_id) -> list[int]:
    with session_scope(factory) as session:
        return list(session.scalars(select(Checkpoint.iteration).where(Checkpoint.job_id == job_id).order_by(Checkpoint.iteration)))


def test_a_queued_job_runs_to_success_with_checkpoints_preview_and_result(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)

    outcome = make_runner(settings, factory, storage, vgg16_random).run(job_id)

    job = load(factory, job_id)
    assert outcome == "succeeded" and job.status == "succeeded"
    assert iterations(factory, job_id) == [10, 20, 30, 40]
    assert (job.iteration, job.attempts, job.worker, job.gpu) == (40, 1, "gpu0@host/1", "cpu")
    assert job.started_at <= job.finished_at and job.total_loss > 0 and job.has_preview
    assert picture(storage.job_path(job_id, "result.png")).size == (32, 24)
    assert picture(storage.job_path(job_id, "preview.jpg")).format == "JPEG"
    assert not storage.job_path(job_id, "state.pt").exists()


def test_a_job_another_worker_holds_is_skipped(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)
    with session_scope(factory) as session:
        assert jobs.claim_job(session, job_id, "gpu1@other/9", "cpu", lease_seconds=30) is not None

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "skipped"
    assert load(factory, job_id).worker == "gpu1@other/9"


class CancelOnFirstPreview(Storage):
    """Storage that, when the first preview lands, asks for the job's cancellation as a client would."""

    factory = None

    def write_job_file(self, job_id, name, data):
        if name == "preview.jpg":
            with session_scope(self.factory) as session:
                jobs.request_cancel(session, session.get(Job, job_id))
        return super().write_job_file(job_id, name, data)


def test_cancel_requested_while_running_stops_at_the_next_checkpoint(settings, factory, storage, images_dir, vgg16_random):
    canceling = CancelOnFirstPreview(storage.root)
    canceling.factory = factory
    job_id = submit(factory, canceling, images_dir, iterations=400)

    outcome = make_runner(settings, factory, canceling, vgg16_random).run(job_id)

    job = load(factory, job_id)
    assert outcome == "canceled" and job.status == "canceled" and job.iteration == 10
    assert not canceling.job_path(job_id, "result.png").exists()


def test_a_job_of_a_lost_worker_resumes_from_its_saved_state(settings, factory, storage, images_dir, vgg16_random, rainier, autumn_oak):
    job_id = submit(factory, storage, images_dir)
    params = resolve_params(PARAMS)
    backbone = RandomModels(vgg16_random).backbone(params)
    # The lost worker got to iteration 20, saved its state, and stopped answering.
    first_half = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda c: Control.STOP if c.iteration == 20 else None)
    state_path = storage.job_path(job_id, "state.pt")
    state_path.parent.mkdir(parents=True)
    torch.save(first_half.state.to_dict(), state_path)
    with session_scope(factory) as session:
        jobs.claim_job(session, job_id, "gpu0@lost/1", "cpu", lease_seconds=30)
        session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=31)

    outcome = make_runner(settings, factory, storage, vgg16_random, worker="gpu1@host/2").run(job_id)

    job = load(factory, job_id)
    assert outcome == "succeeded" and job.attempts == 2 and job.worker == "gpu1@host/2"
    assert iterations(factory, job_id) == [30, 40]
    whole = transfer(rainier, autumn_oak, params, backbone=backbone)
    assert picture(storage.job_path(job_id, "result.png")).tobytes() == whole.image.tobytes()


def test_missing_input_fails_with_a_message_the_user_can_act_on(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)
    storage.upload_path(load(factory, job_id).style_sha256).unlink()

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "failed"

    job = load(factory, job_id)
    assert job.status == "failed" and job.error_code == "input_missing" and "style image" in job.error_message


class BrokenModels(RandomModels):
    def backbone(self, params):
        raise RuntimeError("CUDA error: device-side assert triggered")


def test_an_unexpected_crash_is_recorded_then_raised(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)
    runner = JobRunner(settings, factory, storage, worker="w/1", gpu="cpu", device=torch.device("cpu"), models=BrokenModels(vgg16_random))

    with pytest.raises(RuntimeError, match="device-side assert"):
        runner.run(job_id)

    job = load(factory, job_id)
    assert job.status == "failed" and job.error_code == "internal_error" and "device-side assert" in job.error_message


def test_sweep_requeues_lost_jobs_gives_up_after_max_attempts_and_resends_forgotten_ones(factory, storage, images_dir):
    lost, exhausted, canceled, forgotten, fresh = (submit(factory, storage, images_dir) for _ in range(5))
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(factory) as session:
        for job_id in (lost, exhausted, canceled):
            jobs.claim_job(session, job_id, "gpu0@dead/1", "cpu", lease_seconds=30)
            session.get(Job, job_id).heartbeat_at = long_ago
        session.get(Job, exhausted).attempts = 3
        session.get(Job, canceled).cancel_requested = True
        session.get(Job, forgotten).created_at = long_ago
        jobs.mark_enqueued(session, fresh)

    with session_scope(factory) as session:
        resend = jobs.sweep(session, lease_seconds=30, requeue_after_seconds=600, max_attempts=3)

    assert resend == sorted([lost, forgotten])
    assert [load(factory, job_id).status for job_id in (lost, exhausted, canceled, forgotten, fresh)] == [
        "queued", "failed", "canceled", "queued", "queued",
    ]
    assert load(factory, exhausted).error_code == "worker_lost"
