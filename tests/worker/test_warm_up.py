"""A new pool process builds what a job needs before the first job arrives, so that job (or a lost worker's job
taken over) claims at once instead of after torch's import and the weights' load (worker/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from styleq.shared.adapters.settings import Settings
from styleq.shared.domain.params import resolve_params
from styleq.worker import process
from styleq.worker.engine import precision
from styleq.worker.precision_choice import CHOICE_FILE


@pytest.fixture
def fresh_process(monkeypatch):
    """This test process as a pool process just forked: no runner yet, precision not yet chosen."""
    monkeypatch.setattr(process, "_runner", None)
    monkeypatch.setattr(precision, "_choice_store", None)  # the runner names its host's; restored after
    precision._cpu_bf16_is_faster.cache_clear()
    yield
    precision._cpu_bf16_is_faster.cache_clear()


def test_warming_up_loads_the_default_presets_backbone_and_chooses_its_precision_for_the_first_job(
    fresh_process, tmp_path, models_dir, caffe_weights
):
    settings = Settings(data_dir=tmp_path, model_dir=models_dir)
    (models_dir / CHOICE_FILE).unlink(missing_ok=True)  # as on a host where no process has run yet

    process.warm_up(settings)

    runner = process.job_runner(settings)  # what the first job's task gets: the runner the warm-up built
    default = resolve_params()
    assert list(runner.models.backbones) == [(default.weights, default.layers)]
    assert runner.models.backbone(default) is runner.models.backbones[(default.weights, default.layers)]
    assert runner.device == torch.device("cpu") and runner.lease_owner.startswith(settings.worker_node + "/")
    if precision.native_bf16("cpu"):
        assert precision._cpu_bf16_is_faster.cache_info().currsize == 1  # timed once, now, not at the first job
        # ...and kept beside the weights, for the host's next pool processes
        assert (models_dir / CHOICE_FILE).exists()


def test_without_pulled_weights_the_warm_up_builds_the_runner_and_leaves_the_weights_to_the_first_job(fresh_process, tmp_path):
    settings = Settings(data_dir=tmp_path, model_dir=tmp_path / "no-models")

    process.warm_up(settings)

    assert process.job_runner(settings).models.backbones == {}


def test_a_workers_pool_processes_run_every_thread_on_the_cpu_threads_its_settings_give():
    # As a pool process after fork: the worker set the variables, then torch is imported; the job's thread and the
    # warm-up's both see the count (torch.set_num_threads in the warm-up thread held for that thread alone).
    script = (
        "from styleq.shared.adapters.settings import Settings; from styleq.worker.launcher import limit_cpu_threads;"
        "limit_cpu_threads(Settings(worker_threads=1)); import threading, torch; seen = [];"
        "thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads())); thread.start(); thread.join();"
        "print(torch.get_num_threads(), seen[0])"
    )
    environment = {name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, check=True, timeout=120)

    assert done.stdout.split() == ["1", "1"]
