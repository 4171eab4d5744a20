"""The result file names the precision its job ran in, so "auto" can be told as what it became (the job page shows it)."""

from __future__ import annotations

import pytest
import torch

from styleq.shared.adapters.outputs import read_metadata
from styleq.worker.engine import resolve_precision
from tests.worker.test_runner import database, factory, make_runner, settings, storage, submit  # noqa: F401 (fixtures)


@pytest.mark.parametrize("asked", ["auto", "fp32"])
def test_the_result_records_the_precision_the_network_ran_in(asked, settings, factory, storage, images_dir, vgg16_random):  # noqa: F811
    job_id = submit(factory, storage, images_dir, iterations=10, precision=asked)

    assert make_runner(settings, factory, storage, vgg16_random).run(job_id) == "succeeded"

    metadata = read_metadata(storage.job_path(job_id, "result.png"))
    # "auto" is bf16 on a CPU with native bf16 arithmetic, fp32 elsewhere: what the worker resolved, never "auto".
    assert metadata["precision"] == resolve_precision(asked, torch.device("cpu")) and metadata["params"]["precision"] == asked
