"""Time `transfer_batch` at batch sizes 1, 2, 4, ...: pictures x iterations per second, and the gain over one at a time.

    .venv/bin/python -m bench.batching [--device auto|cpu|cuda] [--sizes 1,2,4,8,16] [--size 300x450 ...] [--iterations 30] [--precision auto]

The `styleq` preset on a random VGG16 built as the worker builds it (random weights time the same as
ImageNet ones), each batch slot with its own content picture and style picture from ../shared/images.
Each batch size gets an untimed warm-up run first (allocator, cuDNN/oneDNN kernel choice for that
shape); the timed run's rate is taken between its first checkpoint after the warm-up iterations and
the CUDA graph's capture and its last, so it is the loop's steady rate without the targets' forward
passes or the capture; the whole call's rate is shown beside it. The bench stops at the first batch
size that runs out of memory. `--size` may be given more than once: one table per picture size
(batching pays where one picture leaves the device idle, so it depends on the size).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import add_device_argument, cycle_images, device_name, parse_ints, parse_size, pick_device, styleq_backbone, synchronize
from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import TransferJob, resolve_precision, transfer_batch
from styleq.worker.engine.graphs import WARMUP_ITERATIONS as GRAPH_WARMUP

WARMUP_ITERATIONS = 4
# Checkpoints before this iteration are not timed: the eager iterations before a CUDA graph is captured, and the capture.
FIRST_TIMED = GRAPH_WARMUP + 3


def run_batch(batch: int, size: tuple[int, int], iterations: int, precision: str, backbone, device: torch.device) -> tuple[float, float]:
    """Run one batch of `batch` jobs; return (loop seconds between first and last checkpoint, whole-call seconds)."""
    # Every second iteration reports, so the loop's steady rate is measured from the first checkpoint on.
    params = resolve_params(
        {"preset": "styleq", "size": list(size), "iterations": iterations, "precision": precision, "checkpoint_every": min(2, iterations)}
    )
    contents, styles = cycle_images(0), cycle_images(1)
    jobs = [TransferJob(next(contents), [next(styles)], params) for _ in range(batch)]
    stamps: dict[int, float] = {}

    def on_checkpoint(index: int, checkpoint) -> None:
        # The checkpoint's losses were copied to the host, so the device's work up to here is done.
        if index == batch - 1:
            stamps[checkpoint.iteration] = time.perf_counter()

    synchronize(device)
    started = time.perf_counter()
    transfer_batch(jobs, backbone=backbone, device=device, on_checkpoint=on_checkpoint)
    synchronize(device)
    whole = time.perf_counter() - started
    timed = [iteration for iteration in stamps if iteration >= FIRST_TIMED] or list(stamps)
    first, last = min(timed), max(timed)
    return (stamps[last] - stamps[first]) / (last - first), whole / iterations


def is_out_of_memory(error: BaseException) -> bool:
    """Tell an out-of-memory failure (CUDA's own error, or a CPU allocator's) from any other."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error).lower()


def print_table(size: tuple[int, int], batches: list[int], iterations: int, precision: str, backbone, device: torch.device) -> None:
    """Time each batch size at one picture size and print its table of throughput and ratio to batch size one."""
    height, width = size
    print(
        f"\nstyleq preset, {height}x{width}, precision {precision} ({resolve_precision(precision, device)} here), "
        f"{iterations} iterations per batch after a {WARMUP_ITERATIONS}-iteration warm-up, distinct pictures per slot"
    )
    header = f"{'batch':>5} {'s/iteration':>11} {'pictures x it/s':>15} {'ratio to B=1':>12} {'whole call, pictures x it/s':>27}"
    print(header)
    print("-" * len(header))
    base = None
    for batch in batches:
        try:
            run_batch(batch, size, WARMUP_ITERATIONS, precision, backbone, device)
            loop, whole = run_batch(batch, size, iterations, precision, backbone, device)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            print(f"{batch:>5} out of memory: {str(error).splitlines()[0][:100]}")
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rate = batch / loop
        if batch == 1:
            base = rate
        ratio = f"{rate / base:.2f}" if base else "-"
        print(f"{batch:>5} {loop:>11.4f} {rate:>15.2f} {ratio:>12} {batch / whole:>27.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Time each batch size and print the table of throughput and its ratio to batch size one."""
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.split("\n", 1)[0])
    add_device_argument(parser)
    parser.add_argument("--sizes", type=parse_ints, default=[1, 2, 4, 8, 16], help="batch sizes (default 1,2,4,8,16)")
    parser.add_argument(
        "--size", type=parse_size, action="append", help="HEIGHTxWIDTH of every job (default 300x450); repeat for a table per size"
    )
    parser.add_argument("--iterations", type=int, default=30, help="iterations of each timed batch (default 30)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto", help="the preset's precision (default auto)")
    args = parser.parse_args(argv)
    if args.iterations < FIRST_TIMED + 2:
        parser.error(f"--iterations must be at least {FIRST_TIMED + 2} (two checkpoints apart after the warm-up)")
    device = pick_device(parser, args.device)
    params = resolve_params({"preset": "styleq", "precision": args.precision})
    backbone = styleq_backbone(params, device)
    print(f"device: {device_name(device)}")
    for size in args.size or [(300, 450)]:
        print_table(size, args.sizes, args.iterations, args.precision, backbone, device)
    if device.type == "cpu":
        print(
            "(on a CPU the engine sends each picture through the network alone, for a run alone's exact arithmetic: "
            "batching saves only per-iteration overhead there; a GPU runs the batch at once)"
        )
    if 1 not in args.sizes:
        print("(ratios need batch size 1 in --sizes)")


if __name__ == "__main__":
    main()
