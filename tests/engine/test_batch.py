"""Jobs optimised as one batch get exactly the pictures they would get alone; one can leave without disturbing the rest."""

from __future__ import annotations

import pytest
import torch

from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, Control, TargetCache, TransferJob, get_convention, transfer, transfer_batch

# Four checkpoints, two iterations apart: a batch and its jobs alone compared at each, a job leaving at the second.
VALUES = {"size": [24, 32], "iterations": 8, "checkpoint_every": 2, "precision": "fp32"}


@pytest.fixture(scope="module")
def backbone(vgg16_random) -> Backbone:
    return Backbone("vgg16", vgg16_random, get_convention("caffe"), resolve_params({}).layers)


@pytest.fixture(scope="module")
def pictures(images_dir):
    from PIL import Image

    names = ["rainier.jpg", "autumn-oak.jpg", "tubingen.jpg", "starry_night.jpg"]
    available = [images_dir / name for name in names if (images_dir / name).is_file()]
    return [Image.open(path).convert("RGB") for path in available]


def three_jobs(pictures, **overrides):
    """Three jobs with their own pictures and seeds and the same parameters otherwise."""
    count = len(pictures)
    return [
        TransferJob(pictures[i % count], pictures[(i + 1) % count], resolve_params({**VALUES, "seed": i, **overrides})) for i in range(3)
    ]


def alone(job, backbone):
    checkpoints = []
    result = transfer(job.content, job.style, job.params, backbone=backbone, on_checkpoint=checkpoints.append)
    return result, checkpoints


def assert_same_run(batched, batched_checkpoints, single, single_checkpoints):
    assert [c.iteration for c in batched_checkpoints] == [c.iteration for c in single_checkpoints]
    for ours, theirs in zip(batched_checkpoints, single_checkpoints):
        for name in ("content", "style", "tv", "total"):
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), rel=1e-5, abs=1e-8), (ours.iteration, name)
    torch.testing.assert_close(batched.tensor, single.tensor, rtol=1e-5, atol=1e-5)


def test_three_jobs_batched_equal_three_runs_alone(pictures, backbone):
    jobs = three_jobs(pictures)
    checkpoints: dict[int, list] = {0: [], 1: [], 2: []}

    results = transfer_batch(jobs, backbone=backbone, on_checkpoint=lambda index, checkpoint: checkpoints[index].append(checkpoint))

    for index, job in enumerate(jobs):
        single, single_checkpoints = alone(job, backbone)
        assert [c.iteration for c in checkpoints[index]] == [2, 4, 6, 8]
        assert_same_run(results[index], checkpoints[index], single, single_checkpoints)
    # Distinct jobs really made distinct pictures.
    assert not torch.equal(results[0].tensor, results[1].tensor)


def test_a_job_canceled_mid_batch_leaves_and_the_others_are_undisturbed(pictures, backbone):
    jobs = three_jobs(pictures)
    checkpoints: dict[int, list] = {0: [], 1: [], 2: []}

    def cancel_the_middle_job_at_four(index, checkpoint):
        checkpoints[index].append(checkpoint)
        return Control.STOP if index == 1 and checkpoint.iteration == 4 else Control.CONTINUE

    results = transfer_batch(jobs, backbone=backbone, on_checkpoint=cancel_the_middle_job_at_four)

    assert results[1].canceled and results[1].iteration == 4 and [c.iteration for c in checkpoints[1]] == [2, 4]
    for index in (0, 2):
        single, single_checkpoints = alone(jobs[index], backbone)
        assert not results[index].canceled
        assert_same_run(results[index], checkpoints[index], single, single_checkpoints)


def test_a_resumed_job_and_a_fresh_one_share_a_batch(pictures, backbone):
    first, second, _ = three_jobs(pictures)
    halfway = transfer(
        first.content, first.style, first.params, backbone=backbone, on_checkpoint=lambda c: Control.STOP if c.iteration == 4 else None
    )
    first.state = halfway.state

    results = transfer_batch([first, second], backbone=backbone)

    whole, _ = alone(TransferJob(first.content, first.style, first.params), backbone)
    torch.testing.assert_close(results[0].tensor, whole.tensor, rtol=1e-5, atol=1e-5)
    assert [result.iteration for result in results] == [8, 8]


def test_jobs_with_other_parameters_cannot_share_a_batch(pictures, backbone):
    jobs = three_jobs(pictures)
    jobs[2].params = resolve_params({**VALUES, "tv_weight": 3.0})

    with pytest.raises(ValueError, match="every parameter but the seed"):
        transfer_batch(jobs, backbone=backbone)


def test_jobs_whose_long_side_gives_other_shapes_cannot_share_a_batch(pictures, backbone):
    jobs = three_jobs(pictures, size=32)
    # The same long side on a portrait picture: 32 tall instead of 32 wide.
    jobs[2].content = jobs[2].content.transpose(0)

    with pytest.raises(ValueError, match="same output size"):
        transfer_batch(jobs, backbone=backbone)


def test_a_repeated_style_is_served_from_the_target_cache(pictures, backbone):
    cache = TargetCache(max_entries=2)
    job = three_jobs(pictures)[0]

    first = transfer(job.content, job.style, job.params, backbone=backbone, target_cache=cache)
    second = transfer(job.content, job.style, job.params, backbone=backbone, target_cache=cache)

    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
    assert torch.equal(first.tensor, second.tensor)


def test_the_target_cache_forgets_the_least_recently_used_style(pictures, backbone):
    cache = TargetCache(max_entries=2)
    params = resolve_params({**VALUES, "iterations": 1})
    for style in (pictures[0], pictures[1], pictures[0], pictures[2], pictures[0]):
        transfer(pictures[0], style, params, backbone=backbone, target_cache=cache)

    # pictures[1] was pushed out by pictures[2]; pictures[0] stayed, being used most recently.
    assert (cache.misses, cache.hits, len(cache)) == (3, 2, 2)
