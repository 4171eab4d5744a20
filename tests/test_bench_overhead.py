"""bench/overhead.py's tables come out whole, with finite positive times and ratios, at a tiny size on random weights."""

from __future__ import annotations

import math

import pytest
import torch

from bench.overhead import SCENARIOS, JobTiming, steady_row, steady_table, warmup_jobs, warmup_ratios, warmup_table
from styleq.worker.engine import get_convention
from styleq.worker.engine.weights import LoadedWeights

SIZE, NEW_SIZE = (32, 48), (40, 48)
CPU = torch.device("cpu")


@pytest.fixture
def weights(vgg16_random, vgg19_random):
    return {
        "styleq": LoadedWeights("vgg16-caffe", "vgg16", get_convention("caffe"), vgg16_random),
        "seed": LoadedWeights("vgg19", "vgg19", get_convention("torchvision"), vgg19_random),
    }


@pytest.mark.parametrize(("preset", "precision"), [("styleq", "bf16"), ("seed", "fp32")])
def test_the_steady_row_times_the_engine_and_the_bare_backbone(weights, rainier, autumn_oak, preset, precision):
    row = steady_row((weights[preset], "random"), preset, precision, SIZE, 4, (rainier, autumn_oak), CPU, repeats=2, steady_from=2)

    assert (row.preset, row.precision, row.size) == (preset, precision, SIZE)
    assert all(math.isfinite(value) and value > 0 for value in (row.engine, row.bare, row.ratio))
    lines = steady_table([row])
    assert len(lines) == 3 and f"{row.ratio:.3f}x" in lines[-1] and "32x48" in lines[-1]


def test_the_warmup_jobs_time_every_iteration_of_each_scenario(weights, rainier, autumn_oak):
    jobs = warmup_jobs(weights["styleq"], "styleq", "fp32", (SIZE, NEW_SIZE), 4, (rainier, autumn_oak), CPU)

    assert list(jobs) == list(SCENARIOS)
    for timing in jobs.values():
        assert len(timing.iterations) == 4 and timing.setup > 0 and all(seconds > 0 for seconds in timing.iterations)
        ratios, total = warmup_ratios(timing, steady_from=2, window=3)
        assert len(ratios) == 3 and all(math.isfinite(ratio) and ratio > 0 for ratio in ratios) and math.isfinite(total)
    lines = warmup_table({("styleq", "fp32"): jobs}, dict(zip(SCENARIOS, (SIZE, SIZE, NEW_SIZE))), steady_from=2)
    assert len(lines) == 2 + len(SCENARIOS) and "40x48" in lines[-1]


def test_the_warmup_ratio_is_the_first_iterations_over_as_many_steady_ones():
    timing = JobTiming(setup=1.0, iterations=[3.0, 2.0, 1.0, 1.0, 1.0, 1.0])

    ratios, total = warmup_ratios(timing, steady_from=2, window=3)

    assert ratios == [3.0, 2.0, 1.0] and total == pytest.approx(2.0)
