"""The engine and a worker on a CUDA GPU: both precisions, bf16 at large sizes, batches, and a worker pinned to its GPU.

Skipped where no CUDA device is visible; `bench/gpu.sh` runs them on a GPU machine (`pytest -m gpu`).
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import resolve_params
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import Backbone, Control, TransferJob, get_convention, resolve_precision, transfer, transfer_batch
from styleq.worker.engine.losses import gram_matrices
from styleq.worker.engine.weights import is_pulled

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
    pytest.mark.timeout(300),
]
DEVICE = torch.device("cuda")
SMALL = {"size": [96, 144], "iterations": 40, "checkpoint_every": 5}
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def backbone(vgg16_random) -> Backbone:
    """The styleq preset's VGG16 as the worker builds it (channels-last, on the GPU), with random weights."""
    params = resolve_params({})
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), params.layers).to(DEVICE)


@pytest.fixture(scope="module")
def runs(backbone, rainier, autumn_oak) -> dict[str, list]:
    """The same small job in fp32 and in bf16: each precision's checkpoints."""
    found = {}
    for precision in ("fp32", "bf16"):
        checkpoints: list = []
        params = resolve_params({**SMALL, "precision": precision})
        result = transfer(rainier, autumn_oak, params, backbone=backbone, device=DEVICE, on_checkpoint=checkpoints.append)
        assert torch.isfinite(result.tensor).all()
        found[precision] = checkpoints
    return found


def test_auto_precision_is_bf16_on_a_gpu_that_computes_it():
    # Ampere (compute capability 8) and later run bf16 natively.
    expected = "bf16" if torch.cuda.get_device_capability(DEVICE)[0] >= 8 else "fp32"
    assert resolve_precision("auto", DEVICE) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_precision_gives_finite_losses_and_a_falling_style_loss(runs, precision):
    checkpoints = runs[precision]
    assert [c.iteration for c in checkpoints] == list(range(5, 41, 5))
    for c in checkpoints:
        assert all(math.isfinite(value) for value in (c.content, c.style, c.tv, c.total)), c
    assert checkpoints[-1].style < checkpoints[0].style
    assert checkpoints[-1].total < checkpoints[0].total


def test_bf16_follows_fp32_within_a_few_percent_at_every_checkpoint(runs):
    for ours, reference in zip(runs["bf16"], runs["fp32"], strict=True):
        assert ours.total == pytest.approx(reference.total, rel=0.05), (ours, reference)
        assert ours.style == pytest.approx(reference.style, rel=0.05), (ours, reference)
        # The content loss starts at zero (init=content), so it is held to a share of the total instead.
        assert abs(ours.content - reference.content) <= 0.05 * reference.total, (ours, reference)


def test_bf16_forward_backward_and_gram_stay_finite_at_2048_px(backbone, rainier, autumn_oak):
    params = resolve_params({"size": [2048, 2048], "iterations": 2, "checkpoint_every": 1, "precision": "bf16"})
    checkpoints: list = []
    result = transfer(rainier, autumn_oak, params, backbone=backbone, device=DEVICE, on_checkpoint=checkpoints.append)
    assert len(checkpoints) == 2
    for c in checkpoints:
        assert all(math.isfinite(value) for value in (c.content, c.style, c.tv, c.total)), c
    assert torch.isfinite(result.tensor).all()

    # The pieces on their own: bf16 activations, their fp32 Gram matrices and the gradient back to the pixels.
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 2048, 2048, generator=generator).to(DEVICE).requires_grad_(True)
    layers = params.style_layers
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        features = backbone(backbone.convention.normalize(image).contiguous(memory_format=torch.channels_last), layers)
    grams = {name: gram_matrices(features[name]) for name in layers}
    for name in layers:
        assert features[name].dtype == torch.bfloat16
        assert torch.isfinite(features[name]).all(), name
        assert grams[name].dtype == torch.float32 and torch.isfinite(grams[name]).all(), name
        # The same activations summed in plain fp32 order: the rescaled bf16 path loses nothing that matters.
        torch.testing.assert_close(grams[name], gram_matrices(features[name].float()), rtol=1e-3, atol=1e-6)
    sum(g.square().mean() for g in grams.values()).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_the_gram_of_bf16_features_on_tensor_cores_and_its_gradient_match_fp64():
    # The GPU's own bf16 x bf16 -> fp32 products (tests/engine/test_precision.py checks the same arithmetic widened on a CPU).
    generator = torch.Generator().manual_seed(0)
    shape = (2, 64, 150, 225)
    features = (
        (torch.randn(shape, generator=generator) * 50).relu().to(torch.bfloat16).to(DEVICE).contiguous(memory_format=torch.channels_last)
    )
    target = gram_matrices((torch.randn(shape, generator=generator) * 50).relu().to(DEVICE))
    exact = features.double().requires_grad_(True)
    exact_gram = torch.bmm(exact.flatten(2), exact.flatten(2).transpose(1, 2)) / exact[0].numel()
    (exact_gram - target.double()).square().sum().backward()
    ours = features.clone().requires_grad_(True)

    gram = gram_matrices(ours)
    (gram - target).square().sum().backward()

    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram.double(), exact_gram.detach(), rtol=1e-4, atol=1e-3)
    assert ours.grad.dtype == torch.bfloat16 and ours.grad.is_contiguous(memory_format=torch.channels_last)
    # Rounding the exact gradient to bf16 moves it by ~1.7e-3 of its norm; ours is within a tenth of that of the rounded one.
    rounded = exact.grad.to(torch.bfloat16).double()
    assert float((ours.grad.double() - rounded).norm() / exact.grad.norm()) < 2e-4


