"""A new pool process builds what a job needs before the first job arrives, so that job (or a lost worker's job
taken over) claims at once instead of after torch's import and the weights' load (worker/process.py)."""

from __future__ import annotations

import pytest
import torch

from shared.params import resolve_params
from shared.settings import Settings
from worker import process
from worker.engine import precision


@pytest.fixture
def fresh_process(monkeypatch):
    """This test process as a pool process just forked: no runner yet, precision not yet chosen."""
    monkeypatch.setattr(process, "_runner", None)
    precision._cpu_bf16_is_faster.cache_clear()
    yield
    precision._cpu_bf16_is_faster.cache_clear()


def test_warming_up_loads_the_default_presets_backbone_and_chooses_its_precision_for_the_first_job(
    fresh_process, tmp_path, models_dir, caffe_weights
):
    settings = Settings(data_dir=tmp_path, model_dir=models_dir)

    process.warm_up(settings)

    runner = process.job_runner(settings)  # what the first job's task gets: the runner the warm-up built
    default = resolve_params()
    assert list(runner.models.backbones) == [(default.weights, default.layers)]
    assert runner.models.backbone(default) is runner.models.backbones[(default.weights, default.layers)]
    assert runner.device == torch.device("cpu") and runner.lease_owner.startswith(settings.worker_node + "/")
    if precision.native_bf16("cpu"):
        assert precision._cpu_bf16_is_faster.cache_info().currsize == 1  # timed once, now, not at the first job


def test_without_pulled_weights_the_warm_up_builds_the_runner_and_leaves_the_weights_to_the_first_job(fresh_process, tmp_path):
    settings = Settings(data_dir=tmp_path, model_dir=tmp_path / "no-models")

    process.warm_up(settings)

    assert process.job_runner(settings).models.backbones == {}


def test_a_worker_runs_its_network_on_the_threads_its_settings_give(fresh_process, tmp_path):
    before = torch.get_num_threads()
    try:
        process.job_runner(Settings(data_dir=tmp_path, model_dir=tmp_path / "no-models", worker_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
