"""A batch's Adam iteration captured once as a CUDA graph and replayed: the GPU's launch overhead gone from the loop.

At the seed's 300x450 an H100 finishes one iteration's arithmetic in well under a millisecond, while
Python and the CUDA driver need about as long again to launch its ~200 kernels one by one. A graph
launches them all at once. Adam runs in its fused, `capturable` form (its step count and learning rate live
on the device, so a replay reads the current ones); L-BFGS decides on the host, so it never runs here.

Saved states stay portable: `portable_optimizer_state` turns a capturable optimiser's state into the
plain form a CPU run loads, and `make_capturable` turns it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

# Eager iterations before a capture: cuDNN's algorithm choice and the allocator settle in them, and a
# capture needs both settled (the warm-up of the PyTorch CUDA graphs guide).
WARMUP_ITERATIONS = 3
# A capture costs about as much as a few iterations; fewer left than this, and eager is as fast.
MIN_REPLAYS = 8


def graphs_apply(device: torch.device, optimizer: str, line_search: str) -> bool:
    """Tell whether a run of this optimiser on `device` can have its iteration captured."""
    return device.type == "cuda" and optimizer == "adam" and line_search == "none"


def capturable_adam(image: torch.Tensor, lr: torch.Tensor) -> torch.optim.Adam:
    """Return an Adam whose step count and learning rate (`lr`, a device tensor) stay on the device, as a graph needs.

    Fused: one kernel updates the picture and both moments, where the capturable multi-tensor form took about
    ten (11 % of an H100's time at 300x450 in `bench/results/gpu-h100-2026-11-26-after-fixes.txt`).
    """
    return torch.optim.Adam([image], lr=lr, capturable=True, fused=True)


def make_capturable(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> None:
    """After loading a portable state into `optimizer`, put its learning rate and step counts back on the device."""
    for group in optimizer.param_groups:
        lr.fill_(float(group["lr"]))
        group["lr"] = lr
        group["capturable"] = True
        group["fused"] = True
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(lr.device)


def follow_learning_rate(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> None:
    """Keep the device tensor `lr` that a graph reads equal to the scheduler's learning rate.

    Some torch versions' schedulers fill a tensor learning rate in place, others assign a new value.
    """
    group = optimizer.param_groups[0]
    if group["lr"] is not lr:
        lr.fill_(float(group["lr"]))
        group["lr"] = lr


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:
        return float(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def portable_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """Return an optimiser state dict (already on the CPU) with a graphed Adam's device-only settings made plain."""
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if group.get("capturable"):
            group["capturable"] = False
        if group.get("fused"):
            group["fused"] = None  # torch's default, the implementation a plain Adam picks on its device
        groups.append(group)
    return {**state, "param_groups": groups}


def portable_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """Return a scheduler state dict whose learning rates are plain numbers (a tensor learning rate leaves tensors)."""
    return {key: _plain(value) for key, value in state.items()}


class CapturedIteration:
    """One iteration of a batch captured as a CUDA graph; `replay()` runs it again and returns its output.

    `body` runs the whole iteration (losses, backward, each job's optimiser step and clamp) and
    returns the (N, 4) losses. Capture happens in the constructor and runs nothing: the first
    `replay()` is the first iteration it does. Build it only after `WARMUP_ITERATIONS` eager ones,
    on a stream other than the default one.
    """

    def __init__(self, body: Callable[[], torch.Tensor], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        # Gradients allocated during the capture, from the graph's own pool, are the ones every replay writes.
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = body()

    def replay(self) -> torch.Tensor:
        """Run the captured iteration once; return its (N, 4) losses (a tensor the next replay overwrites)."""
        self.graph.replay()
        return self.output
