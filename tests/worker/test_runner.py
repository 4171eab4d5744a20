"""The runner owns a job's story on a worker: claim, checkpoints, previews, finish, fail, resume after a lost worker."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from sqlalchemy import select

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.models import Checkpoint, Job, utcnow
from styleq.shared.adapters.outputs import read_metadata
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Storage, StoreUnreachable
from styleq.shared.domain.params import resolve_params
from styleq.shared.service import jobs, leases
from styleq.shared.service.keys import create_api_key
from styleq.worker import liveness
from styleq.worker import runner as runner_module
from styleq.worker.engine import Backbone, Control, get_convention, resolve_precision, transfer
from styleq.worker.model_cache import ModelCache
from styleq.worker.runner import JobRunner, RunOutcome

PARAMS = {"size": [24, 32], "iterations": 40}


class RandomModels(ModelCache):
    """Backbones on random VGG16 weights: the arithmetic is real, the download is not needed."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__(model_dir=None, device=torch.device("cpu"))
        self.state_dict = state_dict

    def backbone(self, params):
        return Backbone("vgg16", self.state_dict, get_convention("caffe"), params.layers)


@pytest.fixture
def database(database_url: str) -> str:
    """An empty, migrated database (tests/conftest.py): a SQLite copy, or the session's Postgres database emptied."""
    return database_url


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
    return Settings(data_dir=tmp_path, preview_every=2, preview_min_seconds=0, lease_seconds=30)


def submit(factory, storage: Storage, images_dir: Path, pictures=("rainier.jpg", "autumn-oak.jpg"), **overrides) -> str:
    """Store a content image and its style images (the seed's pair by default) and queue a job for them, as the API does; return its id."""
    content, *styles = (storage.save_upload((images_dir / name).read_bytes()) for name in pictures)
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="worker-tests")
        job, _ = jobs.create_job(session, owner, resolve_params({**PARAMS, **overrides}), content, styles)
        return job.id


def make_runner(settings, factory, storage, vgg16_random, lease_owner="gpu0@host/1") -> JobRunner:
    name = lease_owner.split("/")[0]
    return JobRunner(
        settings,
        factory,
        storage,
        name=name,
        lease_owner=lease_owner,
        gpu="cpu",
        device=torch.device("cpu"),
        models=RandomModels(vgg16_random),
    )