def test_a_batch_of_three_equals_three_separate_runs(backbone, images_dir):
    contents = [Image.open(images_dir / name).convert("RGB") for name in ("rainier.jpg", "tubingen.jpg", "shipwreck.jpg")]
    styles = [Image.open(images_dir / name).convert("RGB") for name in ("autumn-oak.jpg", "starry_night.jpg", "the_scream.jpg")]
    params = [
        resolve_params({"size": [64, 96], "iterations": 8, "checkpoint_every": 2, "precision": "fp32", "seed": seed}) for seed in range(3)
    ]
    batched: dict[int, list] = {index: [] for index in range(3)}
    results = transfer_batch(
        [TransferJob(c, s, p) for c, s, p in zip(contents, styles, params)],
        backbone=backbone,
        device=DEVICE,
        on_checkpoint=lambda index, checkpoint: batched[index].append(checkpoint),
    )
    for index in range(3):
        alone: list = []
        single = transfer(contents[index], styles[index], params[index], backbone=backbone, device=DEVICE, on_checkpoint=alone.append)
        assert len(alone) == len(batched[index]) == 4
        for ours, reference in zip(batched[index], alone):
            # cuDNN runs a batch of three with other kernels than one picture, summing in another order: on an
            # H100 the totals parted by up to 7e-4 (on a CPU, where each picture goes through alone, they are equal).
            assert ours.total == pytest.approx(reference.total, rel=1e-3), (index, ours, reference)
            # Each term to within 1e-3 of the total it is part of: the content term starts at zero (init=content), so
            # its own relative error is that of a difference of two nearly equal numbers.
            for name in ("content", "style", "tv"):
                assert abs(getattr(ours, name) - getattr(reference, name)) <= 1e-3 * reference.total, (index, name, ours, reference)
        # cuDNN may pick other kernels for a batch of three, summing in another order; Adam's first steps move
        # each pixel by the sign of its gradient, so a pixel whose gradient is ~0 may step the other way. The
        # pictures agree on average, not bit for bit (an H100 measured 5e-4, a seventh of one 8-bit level).
        assert (results[index].tensor - single.tensor).abs().mean() < 1e-3, index


def _losses(checkpoints: list) -> list[float]:
    return [c.total for c in checkpoints]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replays_give_the_losses_of_eager_iterations(backbone, rainier, autumn_oak, precision):
    params = resolve_params({**SMALL, "precision": precision})
    found = {}
    for graphs in (False, True):
        checkpoints: list = []
        transfer_batch(
            [TransferJob(rainier, autumn_oak, params)],
            backbone=backbone,
            device=DEVICE,
            cuda_graphs=graphs,
            on_checkpoint=lambda _index, checkpoint, into=checkpoints: into.append(checkpoint),
        )
        found[graphs] = checkpoints
    assert [c.iteration for c in found[True]] == [c.iteration for c in found[False]] == list(range(5, 41, 5))
    # The same kernels in the same order; cuDNN's algorithm choice may differ between the two, nothing else.
    assert _losses(found[True]) == pytest.approx(_losses(found[False]), rel=1e-2)


