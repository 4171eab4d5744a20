"""crowsonkb/style-transfer-pytorch's weights (bench/crowsonkb.py): Caffe's VGG-19 rewritten for torchvision's input."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.crowsonkb import CAFFE_BGR_MEAN, FEATURE_INDICES, TORCHVISION_MEAN, TORCHVISION_STD, caffe_to_torchvision, scales


def test_the_folded_first_convolution_on_torchvision_s_input_is_caffe_s_on_its_own_input():
    generator = torch.Generator().manual_seed(0)
    kernels = [torch.randn(64, 3, 3, 3, generator=generator)] + [torch.randn(8, 8, 3, 3) for _ in FEATURE_INDICES[1:]]
    biases = [torch.randn(64, generator=generator)] + [torch.randn(8) for _ in FEATURE_INDICES[1:]]
    rgb = torch.rand(1, 3, 20, 30, generator=generator, dtype=torch.float64)

    state = caffe_to_torchvision(kernels, biases)
    # Caffe's convention: BGR, 0-255, its mean subtracted; torchvision's: RGB in [0, 1], normalised.
    caffe_input = rgb.flip(1) * 255 - torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (TORCHVISION_MEAN, TORCHVISION_STD))
    torchvision_input = (rgb - mean) / std

    def first_convolution(image: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # The tool pads its first convolution by replicating the edge, which the fold commutes with.
        return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), weight.double(), bias.double())

    expected = first_convolution(caffe_input, kernels[0], biases[0])
    found = first_convolution(torchvision_input, state["features.0.weight"], state["features.0.bias"])

    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-3)
    assert state["features.34.weight"] is not None and state["classifier.6.weight"].shape == (1000, 4096)


def test_the_scales_are_the_tool_s_own_from_128_px_up_in_steps_of_root_two():
    assert scales(1024) == [128, 181, 256, 362, 512, 724, 1024]
    assert scales(450) == [159, 225, 318, 450]