def picture(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def load(factory, job_id) -> Job:
    with session_scope(factory) as session:
        return session.get_one(Job, job_id)


def iterations(factory, job_id) -> list[int]:
    with session_scope(factory) as session:
        return list(session.scalars(select(Checkpoint.iteration).where(Checkpoint.job_id == job_id).order_by(Checkpoint.iteration)))


def test_a_queued_job_runs_to_success_with_checkpoints_preview_and_result(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)

    outcome = make_runner(settings, factory, storage, vgg16_random).run(job_id)

    job = load(factory, job_id)
    assert outcome == "succeeded" and job.status == "succeeded"
    assert iterations(factory, job_id) == [10, 20, 30, 40]
    assert (job.iteration, job.attempts, job.lease_owner, job.gpu) == (40, 1, "gpu0@host/1", "cpu")
    assert job.started_at <= job.finished_at and job.total_loss > 0 and job.has_preview
    assert picture(storage.job_path(job_id, "result.png")).size == (32, 24)
    assert picture(storage.job_path(job_id, "preview.jpg")).format == "JPEG"
    assert storage.state_path(job_id) is None


class CountingStorage(Storage):
    """Storage that counts the files the worker writes, by name."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: dict[str, int] = {}

    def write_job_file(self, job_id, name, data, **options):
        self.writes[name] = self.writes.get(name, 0) + 1
        return super().write_job_file(job_id, name, data, **options)

    def save_state(self, job_id, iteration, data):
        self.writes["state"] = self.writes.get("state", 0) + 1
        return super().save_state(job_id, iteration, data)


def test_checkpoints_that_come_fast_reach_the_database_together_and_save_states_sparingly(
    tmp_path, factory, images_dir, vgg16_random, monkeypatch
):
    storage = CountingStorage(tmp_path / "storage")
    job_id = submit(factory, storage, images_dir, iterations=60)
    writes: list[list[int]] = []
    real = leases.record_checkpoints

    def recording(session, job_id_, lease_owner, checkpoints, **options):
        writes.append([values["iteration"] for values in checkpoints])
        return real(session, job_id_, lease_owner, checkpoints, **options)

    monkeypatch.setattr(leases, "record_checkpoints", recording)
    # As on a GPU: checkpoints every few milliseconds against an hour's flush and preview intervals.
    settings = Settings(data_dir=tmp_path, preview_every=2, preview_min_seconds=3600, checkpoint_flush_seconds=3600, lease_seconds=30)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "succeeded"

    # The first checkpoint is written at once with the first preview; the rest together at the end, none lost.
    assert writes == [[10], [20, 30, 40, 50, 60]]
    assert iterations(factory, job_id) == [10, 20, 30, 40, 50, 60]
    assert load(factory, job_id).iteration == 60
    assert storage.writes["preview.jpg"] == storage.writes["state"] == 1


def test_the_optimisation_goes_on_while_a_checkpoints_preview_and_state_are_written(
    tmp_path, factory, images_dir, vgg16_random, monkeypatch
):
    storage = Storage(tmp_path / "storage")
    job_id = submit(factory, storage, images_dir)
    # Only the first checkpoint saves (and the last is always recorded), so one write is in flight.
    settings = Settings(data_dir=tmp_path, preview_every=100, preview_min_seconds=0, lease_seconds=30)
    runner = make_runner(settings, factory, storage, vgg16_random)
    two_checkpoints_later = threading.Event()
    record = runner._record_checkpoint

    def watching(member, checkpoint, held):
        if checkpoint.iteration >= 30:
            two_checkpoints_later.set()
        return record(member, checkpoint, held)

    monkeypatch.setattr(runner, "_record_checkpoint", watching)
    save_state = storage.save_state
    held_back: list[tuple[int, bool]] = []

    def slow_disk(job, iteration, data):
        # The first state reaches the disk only once the loop is two checkpoints further: a loop that waited for it
        # would never get there (after 60 s the write goes on, and the test fails instead of hanging).
        if not held_back:
            held_back.append((iteration, two_checkpoints_later.wait(60)))
        return save_state(job, iteration, data)

    monkeypatch.setattr(storage, "save_state", slow_disk)

    assert runner.run(job_id) == "succeeded"

    assert held_back == [(10, True)]
    job = load(factory, job_id)
    # The job's last record names the preview the held-back write left, and the job ended after it.
    assert job.has_preview and (storage.job_dir(job_id) / "preview.jpg").is_file()
    assert storage.state_path(job_id) is None  # a finished job's states are removed, the late one too


def test_a_job_another_worker_holds_is_skipped(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)
    with session_scope(factory) as session:
        assert leases.claim_job(session, job_id, "gpu1@other/9", "cpu", lease_seconds=30) is not None

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "skipped"
    assert load(factory, job_id).lease_owner == "gpu1@other/9"


class CancelOnFirstPreview(Storage):
    """Storage that, when the first preview lands, asks for the job's cancellation as a client would."""

    factory = None

    def write_job_file(self, job_id, name, data, **options):
        if name == "preview.jpg":
            with session_scope(self.factory) as session:
                jobs.request_cancel(session, session.get(Job, job_id))
        return super().write_job_file(job_id, name, data, **options)


def test_cancel_requested_while_running_stops_at_the_next_checkpoint(settings, factory, storage, images_dir, vgg16_random):
    canceling = CancelOnFirstPreview(storage.root)
    canceling.factory = factory
    job_id = submit(factory, canceling, images_dir, iterations=400)

    outcome = make_runner(settings, factory, canceling, vgg16_random).run(job_id)

    job = load(factory, job_id)
    # The preview lands once iteration 10 is recorded; the cancel is seen at the next write, iteration 20's.
    assert outcome == "canceled" and job.status == "canceled" and job.iteration == 20
    assert not canceling.job_path(job_id, "result.png").exists()


def test_a_job_of_a_lost_worker_resumes_from_its_saved_state(settings, factory, storage, images_dir, vgg16_random, rainier, autumn_oak):
    job_id = submit(factory, storage, images_dir)
    params = resolve_params(PARAMS)
    backbone = RandomModels(vgg16_random).backbone(params)
    # The lost worker got to iteration 20, saved its state, and stopped answering.
    first_half = transfer(
        rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda c: Control.STOP if c.iteration == 20 else None
    )
    state_path = storage.job_path(job_id, "state.pt")
    state_path.parent.mkdir(parents=True)
    torch.save(first_half.state.to_dict(), state_path)
    with session_scope(factory) as session:
        leases.claim_job(session, job_id, "gpu0@lost/1", "cpu", lease_seconds=30)
        session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=31)

    outcome = make_runner(settings, factory, storage, vgg16_random, lease_owner="gpu1@host/2").run(job_id)

    job = load(factory, job_id)
    assert outcome == "succeeded" and job.attempts == 2 and job.lease_owner == "gpu1@host/2"
    assert iterations(factory, job_id) == [30, 40]
    # The lost worker died before its database heard of that state: the job still says where it resumed.
    assert job.resumed_iteration == 20
    whole = transfer(rainier, autumn_oak, params, backbone=backbone)
    assert picture(storage.job_path(job_id, "result.png")).tobytes() == whole.image.tobytes()


def test_a_state_saved_before_style_losses_and_formats_existed_still_resumes(
    settings, factory, storage, images_dir, vgg16_random, rainier, autumn_oak
):
    job_id = submit(factory, storage, images_dir)
    params = resolve_params(PARAMS)
    backbone = RandomModels(vgg16_random).backbone(params)
    first_half = transfer(
        rainier, autumn_oak, params, backbone=backbone, on_checkpoint=lambda c: Control.STOP if c.iteration == 20 else None
    )
    state = first_half.state.to_dict()
    state["params"] = {name: value for name, value in state["params"].items() if name not in ("style_loss", "format", "quality")}
    storage.make_job_dir(job_id)
    storage.save_state(job_id, 20, _saved(state))

    outcome = make_runner(settings, factory, storage, vgg16_random).run(job_id)

    assert outcome == "succeeded" and iterations(factory, job_id) == [30, 40]


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_the_result_is_written_in_the_jobs_format_with_its_parameters_inside(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir, iterations=10, format="webp", quality=80)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "succeeded"

    path = storage.job_path(job_id, "result.webp")
    assert picture(path).format == "WEBP" and not storage.job_path(job_id, "result.png").exists()
    metadata = read_metadata(path)
    # The parameters as run: scales "auto" written out as the schedule this size got (one pass).
    ran = resolve_params({**PARAMS, "iterations": 10, "format": "webp", "quality": 80}).with_schedule(32, 24)
    assert ran.scales == (1.0,) and metadata["params"] == ran.to_dict()
    assert metadata["weights"] == "vgg16-caffe"