def test_a_graphed_run_stopped_midway_resumes_on_the_gpu_and_its_state_loads_on_the_cpu(backbone, vgg16_random, rainier, autumn_oak):
    params = resolve_params({**SMALL, "precision": "fp32"})
    whole: list = []
    transfer(rainier, autumn_oak, params, backbone=backbone, device=DEVICE, on_checkpoint=whole.append)
    first: list = []
    stopped = transfer(
        rainier,
        autumn_oak,
        params,
        backbone=backbone,
        device=DEVICE,
        on_checkpoint=lambda c: (first.append(c), Control.STOP if c.iteration == 20 else Control.CONTINUE)[1],
    )
    assert stopped.canceled and stopped.state.iteration == 20
    assert all(
        not isinstance(group["lr"], torch.Tensor) and not group.get("capturable") for group in stopped.state.optimizer["param_groups"]
    )
    rest: list = []
    transfer(rainier, autumn_oak, params, backbone=backbone, device=DEVICE, state=stopped.state, on_checkpoint=rest.append)
    assert [c.iteration for c in first + rest] == list(range(5, 41, 5))
    assert _losses(first + rest) == pytest.approx(_losses(whole), rel=1e-2)
    # The saved state is plain: a CPU run picks it up and finishes the job.
    cpu_backbone = Backbone("vgg16", vgg16_random, get_convention("caffe"), params.layers)
    on_cpu = transfer(rainier, autumn_oak, params, backbone=cpu_backbone, device="cpu", state=stopped.state)
    assert on_cpu.iteration == 40 and torch.isfinite(on_cpu.tensor).all()


def test_a_job_canceled_in_a_graphed_batch_leaves_the_others_as_they_run_alone(backbone, rainier, autumn_oak, images_dir):
    contents = [rainier, Image.open(images_dir / "tubingen.jpg").convert("RGB"), Image.open(images_dir / "shipwreck.jpg").convert("RGB")]
    params = [resolve_params({**SMALL, "precision": "fp32", "seed": seed}) for seed in range(3)]
    batched: dict[int, list] = {index: [] for index in range(3)}

    def cancel_the_middle_job_at_ten(index: int, checkpoint) -> Control:
        batched[index].append(checkpoint)
        return Control.STOP if index == 1 and checkpoint.iteration == 10 else Control.CONTINUE

    results = transfer_batch(
        [TransferJob(c, autumn_oak, p) for c, p in zip(contents, params)],
        backbone=backbone,
        device=DEVICE,
        on_checkpoint=cancel_the_middle_job_at_ten,
    )
    assert results[1].canceled and results[1].iteration == 10
    for index in (0, 2):
        alone: list = []
        transfer(contents[index], autumn_oak, params[index], backbone=backbone, device=DEVICE, on_checkpoint=alone.append)
        assert _losses(batched[index]) == pytest.approx(_losses(alone), rel=1e-2), index


@pytest.fixture(scope="module")
def weights_dir(models_dir) -> Path:
    """A model directory holding vgg16-caffe: STYLEQ_MODEL_DIR's (or the default one) where it is there already, as a
    machine without internet needs; else the session's, pulled now."""
    configured = load_settings().models_path
    if is_pulled("vgg16-caffe", configured):
        return configured
    load_or_pull("vgg16-caffe", models_dir)
    return models_dir


@pytest.mark.slow
def test_a_worker_pinned_to_gpu_0_runs_a_job_whose_record_names_the_gpu(tmp_path, images_dir, weights_dir):
    from tests.services import Client, Process, make_key, start_api

    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(tmp_path / "data"),
        "STYLEQ_MODEL_DIR": str(weights_dir),
        "STYLEQ_QUEUE": f"styleq-gpu-test-{uuid.uuid4().hex[:8]}",
    }
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    (tmp_path / "data").mkdir()
    database = f"sqlite:///{tmp_path / 'data' / 'styleq.db'}"
    upgrade_database(database)
    api, url = start_api(environment, tmp_path)
    # As an operator starts it: the launcher pins the process to GPU 0 with CUDA_VISIBLE_DEVICES.
    worker = Process("worker", [sys.executable, "-m", "styleq.cli", "worker", "--gpus", "0"], environment, tmp_path)
    log = ""
    try:
        deadline = time.monotonic() + 120
        while "ready." not in worker.output():
            assert worker.alive() and time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.2)
        client = Client(url, make_key(database, "gpu"))
        response = client.submit(images_dir / "rainier.jpg", images_dir / "autumn-oak.jpg", {"size": [64, 96], "iterations": 20})
        assert response.status_code == 202, response.text
        job = client.wait_for(response.json()["id"], lambda job: job["status"] in TERMINAL, timeout=180)
    finally:
        log = worker.output()[-3000:]
        worker.stop()
        api.stop()
    assert job["status"] == "succeeded", (job, log)
    assert "NVIDIA" in (job["gpu"] or ""), job
    assert job["worker"].startswith("gpu0@"), job
