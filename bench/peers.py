"""Compare the engine's `styleq` preset with neural-style-pt (PyPI neural-style==0.5.7) on one pair, one size, one VGG16.

    .venv/bin/python -m bench.peers [--iterations 60] [--size 450] [--save-every 5] [--threads N] [--threshold X] [--quick]

neural-style-pt is installed with `pip install --no-deps --target bench/.peers/site` on first use and run through
its own CLI in a subprocess, CPU only (-gpu c), its defaults otherwise (L-BFGS, random init), on the project's
`vgg16-caffe` weights rewritten in its layout. Both tools save a picture every --save-every iterations; the bench
scores every picture with one measure (the styleq preset's normalised Gram style loss, fp32, same VGG16) and
reports the steady seconds per iteration (from the first picture at or after iteration 20 to the last: model load,
targets and the first 20 iterations, where oneDNN builds its kernels, left out) and, apart, the time each tool takes
from the start of its loop to reach a style-loss threshold.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image

from bench.common import STEADY_FROM, steady_rate
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import TransferParams, resolve_params
from styleq.worker import engine
from styleq.worker.engine import Backbone, Progress, build_backbone, transfer
from styleq.worker.engine.losses import content_loss, gram, style_loss
from styleq.worker.engine.weights import LoadedWeights, load_weights

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
PEERS = ROOT / "bench" / ".peers"
SITE = PEERS / "site"
PEER_REQUIREMENT = "neural-style==0.5.7"
# Relative to PEERS, where the peer runs: its loader picks the architecture by substrings of the whole path
# ("vgg" and "16", but "19", "sod", "pruning" or "fcn32s" anywhere in it win), so the path holds nothing else.
PEER_MODEL = "vgg16-caffe.pth"
PEER_OUT = "run/out.png"
# torchvision's VGG16 and VGG19 classifier shapes, which the peers' strict load_state_dict insists on.
CLASSIFIER_SHAPES = {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}


@dataclass
class Run:
    """One tool's run: (iteration, seconds since its loop started) readings and its saved pictures by iteration."""

    name: str
    times: dict[int, float] = field(default_factory=dict)
    # CPU seconds of the tool's process at the same readings: steadier than wall time on a shared machine.
    cpu: dict[int, float] = field(default_factory=dict)
    images: dict[int, Image.Image] = field(default_factory=dict)
    scores: dict[int, tuple[float, float]] = field(default_factory=dict)  # iteration -> (style, content)

    def seconds_per_iteration(self, warmup: int, clock: str = "times") -> float:
        """Return the mean seconds per iteration after `warmup` iterations (startup, model load, kernel choice), which must have a reading."""
        readings: dict[int, float] = getattr(self, clock)
        last = max(readings)
        return (readings[last] - readings[warmup]) / (last - warmup)

    def first_at_or_below(self, threshold: float) -> int | None:
        """Return the first saved iteration whose style score is at or below `threshold`."""
        return next((it for it in sorted(self.scores) if self.scores[it][0] <= threshold), None)