def test_missing_input_fails_with_a_message_the_user_can_act_on(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)
    storage.upload_path(load(factory, job_id).style_hashes[0]).unlink()

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "failed"

    job = load(factory, job_id)
    assert job.status == "failed" and job.error_code == "input_missing" and "style image" in job.error_message


class BrokenModels(RandomModels):
    def backbone(self, params):
        raise RuntimeError("CUDA error: device-side assert triggered")


def test_an_unexpected_crash_is_recorded_plainly_logged_in_detail_then_raised(settings, factory, storage, images_dir, vgg16_random, caplog):
    job_id = submit(factory, storage, images_dir)
    runner = JobRunner(
        settings, factory, storage, name="w", lease_owner="w/1", gpu="cpu", device=torch.device("cpu"), models=BrokenModels(vgg16_random)
    )

    with pytest.raises(RuntimeError, match="device-side assert"):
        runner.run(job_id)

    job = load(factory, job_id)
    # The user reads a plain account; the operator finds the detail in the log.
    assert (job.status, job.error_code) == ("failed", "internal_error") and "device-side assert" not in job.error_message
    assert "RuntimeError" in job.error_message and "log" in job.error_message
    assert "device-side assert" in caplog.text


# --- batches ---------------------------------------------------------------------------------------

# Three pairs of pictures that all come out 24x32 under PARAMS.
PAIRS = [("rainier.jpg", "autumn-oak.jpg"), ("tubingen.jpg", "starry_night.jpg"), ("shipwreck.jpg", "the_scream.jpg")]


def batch_settings(tmp_path, **overrides) -> Settings:
    return Settings(data_dir=tmp_path, preview_every=2, preview_min_seconds=0, lease_seconds=30, batch_size=3, **overrides)


def alone(images_dir, pictures, vgg16_random, max_pass_pixels=None, **overrides):
    """Return the picture and the loss history the engine makes for one job run by itself."""
    params = resolve_params({**PARAMS, **overrides})
    content, *styles = (Image.open(images_dir / name).convert("RGB") for name in pictures)
    history = []
    result = transfer(
        content,
        styles,
        params,
        backbone=RandomModels(vgg16_random).backbone(params),
        on_checkpoint=lambda c: history.append(c.losses()),
        max_pass_pixels=max_pass_pixels,
    )
    return result.image, history


def assert_same_run(factory, storage, job_id, expected_image, expected_history):
    with session_scope(factory) as session:
        history = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.iteration)).all()
        assert [c.iteration for c in history] == [c["iteration"] for c in expected_history]
        for got, want in zip(history, expected_history):
            for name in ("content", "style", "tv", "total"):
                assert getattr(got, name) == pytest.approx(want[name], rel=1e-5), (job_id, got.iteration, name)
    got = np.asarray(picture(storage.job_path(job_id, "result.png")), dtype=np.int16)
    assert np.abs(got - np.asarray(expected_image, dtype=np.int16)).max() <= 1


def test_matching_queued_jobs_run_as_one_batch_each_with_its_own_history_and_the_picture_it_gets_alone(
    tmp_path, factory, storage, images_dir, vgg16_random
):
    ids = [submit(factory, storage, images_dir, pictures, seed=index, iterations=30) for index, pictures in enumerate(PAIRS)]

    outcome = make_runner(batch_settings(tmp_path), factory, storage, vgg16_random).run(ids[0])

    assert outcome == "succeeded"
    done = [load(factory, job_id) for job_id in ids]
    assert [(job.status, job.batch_size, job.attempts, job.iteration) for job in done] == [("succeeded", 3, 1, 30)] * 3
    assert done[0].batch_id and {job.batch_id for job in done} == {done[0].batch_id}
    for job_id, pictures, index in zip(ids, PAIRS, range(3)):
        assert_same_run(factory, storage, job_id, *alone(images_dir, pictures, vgg16_random, seed=index, iterations=30))
        assert picture(storage.job_path(job_id, "preview.jpg")).format == "JPEG"
        assert storage.state_path(job_id) is None


def test_a_job_blending_two_styles_runs_through_the_worker_in_a_batch_with_a_job_of_one_style(
    tmp_path, factory, storage, images_dir, vgg16_random
):
    blend_pictures = ("rainier.jpg", "autumn-oak.jpg", "the_scream.jpg")
    blend = submit(factory, storage, images_dir, blend_pictures, style_weights=[0.7, 0.3], iterations=20)
    single = submit(factory, storage, images_dir, PAIRS[0], seed=1, iterations=20)

    outcome = make_runner(batch_settings(tmp_path), factory, storage, vgg16_random).run(blend)

    assert outcome == "succeeded"
    assert [(load(factory, job_id).status, load(factory, job_id).batch_size) for job_id in (blend, single)] == [("succeeded", 2)] * 2
    assert_same_run(factory, storage, blend, *alone(images_dir, blend_pictures, vgg16_random, style_weights=[0.7, 0.3], iterations=20))
    assert_same_run(factory, storage, single, *alone(images_dir, PAIRS[0], vgg16_random, seed=1, iterations=20))


