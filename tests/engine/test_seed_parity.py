"""The `seed` preset reproduces the notebook number for number."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision import models

from shared.params import resolve_params
from worker.engine import Backbone, get_convention, transfer

SHAPE = (48, 72)
ITERATIONS = 30


def run_notebook(content_img, style_img, state_dict, image_shape, num_epochs):
    """The seed notebook's code, kept as written there (in-place ReLU, `10 * styles_l`, no no_grad)."""
    rgb_mean = torch.tensor([0.485, 0.456, 0.406])
    rgb_std = torch.tensor([0.229, 0.224, 0.225])

    def preprocess(img, image_shape):
        transforms = torchvision.transforms.Compose([
            torchvision.transforms.Resize(image_shape),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(mean=rgb_mean, std=rgb_std)])
        return transforms(img).unsqueeze(0)

    pretrained_net = models.vgg19(weights=None)
    pretrained_net.features.load_state_dict({k.removeprefix("features."): v for k, v in state_dict.items()})
    style_layers, content_layers = [0, 5, 10, 19, 28], [25]
    net = nn.Sequential(*[pretrained_net.features[i] for i in range(max(content_layers + style_layers) + 1)])

    def extract_features(X, content_layers, style_layers):
        contents, styles = [], []
        for i in range(len(net)):
            X = net[i](X)
            if i in style_layers:
                styles.append(X)
            if i in content_layers:
                contents.append(X)
        return contents, styles

    def content_loss(Y_hat, Y):
        return torch.square(Y_hat - Y.detach()).mean()

    def gram(X):
        num_channels, n = X.shape[1], X.numel() // X.shape[1]
        X = X.reshape((num_channels, n))
        return torch.matmul(X, X.T) / (num_channels * n)

    def style_loss(Y_hat, gram_Y):
        return torch.square(gram(Y_hat) - gram_Y.detach()).mean()

    def tv_loss(Y_hat):
        return 0.5 * (torch.abs(Y_hat[:, :, 1:, :] - Y_hat[:, :, :-1, :]).mean() +
                      torch.abs(Y_hat[:, :, :, 1:] - Y_hat[:, :, :, :-1]).mean())

    class SynthesizedImage(nn.Module):
        def __init__(self, img_shape):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(*img_shape))

        def forward(self):
            return self.weight

    content_weight, style_weight, tv_weight = 1, 1e3, 10

    def compute_loss(X, contents_Y_hat, styles_Y_hat, contents_Y, styles_Y_gram):
        contents_l = [content_loss(Y_hat, Y) * content_weight for Y_hat, Y in zip(contents_Y_hat, contents_Y)]
        styles_l = [style_loss(Y_hat, Y) * style_weight for Y_hat, Y in zip(styles_Y_hat, styles_Y_gram)]
        tv_l = tv_loss(X) * tv_weight
        l = sum(10 * styles_l + contents_l + [tv_l])
        return contents_l, styles_l, tv_l, l

    content_X = preprocess(content_img, image_shape)
    contents_Y, _ = extract_features(content_X, content_layers, style_layers)
    style_X = preprocess(style_img, image_shape)
    _, styles_Y = extract_features(style_X, content_layers, style_layers)

    gen_img = SynthesizedImage(content_X.shape)
    gen_img.weight.data.copy_(content_X.data)
    trainer = torch.optim.Adam(gen_img.parameters(), lr=0.3)
    styles_Y_gram = [gram(Y) for Y in styles_Y]
    X = gen_img()
    scheduler = torch.optim.lr_scheduler.StepLR(trainer, 50, 0.8)
    history = []
    for epoch in range(num_epochs):
        trainer.zero_grad()
        contents_Y_hat, styles_Y_hat = extract_features(X, content_layers, style_layers)
        contents_l, styles_l, tv_l, l = compute_loss(X, contents_Y_hat, styles_Y_hat, contents_Y, styles_Y_gram)
        l.backward()
        trainer.step()
        scheduler.step()
        if (epoch + 1) % 10 == 0:
            history.append((epoch + 1, float(sum(contents_l)), float(sum(styles_l)), float(tv_l), float(l)))
    postprocessed = torch.clamp(X.detach()[0].permute(1, 2, 0) * rgb_std + rgb_mean, 0, 1).permute(2, 0, 1)
    return history, X.detach(), postprocessed


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # the notebook's own float(l)
def test_seed_preset_matches_the_notebook_checkpoint_by_checkpoint(rainier, autumn_oak, vgg19_random):
    expected_history, expected_tensor, expected_picture = run_notebook(rainier, autumn_oak, vgg19_random, SHAPE, ITERATIONS)

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
