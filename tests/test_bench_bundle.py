"""The GPU bundle's packed weights come back byte for byte (bench/bundle.py carries them to a machine with no network)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from bench.bundle import pack_weights, unpack_weights


def test_packed_weights_unpack_to_the_same_bytes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    # An odd number of bytes in the body, as no real file has, to show the padding comes off again.
    tensors = {"features.0.weight": torch.randn(64, 3, 3, 3, generator=generator), "features.0.bias": torch.randn(3).to(torch.bfloat16)}
    original = tmp_path / "weights.safetensors"
    save_file(tensors, original)

    pack_weights(original, tmp_path / "weights.planes.xz")
    unpack_weights(tmp_path / "weights.planes.xz", tmp_path / "back" / "weights.safetensors")

    assert (tmp_path / "back" / "weights.safetensors").read_bytes() == original.read_bytes()