def test_a_blend_whose_second_style_is_gone_fails_naming_it(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir, ("rainier.jpg", "autumn-oak.jpg", "the_scream.jpg"))
    storage.upload_path(load(factory, job_id).style_hashes[1]).unlink()

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "failed"

    job = load(factory, job_id)
    assert job.error_code == "input_missing" and "style 2 image" in job.error_message


def test_the_later_message_of_a_batch_mate_is_skipped(tmp_path, factory, storage, images_dir, vgg16_random):
    first, mate = (submit(factory, storage, images_dir, pictures) for pictures in PAIRS[:2])
    runner = make_runner(batch_settings(tmp_path), factory, storage, vgg16_random)
    assert runner.run(first) == "succeeded"

    assert runner.run(mate) == "skipped"
    assert load(factory, mate).attempts == 1 and iterations(factory, mate) == [10, 20, 30, 40]


def test_jobs_that_cannot_share_the_batch_stay_queued(tmp_path, factory, storage, images_dir, vgg16_random):
    # A long side of 32 makes rainier 21x32 and tubingen 24x32: equal parameters, other sizes.
    first = submit(factory, storage, images_dir, size=32)
    mate = submit(factory, storage, images_dir, ("rainier.jpg", "starry_night.jpg"), size=32, seed=7)
    other_parameters = submit(factory, storage, images_dir, size=32, style_weight=3.0)
    other_size = submit(factory, storage, images_dir, ("tubingen.jpg", "autumn-oak.jpg"), size=32)
    asked_to_cancel = submit(factory, storage, images_dir, size=32)
    with session_scope(factory) as session:
        session.get(Job, asked_to_cancel).cancel_requested = True

    assert make_runner(batch_settings(tmp_path), factory, storage, vgg16_random).run(first) == "succeeded"

    assert [load(factory, job_id).batch_size for job_id in (first, mate)] == [2, 2]
    for job_id in (other_parameters, other_size, asked_to_cancel):
        job = load(factory, job_id)
        assert (job.status, job.attempts, job.batch_size) == ("queued", 0, None)


def test_a_cpu_worker_runs_one_job_at_a_time_unless_told_otherwise(settings, factory, storage, images_dir, vgg16_random):
    first, second = (submit(factory, storage, images_dir, pictures) for pictures in PAIRS[:2])
    assert settings.batch_size is None and settings.batch_limit(gpu=False) == 1 and settings.batch_limit(gpu=True) == 8

    assert make_runner(settings, factory, storage, vgg16_random).run(first) == "succeeded"

    assert load(factory, first).batch_size == 1 and load(factory, first).batch_id is None
    assert load(factory, second).status == "queued"


def test_a_job_larger_than_one_pass_runs_alone_in_tiles_as_the_engine_makes_it(tmp_path, factory, storage, images_dir, vgg16_random):
    # Layers up to relu4_2 (48-pixel margins): 256x384 goes in two passes of at most 256 x 256 pixels.
    tiled = {"size": [256, 384], "iterations": 2, "checkpoint_every": 1, "style_layers": ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]}
    first, mate = (submit(factory, storage, images_dir, pictures, seed=index, **tiled) for index, pictures in enumerate(PAIRS[:2]))

    assert make_runner(batch_settings(tmp_path, max_pass_pixels=256 * 256), factory, storage, vgg16_random).run(first) == "succeeded"

    # Batches were allowed and a mate matched, but a tiled job's passes already take what the device holds.
    assert load(factory, first).batch_size == 1 and load(factory, mate).status == "queued"
    assert_same_run(factory, storage, first, *alone(images_dir, PAIRS[0], vgg16_random, max_pass_pixels=256 * 256, seed=0, **tiled))


class CancelOneOnItsFirstPreview(Storage):
    """Storage that, when one given job's first preview lands, asks for that job's cancellation as a client would."""

    factory = None
    job_id = None

    def write_job_file(self, job_id, name, data, **options):
        if name == "preview.jpg" and job_id == self.job_id:
            with session_scope(self.factory) as session:
                job = session.get(Job, job_id)
                if job.status == "running":
                    jobs.request_cancel(session, job)
        return super().write_job_file(job_id, name, data, **options)


def test_a_canceled_job_leaves_the_batch_at_its_next_checkpoint_and_the_others_go_on(tmp_path, factory, storage, images_dir, vgg16_random):
    canceling = CancelOneOnItsFirstPreview(storage.root)
    canceling.factory = factory
    first, canceled, last = (submit(factory, canceling, images_dir, pictures, iterations=60) for pictures in PAIRS)
    canceling.job_id = canceled

    assert make_runner(batch_settings(tmp_path), factory, canceling, vgg16_random).run(first) == "succeeded"

    stopped = load(factory, canceled)
    assert (stopped.status, stopped.iteration, stopped.batch_size) == ("canceled", 20, 3)
    assert not canceling.job_path(canceled, "result.png").exists()
    for job_id in (first, last):
        assert load(factory, job_id).status == "succeeded" and iterations(factory, job_id) == [10, 20, 30, 40, 50, 60]
    # It ended when it left, not when the batch did.
    assert stopped.finished_at < load(factory, first).finished_at


