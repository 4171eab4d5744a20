"""The backbone: VGG layers by name, cut after the deepest one asked for, frozen, in either input convention."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as T
from torch import nn
from torchvision import models

from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, build_backbone, get_convention, layer_index, layer_names
from styleq.worker.engine.backbone import architecture_from_state_dict
from styleq.worker.engine.weights import LoadedWeights

KINDS = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}


def torchvision_features(architecture: str, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Sequential:
    """Return torchvision's own `features` stack, on the meta device unless weights are given to load.

    Made on the meta device either way: a VGG made on the CPU first draws random weights for its whole classifier
    (over 100 million), about a second, only for them to be dropped; the given weights are then put in as copies.
    """
    with torch.device("meta"):
        features = getattr(models, architecture)(weights=None).features
    if state_dict is not None:
        features.load_state_dict({key.removeprefix("features."): value.clone() for key, value in state_dict.items()}, assign=True)
    return features


@pytest.mark.parametrize(("architecture", "length"), [("vgg19", 37), ("vgg16", 31)])
def test_layer_names_cover_torchvision_features_one_for_one(architecture, length):
    names = layer_names(architecture)
    features = torchvision_features(architecture)

    assert len(names) == len(features) == length
    assert len(set(names)) == length
    for index, (name, module) in enumerate(zip(names, features)):
        kind = name.rstrip("0123456789_")
        assert isinstance(module, KINDS[kind]), (index, name, module)


def test_vgg19_layer_indices_are_those_of_the_seed_notebook():
    index = layer_index("vgg19")

    assert index["conv1_1"] == 0
    assert index["relu1_1"] == 1
    assert index["conv2_1"] == 5
    assert index["conv3_1"] == 10
    assert index["conv4_1"] == 19
    assert index["conv4_4"] == 25
    assert index["relu4_4"] == 26
    assert index["conv5_1"] == 28
    assert index["pool5"] == 36


def test_vgg16_layer_indices_follow_its_three_convolution_blocks():
    index = layer_index("vgg16")

    assert index["relu4_2"] == 20
    assert index["conv4_3"] == 21
    assert index["conv5_1"] == 24
    assert index["pool5"] == 30
    assert "conv4_4" not in index


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="vgg11"):
        layer_names("vgg11")


def test_backbone_keeps_exactly_the_modules_up_to_the_deepest_requested_layer(vgg19_random):
    backbone = Backbone("vgg19", vgg19_random, get_convention("torchvision"), ["relu1_1", "relu3_1"])
    expected = torchvision_features("vgg19")[:12]

    assert len(backbone.features) == 12
    assert [type(module) for module in backbone.features] == [type(module) for module in expected]
    assert backbone.names == layer_names("vgg19")[:12]
    assert backbone.names[-1] == "relu3_1"


@pytest.mark.parametrize("architecture", ["vgg19", "vgg16"])
def test_backbone_asked_for_pool5_keeps_every_module(architecture, vgg19_random, vgg16_random):
    state_dict = {"vgg19": vgg19_random, "vgg16": vgg16_random}[architecture]

    backbone = Backbone(architecture, state_dict, get_convention("torchvision"), ["pool5"])

    assert len(backbone.features) == len(torchvision_features(architecture))
    assert backbone.names == layer_names(architecture)


@pytest.fixture(scope="module")
def block4_backbone(vgg19_random) -> Backbone:
    """A VGG19 backbone asked for the same layer before and after its ReLU."""
    return Backbone("vgg19", vgg19_random, get_convention("torchvision"), ["conv4_4", "relu4_4"])


def test_backbone_is_frozen(block4_backbone):
    parameters = list(block4_backbone.parameters())

    assert parameters
    assert not any(parameter.requires_grad for parameter in parameters)


def test_backbone_relus_run_out_of_place(block4_backbone):
    relus = [module for module in block4_backbone.features if isinstance(module, nn.ReLU)]

    assert len(relus) == 12
    assert not any(relu.inplace for relu in relus)


def test_backbone_passes_gradients_through_to_its_input(block4_backbone):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)

    block4_backbone(x, ["relu4_4"])["relu4_4"].sum().backward()

    assert x.grad is not None and x.grad.abs().sum() > 0


def test_conv_layer_is_the_pre_relu_activation_and_relu_layer_its_rectification(block4_backbone, vgg19_random):
    x = torch.rand(1, 3, 32, 32)
    reference = torchvision_features("vgg19", vgg19_random)

    activations = block4_backbone(x, ["conv4_4", "relu4_4"])
    with torch.no_grad():
        expected_conv = reference[: layer_index("vgg19")["conv4_4"] + 1](x.clone())
        expected_relu = reference[: layer_index("vgg19")["relu4_4"] + 1](x.clone())

    assert set(activations) == {"conv4_4", "relu4_4"}
    torch.testing.assert_close(activations["conv4_4"], expected_conv, rtol=0, atol=0)
    torch.testing.assert_close(activations["relu4_4"], expected_relu, rtol=0, atol=0)
    # The two really differ: the ReLU did not overwrite the stored convolution output.
    assert (activations["conv4_4"] < 0).any()
    torch.testing.assert_close(activations["relu4_4"], activations["conv4_4"].clamp_min(0), rtol=0, atol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["contiguous input", "channels-last input"])
def test_fp32_runs_the_notebooks_convolutions_and_bf16_runs_channels_last(vgg19_random, layout):
    # Built as the CLI and the worker build it: the layout picks the convolution algorithm, so it decides the seed's parity.
    params = resolve_params({"preset": "seed"})
    backbone = build_backbone(LoadedWeights("vgg19", "vgg19", get_convention("torchvision"), vgg19_random), params)
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    reference = torchvision_features("vgg19", vgg19_random)

    fp32 = backbone(x.contiguous(memory_format=layout), ["conv5_1"])["conv5_1"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = backbone(x.contiguous(memory_format=layout), ["conv5_1"])["conv5_1"]
    with torch.no_grad():
        expected = reference[: layer_index("vgg19")["conv5_1"] + 1](x)  # the notebook's: torch's default layout throughout

    assert fp32.is_contiguous()
    torch.testing.assert_close(fp32, expected, rtol=0, atol=0)
    assert bf16.dtype == torch.bfloat16 and bf16.is_contiguous(memory_format=torch.channels_last) and not bf16.is_contiguous()


def test_backbone_returns_only_the_layers_asked_for(block4_backbone):
    activations = block4_backbone(torch.rand(1, 3, 32, 32), ["relu4_4"])

    assert list(activations) == ["relu4_4"]


def test_unknown_layer_names_are_refused_by_name(vgg16_random):
    # VGG16 has three convolutions in block 5, so conv5_4 exists only in VGG19.
    with pytest.raises(ValueError, match="conv5_4"):
        Backbone("vgg16", vgg16_random, get_convention("caffe"), ["relu4_2", "conv5_4"])
    with pytest.raises(ValueError, match="relu9_1"):
        Backbone("vgg19", vgg16_random, get_convention("torchvision"), ["relu9_1"])


def test_backbone_needs_at_least_one_layer(vgg19_random):
    with pytest.raises(ValueError, match="layer"):
        Backbone("vgg19", vgg19_random, get_convention("torchvision"), [])


def test_architecture_is_told_from_the_state_dict(vgg19_random, vgg16_random):
    assert architecture_from_state_dict(vgg19_random) == "vgg19"
    assert architecture_from_state_dict(vgg16_random) == "vgg16"


def test_state_dict_of_neither_architecture_is_refused(vgg16_random):
    truncated = {key: value for key, value in vgg16_random.items() if not key.startswith("features.28.")}

    with pytest.raises(ValueError, match="found 12"):
        architecture_from_state_dict(truncated)


def test_unknown_convention_is_refused_by_name():
    with pytest.raises(ValueError, match="keras"):
        get_convention("keras")


def test_torchvision_convention_is_imagenet_normalisation():
    rgb = torch.rand(2, 3, 5, 7)
    imagenet = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    torch.testing.assert_close(get_convention("torchvision").normalize(rgb), imagenet(rgb))


def test_caffe_convention_is_bgr_in_0_to_255_minus_the_channel_means():
    # Two pixels, RGB (1.0, 0.5, 0.0) and (0.2, 0.4, 0.6), as a 1x3x1x2 image.
    rgb = torch.tensor([[[[1.0, 0.2]], [[0.5, 0.4]], [[0.0, 0.6]]]])

    # BGR x 255 = (0, 127.5, 255) and (153, 102, 51), less (103.939, 116.779, 123.68).
    expected = torch.tensor([[[[-103.939, 49.061]], [[10.721, -14.779]], [[131.32, -72.68]]]])
    torch.testing.assert_close(get_convention("caffe").normalize(rgb), expected)


@pytest.mark.parametrize("name", ["torchvision", "caffe"])
def test_denormalize_undoes_normalize(name):
    convention = get_convention(name)
    rgb = torch.rand(1, 3, 6, 4)

    torch.testing.assert_close(convention.denormalize(convention.normalize(rgb)), rgb)
