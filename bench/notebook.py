"""The seed notebook's style-transfer code, kept as written there: the one reference copy.

`tests/engine/test_seed_parity.py` checks the `seed` preset against it number for number, and
`bench/seed_speed.py` times the engine against it. Its oddities (in-place ReLUs, `10 * styles_l`, no
`no_grad`, trainable network parameters) are the notebook's and stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import models

Losses = tuple[float, float, float, float]  # content, style, tv, total
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def notebook_net(state_dict: dict[str, torch.Tensor], device: torch.device | str) -> nn.Sequential:
    """Build the notebook's truncated VGG19 as it does: in-place ReLUs, parameters left trainable."""
    pretrained_net = models.vgg19(weights=None)
    pretrained_net.features.load_state_dict({key.removeprefix("features."): value for key, value in state_dict.items()})
    return nn.Sequential(*[pretrained_net.features[i] for i in range(28 + 1)]).to(device)


def run_notebook(
    net: nn.Sequential,
    content_img: Image.Image,
    style_img: Image.Image,
    image_shape,
    num_epochs: int,
    device,
    readings: list[tuple[int, float, float]] | None = None,
    *,
    on_reading: Callable[[int, Losses, torch.Tensor], None] | None = None,
) -> Losses:
    """Run the seed notebook's code as written there and return the losses of its last iteration.

    `readings`, when given, receives (iteration, total loss, seconds since the call) at every reading;
    `on_reading` is called with the iteration, the losses and a copy of the picture tensor at each.
    """
    started = time.perf_counter()
    rgb_mean = torch.tensor(RGB_MEAN)
    rgb_std = torch.tensor(RGB_STD)

    def preprocess(img, image_shape):
        transforms = torchvision.transforms.Compose(
            [
                torchvision.transforms.Resize(image_shape),
                torchvision.transforms.ToTensor(),
                torchvision.transforms.Normalize(mean=rgb_mean, std=rgb_std),
            ]
        )
        return transforms(img).unsqueeze(0)

    style_layers, content_layers = [0, 5, 10, 19, 28], [25]

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
        return 0.5 * (
            torch.abs(Y_hat[:, :, 1:, :] - Y_hat[:, :, :-1, :]).mean() + torch.abs(Y_hat[:, :, :, 1:] - Y_hat[:, :, :, :-1]).mean()
        )

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

    # The notebook's `get_contents` and `get_styles`, which move the inputs to the device.
    content_X = preprocess(content_img, image_shape).to(device)
    contents_Y, _ = extract_features(content_X, content_layers, style_layers)
    style_X = preprocess(style_img, image_shape).to(device)
    _, styles_Y = extract_features(style_X, content_layers, style_layers)

    gen_img = SynthesizedImage(content_X.shape).to(device)
    gen_img.weight.data.copy_(content_X.data)
    trainer = torch.optim.Adam(gen_img.parameters(), lr=0.3)
    styles_Y_gram = [gram(Y) for Y in styles_Y]
    X = gen_img()
    scheduler = torch.optim.lr_scheduler.StepLR(trainer, 50, 0.8)
    losses: Losses = (0.0, 0.0, 0.0, 0.0)
    for epoch in range(num_epochs):
        trainer.zero_grad()
        contents_Y_hat, styles_Y_hat = extract_features(X, content_layers, style_layers)
        contents_l, styles_l, tv_l, l = compute_loss(X, contents_Y_hat, styles_Y_hat, contents_Y, styles_Y_gram)
        l.backward()
        trainer.step()
        scheduler.step()
        # The notebook reads the losses every 10 epochs; the last epoch too here, so both runs end on a reading.
        if (epoch + 1) % 10 == 0 or epoch + 1 == num_epochs:
            losses = (float(sum(contents_l)), float(sum(styles_l)), float(tv_l), float(l))
            if readings is not None:
                readings.append((epoch + 1, losses[-1], time.perf_counter() - started))
            if on_reading is not None:
                on_reading(epoch + 1, losses, X.detach().clone())
    return losses


def postprocess(X: torch.Tensor) -> torch.Tensor:
    """Return the notebook's picture of tensor `X` (its `postprocess`, left as CHW in [0, 1])."""
    rgb_mean, rgb_std = torch.tensor(RGB_MEAN), torch.tensor(RGB_STD)
    return torch.clamp(X[0].permute(1, 2, 0) * rgb_std + rgb_mean, 0, 1).permute(2, 0, 1)