def test_a_batch_mate_whose_picture_is_gone_fails_alone_and_the_others_run(tmp_path, factory, storage, images_dir, vgg16_random):
    first, missing, last = (submit(factory, storage, images_dir, pictures) for pictures in PAIRS)
    storage.upload_path(load(factory, missing).style_hashes[0]).unlink()

    assert make_runner(batch_settings(tmp_path), factory, storage, vgg16_random).run(first) == "succeeded"

    failed = load(factory, missing)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "input_missing", 1)
    assert "style image" in failed.error_message
    assert [(load(factory, job_id).status, load(factory, job_id).batch_size) for job_id in (first, last)] == [("succeeded", 2)] * 2


def test_a_worker_waits_for_batch_mates_only_until_the_batch_is_full(tmp_path, factory, storage, images_dir, vgg16_random):
    first = submit(factory, storage, images_dir, PAIRS[0])
    late = threading.Timer(0.5, lambda: submit(factory, storage, images_dir, PAIRS[1]))
    runner = make_runner(batch_settings(tmp_path, batch_wait_seconds=60), factory, storage, vgg16_random)
    runner.settings.batch_size = 2
    started = time.monotonic()
    late.start()

    assert runner.run(first) == "succeeded"

    late.join()
    assert time.monotonic() - started < 45
    with session_scope(factory) as session:
        assert sorted(job.batch_size for job in session.scalars(select(Job))) == [2, 2]


def test_a_batch_out_of_memory_goes_on_in_halves_each_from_its_saved_state(
    tmp_path, factory, storage, images_dir, vgg16_random, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="styleq.worker.runner")
    real_transfer_batch = runner_module.transfer_batch

    def transfer_batch_that_runs_out_of_memory(jobs_, *, on_checkpoint, **options):
        # More than one job at iteration 20 does not fit; one at a time does.
        def checkpoint(index, c):
            if len(jobs_) > 1 and c.iteration == 20:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return on_checkpoint(index, c)

        return real_transfer_batch(jobs_, on_checkpoint=checkpoint, **options)

    monkeypatch.setattr(runner_module, "transfer_batch", transfer_batch_that_runs_out_of_memory)
    ids = [submit(factory, storage, images_dir, pictures, seed=index, iterations=30) for index, pictures in enumerate(PAIRS)]
    runner = make_runner(batch_settings(tmp_path), factory, storage, vgg16_random)

    assert runner.run(ids[0]) == "succeeded"

    assert [(load(factory, job_id).status, load(factory, job_id).attempts) for job_id in ids] == [("succeeded", 1)] * 3
    # Halves of two and one ran out of memory or ran alone; every job ended alone.
    assert [load(factory, job_id).batch_size for job_id in ids] == [1, 1, 1]
    # Keyed by size and the precision the jobs ran in: `auto` is bf16 on a CPU with native bf16, fp32 elsewhere.
    assert runner.batching.ceilings == {((24, 32), resolve_precision("auto", "cpu")): 1}
    for job_id, pictures, index in zip(ids, PAIRS, range(3)):
        # Resumed from its state saved at iteration 10: the same history, once each, and the same picture as alone.
        assert f"resuming job {job_id} at iteration 10" in caplog.messages
        assert_same_run(factory, storage, job_id, *alone(images_dir, pictures, vgg16_random, seed=index, iterations=30))


def test_only_leases_of_dead_processes_on_this_host_count_as_dead():
    import socket
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    gone = int(finished.stdout)
    host = socket.gethostname()
    owners = [f"gpu0@{host}/{gone}", f"gpu1@{host}/{os.getpid()}", f"gpu0@elsewhere/{gone}", f"{host}/{gone}", f"alpha/{gone}"]

    # A process that ended is dead; this one is alive; another machine's pids mean nothing here, nor does a
    # worker name that does not say which machine it is on (an unnamed worker is named for its host).
    assert liveness.dead_local_owners(owners, host) == [f"gpu0@{host}/{gone}", f"{host}/{gone}"]


def test_a_job_whose_holder_died_on_this_host_is_claimed_at_once(settings, factory, storage, images_dir, vgg16_random):
    import socket
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout)
    job_id = submit(factory, storage, images_dir)
    host = socket.gethostname()
    with session_scope(factory) as session:
        assert leases.claim_job(session, job_id, f"gpu0@{host}/{gone}", "cpu", lease_seconds=30) is not None

    # The lease is fresh, but its process is gone: a worker on the same host takes the job over now.
    outcome = make_runner(settings, factory, storage, vgg16_random, lease_owner=f"gpu0@{host}/{os.getpid()}").run(job_id)

    assert outcome == "succeeded"
    assert load(factory, job_id).attempts == 2


def test_a_coarse_to_fine_job_records_the_scale_of_each_checkpoint(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir, size=[64, 96], iterations=40, scales=[0.5, 1], scale_iterations=[20, 20])

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "succeeded"

    with session_scope(factory) as session:
        rows = session.execute(
            select(Checkpoint.iteration, Checkpoint.scale).where(Checkpoint.job_id == job_id).order_by(Checkpoint.iteration)
        ).all()
    assert [tuple(row) for row in rows] == [(10, 0.5), (20, 0.5), (30, 1.0), (40, 1.0)]
    assert picture(storage.job_path(job_id, "result.png")).size == (96, 64)


