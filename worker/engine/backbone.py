"""VGG feature extractors with named layers, truncation and input conventions."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models

# Convolutions per block; the rest of each architecture's layer names follows from these.
_BLOCK_DEPTHS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
ARCHITECTURES = tuple(_BLOCK_DEPTHS)


def layer_names(architecture: str) -> list[str]:
    """Return the names of `features` modules in index order (conv1_1, relu1_1, ..., pool5)."""
    if architecture not in _BLOCK_DEPTHS:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    names = []
    for block, depth in enumerate(_BLOCK_DEPTHS[architecture], start=1):
        for conv in range(1, depth + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


def layer_index(architecture: str) -> dict[str, int]:
    """Map each layer name of `architecture` to its index in torchvision's `features`."""
    return {name: index for index, name in enumerate(layer_names(architecture))}


def architecture_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell VGG16 from VGG19 by counting the convolution weights of a torchvision-layout state dict."""
    convolutions = [key for key in state_dict if key.startswith("features.") and key.endswith(".weight")]
    for architecture, depths in _BLOCK_DEPTHS.items():
        if len(convolutions) == sum(depths):
            return architecture
    raise ValueError(f"expected the convolution weights of a torchvision VGG16 (13) or VGG19 (16), found {len(convolutions)}")


_CONSTANTS: dict[tuple[str, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


@dataclass(frozen=True)
class InputConvention:
    """How a network wants its input: channel order, scale and per-channel normalisation."""

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Made once per device and dtype: a copy from the host on every call would stall a GPU's queue, and
        # inside a CUDA graph capture it is not allowed at all.
        key = (self.name, like.device, like.dtype)
        if (found := _CONSTANTS.get(key)) is None:
            # Never inference tensors, even when first made under inference_mode: autograd saves them later.
            with torch.inference_mode(False):
                found = _CONSTANTS[key] = (like.new_tensor(self.mean).view(1, 3, 1, 1), like.new_tensor(self.std).view(1, 3, 1, 1))
        return found

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """Turn an RGB image in [0, 1] of shape (N, 3, H, W) into the network's input space."""
        x = rgb.flip(1) if self.bgr else rgb
        mean, std = self._constants(x)
        return (x * self.scale - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Turn the network's input space back into RGB in [0, 1] (not clamped)."""
        mean, std = self._constants(x)
        rgb = (x * std + mean) / self.scale
        return rgb.flip(1) if self.bgr else rgb


CONVENTIONS = {
    # torchvision's ImageNet models: RGB in [0, 1], normalised by the ImageNet mean and std.
    "torchvision": InputConvention("torchvision", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    # The original Caffe/Keras VGG release: BGR, 0-255, mean subtracted, no division.
    "caffe": InputConvention("caffe", bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
}


def get_convention(name: str) -> InputConvention:
    """Look up an input convention by name."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown input convention {name!r}; expected one of {', '.join(CONVENTIONS)}") from None


class Backbone(nn.Module):
    """A frozen VGG `features` stack cut after the deepest requested layer, returning named activations.

    The ReLUs run out of place: torchvision's in-place ReLU would overwrite a stored conv output, which
    is how the seed notebook ends up comparing post-ReLU activations at conv indices. Here a caller asks
    for `relu4_4` or `conv4_4` by name and gets exactly that.
    """

    _bf16_copy: nn.Sequential | None  # see the end of __init__

    def __init__(
        self, architecture: str, state_dict: Mapping[str, torch.Tensor], convention: InputConvention, layers: Sequence[str]
    ) -> None:
        super().__init__()
        index = layer_index(architecture)
        unknown = [name for name in layers if name not in index]
        if unknown:
            raise ValueError(f"unknown {architecture} layer(s) {', '.join(unknown)}; expected names like conv4_2 or relu3_1")
        if not layers:
            raise ValueError("at least one layer is needed")
        # Built on the meta device and then given the real tensors: initialising the ~120M classifier
        # weights that style transfer never uses would cost seconds per backbone.
        with torch.device("meta"):
            network = getattr(models, architecture)(weights=None)
        features_state = {key.removeprefix("features."): value for key, value in state_dict.items() if key.startswith("features.")}
        network.features.load_state_dict(features_state, assign=True)
        # Assigned tensors keep the layout they came in; fp32 runs in the notebook's (`memory_format`).
        network.features.to(memory_format=self.memory_format(bf16=False))
        deepest = max(index[name] for name in layers)
        self.features = network.features[: deepest + 1]
        for module in self.features:
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.features.requires_grad_(False)
        self.eval()
        self.architecture = architecture
        self.convention = convention
        self.names = layer_names(architecture)[: deepest + 1]
        # The layers with bf16 weights, made on the first bf16 call (`_bf16_features`); not a submodule, so
        # neither the state dict nor `.to()` sees it, and it is made again if the weights move.
        object.__setattr__(self, "_bf16_copy", None)

    @staticmethod
    def memory_format(bf16: bool) -> torch.memory_format:
        """Return the layout the network runs in: channels-last in bf16, torch's default (the notebook's) in fp32.

        Channels-last is the layout cuDNN's tensor cores and oneDNN's bf16 kernels want. fp32 stays in the layout
        the notebook runs in, because the layout picks the convolution algorithm: channels-last fp32 sums in
        another order and the seed's losses drift from the notebook's (3.5e-3 relative after 30 iterations at
        64x96), while on this project's CPU it is no faster (docs/ENGINE.md, "No wasted work").
        """
        return torch.channels_last if bf16 else torch.contiguous_format

    def _bf16_features(self) -> nn.Sequential:
        """Return the layers with their weights in bf16 (the same values autocast would cast them to), made once."""
        first = self.features[0].weight
        made: nn.Sequential | None = self._bf16_copy
        if made is None or made[0].weight.device != first.device:
            # Never inference tensors, even when first made under inference_mode: convolutions save their weights for backward.
            with torch.inference_mode(False), torch.no_grad():
                made = copy.deepcopy(self.features).to(torch.bfloat16).to(memory_format=self.memory_format(bf16=True))
            object.__setattr__(self, "_bf16_copy", made)  # past nn.Module's __setattr__, which would make it a submodule
        return made

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run `x` (already in the network's input space) and return the activations named in `layers`.

        Under bf16 autocast the layers run with bf16 copies of their weights: the same arithmetic, without
        casting every weight again on every call (26 casts an iteration for VGG16 up to conv5_1). The input is
        put in the layout of the weights it meets (`memory_format`), so no convolution converts it and fp32
        runs the notebook's convolutions whatever layout the caller's tensor had.
        """
        wanted = set(layers)
        activations = {}
        device = x.device.type
        bf16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
        x = x.contiguous(memory_format=self.memory_format(bf16))
        for name, module in zip(self.names, self._bf16_features() if bf16 else self.features):
            x = module(x)
            if name in wanted:
                activations[name] = x
        return activations
