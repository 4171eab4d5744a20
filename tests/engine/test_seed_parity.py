"""The `seed` preset reproduces the notebook number for number."""

from __future__ import annotations

import pytest
import torch

from shared.params import resolve_params
from tests.notebook import notebook_net, postprocess, run_notebook
from worker.engine import Backbone, get_convention, transfer

SHAPE = (48, 72)
ITERATIONS = 30


def notebook_history(content_img, style_img, state_dict, image_shape, num_epochs):
    """Run the notebook's code (tests/notebook.py) and return its readings, final tensor and picture."""
    history, final = [], []

    def on_reading(iteration, losses, X):
        history.append((iteration, *losses))
        final[:] = [X]

    run_notebook(notebook_net(state_dict, "cpu"), content_img, style_img, image_shape, num_epochs, "cpu", on_reading=on_reading)
    return history, final[0], postprocess(final[0])


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # the notebook's own float(l)
def test_seed_preset_matches_the_notebook_checkpoint_by_checkpoint(rainier, autumn_oak, vgg19_random):
    expected_history, expected_tensor, expected_picture = notebook_history(rainier, autumn_oak, vgg19_random, SHAPE, ITERATIONS)

    params = resolve_params({"preset": "seed", "size": list(SHAPE), "iterations": ITERATIONS})
    backbone = Backbone("vgg19", vgg19_random, get_convention("torchvision"), params.layers)
    checkpoints = []
    result = transfer(rainier, autumn_oak, params, backbone=backbone, on_checkpoint=checkpoints.append)

    assert [c.iteration for c in checkpoints] == [10, 20, 30]
    for checkpoint, (iteration, content, style, tv, total) in zip(checkpoints, expected_history):
        assert checkpoint.iteration == iteration
        for ours, theirs in [(checkpoint.content, content), (checkpoint.style, style), (checkpoint.tv, tv), (checkpoint.total, total)]:
            assert abs(ours - theirs) <= 1e-5 * abs(theirs), (iteration, ours, theirs)
    torch.testing.assert_close(result.state.image, expected_tensor, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.tensor.clamp(0, 1)[0], expected_picture, rtol=1e-5, atol=1e-5)


def test_seed_preset_is_the_notebook_configuration():
    params = resolve_params({"preset": "seed"})
    assert params.size == (300, 450) and params.iterations == 500
    assert params.content_layers == ("relu4_4",)
    assert params.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1")
    assert (params.content_weight, params.style_weight, params.tv_weight, params.style_repeats) == (1, 1e3, 10, 10)
    assert (params.optimizer, params.learning_rate, params.lr_decay_step, params.lr_decay_gamma) == ("adam", 0.3, 50, 0.8)
    assert params.weights == "vgg19" and params.image_space == "network" and params.init == "content"