# --- faults ----------------------------------------------------------------------------------------


class StopAtIteration(Storage):
    """Storage that sets the runner's stop event (as SIGTERM does) when a given iteration's state is saved."""

    stopping: threading.Event | None = None
    at = 10

    def save_state(self, job_id, iteration, data):
        if iteration == self.at:
            self.stopping.set()
        return super().save_state(job_id, iteration, data)


def test_a_worker_told_to_stop_saves_hands_the_job_back_and_another_resumes_it_exactly(
    settings, factory, storage, images_dir, vgg16_random, rainier, autumn_oak
):
    stopping = threading.Event()
    stopper = StopAtIteration(storage.root)
    stopper.stopping = stopping
    job_id = submit(factory, storage, images_dir)
    sent: list[str] = []
    first = JobRunner(
        settings,
        factory,
        stopper,
        name="w1",
        lease_owner="w1@host/1",
        gpu="cpu",
        device=torch.device("cpu"),
        models=RandomModels(vgg16_random),
        stopping=stopping,
    )

    assert first.run(job_id, resend=sent.append) == "handed_back"

    job = load(factory, job_id)
    # Back in the queue, sent again, unleased, with its state saved where it stopped (and the database
    # knowing it); not an attempt used up.
    assert (job.status, job.lease_owner, job.iteration, job.stalled_attempts) == ("queued", None, 20, 0)
    assert sent == [job_id] and job.enqueued_at is not None
    assert storage.state_path(job_id).name == "state-000000020.pt" and job.saved_iteration == 20

    assert make_runner(settings, factory, storage, vgg16_random, lease_owner="w2@host/2").run(job_id) == "succeeded"
    assert iterations(factory, job_id) == [10, 20, 30, 40]
    assert load(factory, job_id).resumed_iteration == 20
    whole = transfer(rainier, autumn_oak, resolve_params(PARAMS), backbone=RandomModels(vgg16_random).backbone(resolve_params(PARAMS)))
    assert picture(storage.job_path(job_id, "result.png")).tobytes() == whole.image.tobytes()


def test_a_message_that_arrives_as_the_worker_stops_is_sent_on_untouched(settings, factory, storage, images_dir, vgg16_random):
    job_id = submit(factory, storage, images_dir)
    stopping = threading.Event()
    stopping.set()
    sent: list[str] = []
    runner = JobRunner(
        settings,
        factory,
        storage,
        name="w1",
        lease_owner="w1@host/1",
        gpu="cpu",
        device=torch.device("cpu"),
        models=RandomModels(vgg16_random),
        stopping=stopping,
    )

    assert runner.run(job_id, resend=sent.append) == "handed_back"
    assert sent == [job_id] and (load(factory, job_id).status, load(factory, job_id).attempts) == ("queued", 0)


class FullStorage(Storage):
    """Storage whose disk is full for the given kinds of file."""

    full = ("state", "preview.jpg")

    def write_job_file(self, job_id, name, data, **options):
        if name in self.full:
            raise OSError(28, "No space left on device", str(self.job_path(job_id, name)))
        return super().write_job_file(job_id, name, data, **options)

    def save_state(self, job_id, iteration, data):
        if "state" in self.full:
            raise OSError(28, "No space left on device", str(self.job_dir(job_id)))
        return super().save_state(job_id, iteration, data)


def test_previews_and_states_that_cannot_be_written_do_not_stop_the_job(settings, factory, tmp_path, images_dir, vgg16_random, caplog):
    storage = FullStorage(tmp_path / "storage")
    job_id = submit(factory, storage, images_dir)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "succeeded"

    assert load(factory, job_id).status == "succeeded" and iterations(factory, job_id) == [10, 20, 30, 40]
    assert "No space left on device" in caplog.text


def test_a_result_that_cannot_be_written_is_retried_then_requeued_and_the_job_fails_plainly_after_max_attempts(
    settings, factory, tmp_path, images_dir, vgg16_random
):
    settings = settings.model_copy(update={"result_write_retry_delays": (0, 0)})
    storage = FullStorage(tmp_path / "storage")
    storage.full = ("result.png",)
    job_id = submit(factory, storage, images_dir)
    sent: list[str] = []
    runner = make_runner(settings, factory, storage, vgg16_random)

    outcomes = [runner.run(job_id, resend=sent.append) for _ in range(settings.max_attempts)]

    assert outcomes == ["handed_back"] * (settings.max_attempts - 1) + ["failed"]
    assert sent == [job_id] * (settings.max_attempts - 1)
    job = load(factory, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "storage_error", settings.max_attempts)
    # A plain message: no server path, no errno.
    assert str(storage.root) not in job.error_message and "space" not in job.error_message
    assert storage.state_path(job_id) is None