class StyleMeasure:
    """The styleq preset's normalised Gram style loss (and content loss), fp32, as the engine weighs them."""

    def __init__(
        self, weights: LoadedWeights, params: TransferParams, content: Image.Image, style: Image.Image, size: tuple[int, int]
    ) -> None:
        self.params = params
        # Built here in fp32 from the raw weights, whatever precision the preset's own backbone runs in.
        self.backbone = Backbone(weights.architecture, weights.state_dict, weights.convention, params.layers).eval()
        width, height = style.size
        # The engine's keep_style_aspect rule: the style picture at the content's area, its own aspect ratio.
        scale = (size[0] * size[1] / (width * height)) ** 0.5
        style_size = (max(16, round(height * scale)), max(16, round(width * scale)))
        with torch.no_grad():
            self.content_targets = [self.features(to_tensor(content, size))[n] for n in params.content_layers]
            styles = self.features(to_tensor(style, style_size))
            self.style_targets = [gram(styles[n]) for n in params.style_layers]

    def features(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the named activations of an RGB picture in [0, 1]."""
        return self.backbone(self.backbone.convention.normalize(rgb), self.params.layers)

    @torch.no_grad()
    def __call__(self, picture: Image.Image) -> tuple[float, float]:
        """Return (style, content) of a picture, each layer divided by its target's mean square, times the weights."""
        found = self.features(to_tensor(picture, (picture.height, picture.width)))
        style = sum(style_loss(found[n], t) / t.square().mean() for n, t in zip(self.params.style_layers, self.style_targets))
        content = sum(content_loss(found[n], t) / t.square().mean() for n, t in zip(self.params.content_layers, self.content_targets))
        return float(style) * self.params.style_weight, float(content) * self.params.content_weight


def to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize to (height, width) as both tools do (PIL, antialiased) and return a (1, 3, H, W) tensor in [0, 1]."""
    return T.Compose([T.Resize(size), T.ToTensor()])(image.convert("RGB")).unsqueeze(0)


def peer_size(content: Image.Image, long_side: int) -> tuple[int, int]:
    """Return the (height, width) neural-style-pt makes of `content` for -image_size, truncating as its preprocess does."""
    height, width = (int(long_side / max(content.size) * side) for side in (content.height, content.width))
    return height, width


def install_peer() -> None:
    """Install neural-style-pt into the bench's own folder, without its dependencies (the venv has torch)."""
    if (SITE / "neural_style-0.5.7.dist-info").is_dir():
        return
    print(f"installing {PEER_REQUIREMENT} into {SITE.relative_to(ROOT)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(SITE), PEER_REQUIREMENT], check=True)


def write_peer_model(weights: LoadedWeights) -> None:
    """Write our VGG16 as the peer's loader wants it: torchvision keys, classifier included (all zeros)."""
    path = PEERS / PEER_MODEL
    if path.is_file():
        return
    torch.save(with_zero_classifier({key: value.contiguous() for key, value in weights.state_dict.items()}), path)


def with_zero_classifier(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a torchvision VGG's convolutions with its classifier added as zeros, which style transfer never uses."""
    state = dict(features)
    for prefix, shape in CLASSIFIER_SHAPES.items():
        # A zero broadcast from one element keeps the file at the convolutions' size (57 MB for VGG16) instead of 0.5 GB.
        state[f"{prefix}.weight"] = torch.zeros(()).expand(shape)
        state[f"{prefix}.bias"] = torch.zeros(()).expand(shape[0])
    return state


def run_styleq(weights: LoadedWeights, params: TransferParams, content: Image.Image, style: Image.Image) -> Run:
    """Run the engine, keeping each checkpoint's time and picture."""
    run = Run("styleq")
    backbone = build_backbone(weights, params, "cpu")

    def keep(checkpoint: Progress) -> None:
        run.times[checkpoint.iteration] = checkpoint.elapsed_s
        run.cpu[checkpoint.iteration] = time.process_time()
        run.images[checkpoint.iteration] = checkpoint.preview()

    transfer(content, style, params, backbone=backbone, device="cpu", on_checkpoint=keep)
    return run


def run_peer(content: Path, style: Path, long_side: int, iterations: int, save_every: int, threads: int, extra: list[str]) -> Run:
    """Run neural-style-pt's CLI, timing each of its iteration prints as they arrive, and collect its saved pictures."""
    run = Run("neural-style-pt")
    out_dir = PEERS / Path(PEER_OUT).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    command = [
        sys.executable,
        "-m",
        "neural_style.neural_style",
        "-content_image",
        str(content),
        "-style_image",
        str(style),
        "-image_size",
        str(long_side),
        "-gpu",
        "c",
        "-model_file",
        PEER_MODEL,
        "-num_iterations",
        str(iterations),
        "-save_iter",
        str(save_every),
        "-print_iter",
        "1",
        "-output_image",
        PEER_OUT,
        "-seed",
        "0",
        *extra,
    ]
    threads_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, **threads_env, "PYTHONPATH": str(SITE), "PYTHONUNBUFFERED": "1"}
    print("$ " + shlex.join(command[1:]), file=sys.stderr)
    started = None
    with (
        open(PEERS / "run" / "peer.log", "w") as log,
        subprocess.Popen(command, cwd=PEERS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process,
    ):
        assert process.stdout is not None  # stdout=PIPE
        for line in process.stdout:
            now = time.perf_counter()
            log.write(line)
            if line.startswith("Running optimization"):
                started = now
            elif started is not None and (match := re.match(r"Iteration (\d+) / ", line)):
                # Printed right after the feval that saved this iteration's picture.
                run.times[int(match[1])] = now - started
                run.cpu[int(match[1])] = process_cpu_seconds(process.pid)
    if process.returncode:
        raise SystemExit(f"neural-style-pt failed ({process.returncode}); see {PEERS / 'run' / 'peer.log'}")
    for iteration in run.times:
        name = out_dir / ("out.png" if iteration == iterations else f"out_{iteration}.png")
        if name.is_file():
            run.images[iteration] = Image.open(name).convert("RGB")
    return run


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds a running process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_name() -> str:
    """Return the CPU's model name from /proc/cpuinfo, or the machine type."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return os.uname().machine


def main(argv: list[str] | None = None) -> None:
    """Run both tools, score their pictures on one measure and print the comparison table."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--content", type=Path, default=IMAGES / "rainier.jpg")
    parser.add_argument("--style", type=Path, default=IMAGES / "autumn-oak.jpg")
    parser.add_argument("--size", type=int, default=450, help="long side in pixels, the peer's -image_size (default 450)")
    parser.add_argument("--iterations", type=int, default=60, help="iterations for each tool (default 60: ~6 minutes on 2 idle cores)")
    parser.add_argument("--save-every", type=int, default=5, help="iterations between saved pictures (default 5)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads for both (default all)")
    parser.add_argument("--threshold", type=float, help="style loss to reach (default: the higher of the two final ones, so both reach it)")
    parser.add_argument("--peer-args", default="", help="extra neural-style-pt flags, e.g. '-init image'")
    parser.add_argument("--quick", action="store_true", help="smoke run: 96 px, 6 iterations, a picture every 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.iterations, args.save_every = 96, 6, 2
    if args.iterations < 2 * args.save_every:
        parser.error("--iterations must be at least twice --save-every (one interval of warm-up, one timed)")
    for path in (args.content, args.style):
        if not path.is_file():
            parser.error(f"image {path} not found (pass --content/--style)")
    torch.set_num_threads(args.threads)
    content, style = (Image.open(path).convert("RGB") for path in (args.content, args.style))
    size = peer_size(content, args.size)
    # The preset as it is; only the shape (the peer's, so both make the same pixels), length and save beat change.
    params = resolve_params({"preset": "styleq", "size": list(size), "iterations": args.iterations, "checkpoint_every": args.save_every})

    PEERS.mkdir(parents=True, exist_ok=True)
    install_peer()
    weights = load_weights(params.weights, load_settings().models_path)
    write_peer_model(weights)

    runs = [run_styleq(weights, params, content, style)]
    runs.append(
        run_peer(
            args.content.resolve(),
            args.style.resolve(),
            args.size,
            args.iterations,
            args.save_every,
            args.threads,
            shlex.split(args.peer_args),
        )
    )
    for iteration, picture in runs[0].images.items():
        picture.save(PEERS / "run" / f"styleq_{iteration}.png")  # beside the peer's, to look at side by side
    measure = StyleMeasure(weights, params, content, style, size)
    for run in runs:
        run.scores = {iteration: measure(image) for iteration, image in run.images.items()}
    ours = runs[0]
    finals = [run.scores[max(run.scores)][0] for run in runs]
    threshold = args.threshold if args.threshold is not None else max(finals)

    print(f"device: CPU {cpu_name()}, {args.threads} threads (torch.set_num_threads / OMP_NUM_THREADS)")
    print(
        f"size: {size[0]}x{size[1]} for both (neural-style-pt -image_size {args.size}; styleq size {list(size)}), "
        f"{args.iterations} iterations, a picture every {args.save_every}"
    )
    precision = params.to_dict().get("precision", "fp32")
    # What "auto" means on this CPU, where the engine says (bf16 only with native support).
    resolved = getattr(engine, "resolve_precision", lambda requested, device: requested)(precision, "cpu")
    print(f"styleq preset precision: {precision} ({resolved} here); neural-style-pt: fp32, L-BFGS, 1 forward+backward per iteration")
    print(
        f"measure: styleq's normalised style loss (x{params.style_weight:g}) on vgg16-caffe, fp32, of each saved 8-bit picture; "
        f"threshold {threshold:.4g}"
    )
    # The steady rate from styleq's first picture at or after iteration STEADY_FROM; the peer reads every iteration.
    _, start = steady_rate(ours.times)
    steady = (
        f"the steady rate: model load, targets and the first {start} iterations (oneDNN's kernel warm-up) left out"
        if start >= STEADY_FROM
        else f"NOT the steady rate: too short a run to leave out the first {STEADY_FROM} iterations (oneDNN's kernel warm-up)"
    )
    print(
        f"s/iteration: wall; CPU s/it: the process's user+system seconds, all threads; both over iterations {start}..{args.iterations}, {steady}"
    )
    print(
        "time to threshold: the whole run so far, warm-up included: styleq from its transfer call (its targets included), "
        "neural-style-pt from its 'Running optimization' line (after its targets)"
    )
    header = f"{'tool':<16} {'s/iteration':>11} {'ratio':>6} {'CPU s/it':>8} {'ratio':>6} {'style loss':>10} {'content loss':>12} {'time to threshold':>22} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    base_speed = ours.seconds_per_iteration(start)
    base_cpu = ours.seconds_per_iteration(start, "cpu")
    reached = ours.first_at_or_below(threshold)
    for run in runs:
        speed = run.seconds_per_iteration(start)
        cpu = run.seconds_per_iteration(start, "cpu")
        final_style, final_content = run.scores[max(run.scores)]
        hit = run.first_at_or_below(threshold)
        when = f"{run.times[hit]:.1f} s (it {hit})" if hit is not None else f"not in {args.iterations} its"
        ratio = f"{run.times[hit] / ours.times[reached]:.2f}" if hit is not None and reached is not None else "-"
        print(
            f"{run.name:<16} {speed:>11.3f} {speed / base_speed:>6.2f} {cpu:>8.3f} {cpu / base_cpu:>6.2f} {final_style:>10.4g} {final_content:>12.4g} {when:>22} {ratio:>6}"
        )
    print(f"pictures (styleq_N.png, out_N.png) and the peer's log: {PEERS.relative_to(ROOT) / 'run'}")
    for run in runs:
        trace = " ".join(f"{it}:{run.scores[it][0]:.3g}" for it in sorted(run.scores))
        print(f"{run.name} style loss by iteration: {trace}")


if __name__ == "__main__":
    main()
