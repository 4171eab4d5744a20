"""The finer-scale bench (bench/finer_scale.py): variants resume one saved first scale and differ only after it."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from bench.finer_scale import main, parse_variant, variant_params
from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import build_backbone, transfer

pytestmark = pytest.mark.slow


def test_a_variant_may_change_only_what_acts_after_the_first_scale():
    name, overrides = parse_variant('start at 1x={"fine_content_factor": 1, "finer_iterations": 50}')

    assert name == "start at 1x" and overrides == {"fine_content_factor": 1, "finer_iterations": 50}
    with pytest.raises(argparse.ArgumentTypeError, match="learning_rate would change the first scale"):
        parse_variant('faster={"learning_rate": 0.05}')
    with pytest.raises(argparse.ArgumentTypeError, match="not JSON"):
        parse_variant("broken={fine_lr_factor: 1}")


def test_finer_iterations_set_every_finer_scale_s_count_and_keep_the_first_scale_s():
    base = resolve_params({"size": 2048}).with_schedule(1200, 900)

    params = variant_params(base, {"finer_iterations": 50, "fine_lr_factor": 1.0})

    assert base.iterations_per_scale() == (240, 60, 60)
    assert params.iterations_per_scale() == (240, 50, 50) and params.iterations == 340 and params.fine_lr_factor == 1.0


# Two 520 px jobs, a resumed one and their measures on the real network, about two minutes here: the full tier.
@pytest.mark.full
def test_the_preset_s_variant_is_the_whole_job_run_at_once_and_a_second_run_reuses_the_first_scale(
    tmp_path, images_dir, caffe_weights, models_dir, monkeypatch, capsys
):
    monkeypatch.setenv("STYLEQ_MODEL_DIR", str(models_dir))
    arguments = ["--content", "rainier.jpg", "--style", "autumn-oak.jpg", "--size", "520", "--iterations", "10", "--output", str(tmp_path)]

    main([*arguments, "--variant", "preset={}", "--variant", 'held at 1.5x={"fine_content_hold": 1.5}'])
    first = capsys.readouterr().out
    main([*arguments, "--variant", "again={}"])
    second = capsys.readouterr().out

    content = Image.open(images_dir / "rainier.jpg").convert("RGB")
    params = resolve_params({"size": 520, "iterations": 10}).with_schedule(*content.size)
    whole = transfer(
        content, Image.open(images_dir / "autumn-oak.jpg").convert("RGB"), params, backbone=build_backbone(caffe_weights, params, "cpu")
    )
    pictures = (
        Image.open(tmp_path / f"rainier-autumn-oak-520-{params.iterations}-{name}.png") for name in ("preset", "again", "held_at_1.5x")
    )
    preset, again, held = (np.asarray(picture) for picture in pictures)
    assert np.array_equal(preset, np.asarray(whole.image)) and np.array_equal(again, preset)
    assert not np.array_equal(held, preset)
    assert f"scales {list(params.resolved_scales())}, iterations {list(params.iterations_per_scale())}" in first and "relu1_1" in first
    assert [line.split()[0] for line in first.splitlines()[2:]] == ["preset", "held"]
    # The second run loads the saved first scale: one state file, and it reports the first run's seconds.
    assert len(list(tmp_path.glob("*-first-scale.pt"))) == 1 and first.splitlines()[0] == second.splitlines()[0]