def test_a_database_gone_for_good_interrupts_the_run_without_failing_the_job(
    settings, factory, storage, images_dir, vgg16_random, monkeypatch
):
    from sqlalchemy.exc import OperationalError

    settings = settings.model_copy(update={"database_retry_delays": (0, 0)})
    job_id = submit(factory, storage, images_dir)
    real = leases.record_checkpoints
    refused = []

    def database_goes_away(session, job_id_, lease_owner, checkpoints, **options):
        if checkpoints[-1]["iteration"] >= 20:
            refused.append(checkpoints[-1]["iteration"])
            raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))
        return real(session, job_id_, lease_owner, checkpoints, **options)

    monkeypatch.setattr(leases, "record_checkpoints", database_goes_away)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "interrupted"
    # Tried once and once after each of the settings' delays, then given up.
    assert len(refused) == 3

    # The job keeps its lease (the sweeper resumes it once its heartbeat is stale) and its saved state.
    job = load(factory, job_id)
    assert (job.status, job.error_code, job.iteration) == ("running", None, 10)
    assert storage.state_path(job_id).name == "state-000000010.pt"


def test_a_deleted_job_gets_no_late_files(settings, factory, storage, images_dir, vgg16_random, monkeypatch):
    job_id = submit(factory, storage, images_dir)
    real = leases.record_checkpoints

    def deleted_meanwhile(session, job_id_, lease_owner, checkpoints, **options):
        held = real(session, job_id_, lease_owner, checkpoints, **options)
        if checkpoints[-1]["iteration"] == 20:
            # The client's DELETE lands between the checkpoint's write and its files.
            storage.delete_job_files(job_id_)
        return held

    monkeypatch.setattr(leases, "record_checkpoints", deleted_meanwhile)

    make_runner(settings, factory, storage, vgg16_random).run(job_id)

    assert not storage.job_dir(job_id).exists()


def stored_sideways(images_dir: Path, name: str, orientation: int, turn: Image.Transpose) -> bytes:
    """The picture `name` as a camera stores a photo: its pixels turned by `turn`, an EXIF note saying how to turn them back."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    with Image.open(images_dir / name) as image:
        image.convert("RGB").resize((96, 64)).transpose(turn).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def submit_bytes(factory, storage: Storage, content: bytes, style: bytes, **overrides) -> str:
    """Store a pair of uploads as given and queue a job for them; return its id."""
    with session_scope(factory) as session:
        owner, _ = create_api_key(session, "alice", secret="worker-tests")
        job, _ = jobs.create_job(
            session, owner, resolve_params({**PARAMS, **overrides}), storage.save_upload(content), storage.save_upload(style)
        )
        return job.id


def test_a_photo_stored_sideways_runs_upright(settings, factory, storage, images_dir, vgg16_random):
    # Stored portrait, turned a quarter clockwise by its EXIF orientation 6: upright, a landscape 96x64.
    content = stored_sideways(images_dir, "rainier.jpg", 6, Image.Transpose.ROTATE_90)
    job_id = submit_bytes(factory, storage, content, (images_dir / "autumn-oak.jpg").read_bytes(), size=48, iterations=2)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "succeeded"
    assert picture(storage.job_path(job_id, "result.png")).size == (48, 32)


def test_a_batch_mate_stored_sideways_joins_by_its_upright_size(tmp_path, factory, storage, images_dir, vgg16_random):
    style = (images_dir / "autumn-oak.jpg").read_bytes()
    upright = io.BytesIO()
    Image.open(images_dir / "tubingen.jpg").convert("RGB").resize((96, 64)).save(upright, "JPEG")
    first = submit_bytes(factory, storage, upright.getvalue(), style, size=48, iterations=2)
    sideways = submit_bytes(
        factory, storage, stored_sideways(images_dir, "rainier.jpg", 8, Image.Transpose.ROTATE_270), style, size=48, iterations=2, seed=3
    )
    # Stored landscape, but its EXIF note turns it portrait: 32x48 upright, not the batch's 48x32.
    turned_away = submit_bytes(
        factory,
        storage,
        stored_sideways(images_dir, "rainier.jpg", 6, Image.Transpose.FLIP_LEFT_RIGHT),
        style,
        size=48,
        iterations=2,
        seed=4,
    )

    assert make_runner(batch_settings(tmp_path), factory, storage, vgg16_random).run(first) == "succeeded"

    assert [load(factory, job_id).batch_size for job_id in (first, sideways)] == [2, 2]
    assert load(factory, turned_away).status == "queued"


def test_a_long_side_the_network_cannot_take_fails_plainly_naming_the_smallest_that_works(
    settings, factory, storage, images_dir, vgg16_random
):
    # Queued before the API refused such sizes: 16 on rainier's long side leaves its short side 11 pixels.
    job_id = submit(factory, storage, images_dir, size=16)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "failed"

    job = load(factory, job_id)
    assert job.error_code == "invalid_params" and "the smallest size that works for this content is" in job.error_message


def test_an_upload_cut_short_fails_as_invalid_image_naming_its_role(settings, factory, storage, images_dir, vgg16_random):
    whole = (images_dir / "autumn-oak.jpg").read_bytes()
    job_id = submit_bytes(factory, storage, (images_dir / "rainier.jpg").read_bytes(), whole[: len(whole) // 2])

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "failed"

    job = load(factory, job_id)
    assert job.error_code == "invalid_image" and job.error_message.startswith("the style image is damaged or incomplete")


def test_a_job_naming_weights_the_worker_does_not_hold_fails_without_a_download(
    settings, factory, storage, images_dir, tmp_path, monkeypatch
):
    from styleq.worker import downloads

    def no_download(*_args, **_kwargs):
        raise AssertionError("a worker must never download weights for a job")

    monkeypatch.setattr(downloads, "pull_weights", no_download)
    monkeypatch.setattr(downloads, "pull_spec", no_download)
    job_id = submit(factory, storage, images_dir, weights="vgg19")
    runner = JobRunner(
        settings,
        factory,
        storage,
        name="w",
        lease_owner="w/1",
        gpu="cpu",
        device=torch.device("cpu"),
        models=ModelCache(tmp_path / "empty-models", torch.device("cpu")),
    )

    assert runner.run(job_id) == "failed"

    job = load(factory, job_id)
    assert (job.status, job.error_code) == ("failed", "weights_unavailable")
    assert "styleq weights pull vgg19" in job.error_message and str(tmp_path) not in job.error_message


def test_the_runner_counts_iterations_checkpoint_writes_and_memory_for_its_metrics(settings, factory, storage, images_dir, vgg16_random):
    from prometheus_client import CollectorRegistry

    job_id = submit(factory, storage, images_dir)
    runner = make_runner(settings, factory, storage, vgg16_random)
    registry = CollectorRegistry()
    for collector in runner.metrics.collectors:
        registry.register(collector)

    assert runner.run(job_id) == "succeeded"

    assert registry.get_sample_value("styleq_worker_iterations_total", {"worker": "gpu0@host", "device": "cpu"}) == 40
    with_state = registry.get_sample_value("styleq_checkpoint_write_seconds_count", {"worker": "gpu0@host", "with_state": "true"})
    without = registry.get_sample_value("styleq_checkpoint_write_seconds_count", {"worker": "gpu0@host", "with_state": "false"}) or 0
    # The first checkpoint saves a state (preview_every=2, no minimum time), and the last one is always written.
    assert with_state >= 1 and with_state + without >= 2
    assert registry.get_sample_value("styleq_checkpoint_write_seconds_sum", {"worker": "gpu0@host", "with_state": "true"}) > 0
    assert (
        registry.get_sample_value("styleq_worker_device_memory_bytes", {"worker": "gpu0@host", "device": "cpu", "kind": "rss"}) > 10_000_000
    )


class OutageStorage(Storage):
    """Storage that does not answer, as an object store that is down, for the operations (or job files) named in `down`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down: set[str] = set()

    def _answer(self, operation: str) -> None:
        if operation in self.down:
            raise StoreUnreachable(f"the test's store is down for {operation}")

    def make_job_dir(self, job_id: str) -> None:
        self._answer("make_job_dir")
        super().make_job_dir(job_id)

    def read_upload(self, sha256: str) -> bytes:
        self._answer("read_upload")
        return super().read_upload(sha256)

    def write_job_file(self, job_id: str, name: str, data: bytes, *, create: bool = True) -> Path:
        self._answer(name)
        return super().write_job_file(job_id, name, data, create=create)


def test_a_job_the_store_cannot_give_its_inputs_goes_back_to_the_queue_uncounted(tmp_path, factory, images_dir, vgg16_random):
    settings = Settings(data_dir=tmp_path, preview_every=2, preview_min_seconds=0, storage_retry_delays="0,0")
    storage = OutageStorage(tmp_path / "storage")
    job_id = submit(factory, storage, images_dir)
    runner = make_runner(settings, factory, storage, vgg16_random)

    storage.down = {"make_job_dir"}
    assert runner.run(job_id) == "interrupted"  # the claim went with its marker: the sweeper sends the job again
    assert (load(factory, job_id).status, load(factory, job_id).attempts) == ("queued", 0)
    storage.down = {"read_upload"}
    assert runner.run(job_id) == "handed_back"
    job = load(factory, job_id)
    assert (job.status, job.lease_owner, job.enqueued_at, job.stalled_attempts) == ("queued", None, None, 0)

    storage.down = set()
    assert runner.run(job_id) == "succeeded"


def test_a_finished_job_whose_result_the_store_cannot_take_goes_back_and_ends_from_its_last_state_once_it_answers(
    tmp_path, factory, images_dir, vgg16_random
):
    settings = Settings(data_dir=tmp_path, preview_every=2, preview_min_seconds=0, storage_retry_delays="0,0")
    storage = OutageStorage(tmp_path / "storage")
    job_id = submit(factory, storage, images_dir, iterations=40)
    storage.down = {"result.png"}
    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "handed_back"
    job = load(factory, job_id)
    assert (job.status, job.stalled_attempts, job.saved_iteration) == ("queued", 0, 40)

    storage.down = set()
    assert make_runner(settings, factory, storage, vgg16_random, lease_owner="gpu1@host/2").run(job_id) == "succeeded"
    assert load(factory, job_id).resumed_iteration == 40 and storage.has_job_file(job_id, "result.png")


def test_a_runs_outcome_is_one_of_its_named_values_and_reaches_celerys_json_as_the_plain_word():
    # The task returns it; Celery's result backend and its log lines have always shown the bare word.
    assert {outcome.value for outcome in RunOutcome} == {"succeeded", "canceled", "failed", "skipped", "lost", "handed_back", "interrupted"}
    assert json.dumps(RunOutcome.HANDED_BACK) == '"handed_back"' and f"{RunOutcome.LOST}" == "lost"
