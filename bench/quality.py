"""Pictures at size judged by content and style: every pair of the handed-out images, at every size, each method.

    .venv/bin/python -m bench.quality [--sizes 450,1024] [--large-size 2048] [--large-pairs 2]
        [--methods default,one-pass,previous,nst-multires,crowsonkb] [--contents a.jpg,b.jpg] [--styles c.jpg,d.jpg]
        [--pairs N] [--pair photo.jpg:painting.jpg ...] [--iterations N] [--peer-iterations 1000,500,200] [--crowsonkb-repo PATH] [--crowsonkb-iterations 1000,500]
        [--output DIR] [--device auto|cpu|cuda]

Pairs: every content photo x every style picture of ../shared/images (their roles read from its SOURCES.md, or
given by --contents and --styles; or only the --pair ones). Each pair is made at every --sizes long side, and the first --large-pairs
pairs (taken so that each photo comes up in turn) also at --large-size. Methods:
- `default`: the `styleq` preset as a job gets it (only the size given): its automatic schedule at every size
  (above 512 px: a first scale 450 px long that settles the look, then scales up to 2.3x as large that sharpen
  it, each starting from the photo's own detail added, at half the learning rate again with Adam's moments
  rescaled to the finer scale's gradients, its content distance held at the first scale's);
- `one-pass`: one scale at full size, stopped when the default has run as long on the same pair and size (only
  where the default itself is more than one pass);
- `previous`: the automatic schedule before issue 23 (a first scale about 320 px long, iterations in inverse
  proportion to each scale's pixels, no photo detail, one content weight), given as explicit parameters;
- `nst-multires`: neural-style-pt (PyPI neural-style==0.5.7, fp32) as its users make large pictures, by its own
  example script's multi-resolution recipe: 1000 iterations at 256 px, each next run from the last one's picture
  (`-init image -init_image`): 500 at 512 px, 200 at 1024 px, 200 at the size; style weight 5e2 (2500 from 2048
  px), no total variation (--peer-iterations sets each run's iterations; only at sizes above 512; CPU only).
- `crowsonkb`: crowsonkb/style-transfer-pytorch from a clone (--crowsonkb-repo), its own coarse-to-fine from 128 px
  to the size with its defaults, on the original ImageNet VGG-19 (bench/crowsonkb.py says how it gets them);
  --crowsonkb-iterations FIRST,EACH makes a shorter run than its users' (1000 at 128 px, 500 at each scale).

Two measures of each picture at its own size, on the real vgg16-caffe weights in fp32, whatever the job's own
loss settings (so a method cannot win by changing what it is measured with):
- content distance: |F(x) - F(c)|^2 / |F(c)|^2 at relu4_2, with c the photo resized to the picture's size
  (lower keeps more of the photo);
- style distance: the sum over relu1_1..relu5_1 of |G(x) - G(s)|^2 / |G(s)|^2 (G the Gram matrix, s the style
  picture at the picture's area in its own proportions), divided by the same sum for the photo itself: 1.0 is
  unstyled, lower is more stylised.
Prints one table for all the pictures with each one's wall time, then the issue's checks (each large default
against its own 450 px picture and against one pass in the same time; the default against nst-multires), and
writes each picture and one contact sheet per method (pairs down, sizes across) into --output.
Needs `styleq weights pull vgg16-caffe`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench import crowsonkb
from bench.common import IMAGES, ROOT, add_device_argument, device_name, pick_device, synchronize
from bench.peers import PEER_OUT, PEERS, install_peer, run_peer, write_peer_model
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.params import TransferParams, auto_scales, resolve_params, split_iterations
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import Backbone, Control, build_backbone, transfer
from styleq.worker.engine.losses import gram
from styleq.worker.engine.transfer import image_to_tensor
from styleq.worker.engine.weights import LoadedWeights

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
METHODS = ("default", "one-pass", "previous", "nst-multires", "crowsonkb")
# Peers the default is held against, at sizes where both ran: on both measures, on average, and in less time.
PEER_METHODS = ("nst-multires", "crowsonkb")
# The schedule before issue 23: a first scale about this many pixels on the long side.
PREVIOUS_FIRST_LONG_SIDE = 320
# neural-style-pt's multi-resolution recipe as its own example script gives it (examples/scripts/
# starry_stanford_bigger.sh, after jcjohnson's multires.sh): (long side, iterations) runs, each from the last one's
# picture (-init image), then the size itself with 200 iterations; style weight 5e2 (2500 from 2048 px on),
# no total variation, the style at scale 1.
PEER_STEPS = ((256, 1000), (512, 500), (1024, 200))
PEER_LAST_ITERATIONS = 200
PEER_STYLE_WEIGHT, PEER_LARGE_STYLE_WEIGHT, PEER_LARGE_FROM = 5e2, 2500.0, 2048
THUMBNAIL_HEIGHT = 320


@dataclass
class Picture:
    """One method's picture of one pair at one size, and how it measures."""

    content: str
    style: str
    size: int
    method: str
    seconds: float
    iterations: int
    content_distance: float
    style_distance: float
    path: str

    @property
    def pair(self) -> str:
        return f"{Path(self.content).stem} x {Path(self.style).stem}"


class Judge:
    """The two measures, on fp32 VGG16 features of a picture at its own size."""

    def __init__(self, weights: LoadedWeights, device: torch.device) -> None:
        self.device = device
        self.layers = (CONTENT_LAYER, *STYLE_LAYERS)
        self.backbone = Backbone(weights.architecture, weights.state_dict, weights.convention, self.layers).to(device).eval()

    @torch.no_grad()
    def features(self, picture: Image.Image, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        rgb = image_to_tensor(picture, size).to(self.device)
        return {name: value.float() for name, value in self.backbone(self.backbone.convention.normalize(rgb), self.layers).items()}

    def _style_sum(self, found: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> float:
        return sum(float((gram(found[name]) - target).square().sum() / target.square().sum()) for name, target in targets.items())

    def measure(self, picture: Image.Image, content: Image.Image, style: Image.Image) -> tuple[float, float]:
        """Return (content distance, style distance) of `picture` for its pair, at the picture's size."""
        content_distance, style_distance, _ = self.measure_by_layer(picture, content, style)
        return content_distance, style_distance

    def measure_by_layer(self, picture: Image.Image, content: Image.Image, style: Image.Image) -> tuple[float, float, dict[str, float]]:
        """Return `measure`'s two distances and each style layer's share of the style distance (the shares add up to it)."""
        size = (picture.height, picture.width)
        scale = (picture.width * picture.height / (style.width * style.height)) ** 0.5
        style_size = (max(32, round(style.height * scale)), max(32, round(style.width * scale)))
        ours, photo = self.features(picture, size), self.features(content, size)
        targets = {name: gram(value) for name, value in self.features(style, style_size).items() if name in STYLE_LAYERS}
        found, expected = ours[CONTENT_LAYER], photo[CONTENT_LAYER]
        content_distance = float((found - expected).square().sum() / expected.square().sum())
        unstyled = self._style_sum(photo, targets)
        shares = {name: self._style_sum(ours, {name: target}) / unstyled for name, target in targets.items()}
        return content_distance, self._style_sum(ours, targets) / unstyled, shares


def image_roles(folder: Path) -> tuple[list[str], list[str]]:
    """Return the content photos and the style pictures of `folder`, from the role column of its SOURCES.md table."""
    sources = folder / "SOURCES.md"
    if not sources.is_file():
        raise SystemExit(f"{sources} not found: name the pictures with --contents and --styles")
    contents: list[str] = []
    styles: list[str] = []
    for line in sources.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and (folder / cells[0]).is_file():
            role = cells[1].lower()
            (contents if role.startswith("content") else styles if role.startswith("style") else []).append(cells[0])
    return contents, styles


def previous_schedule(params: TransferParams, content: Image.Image) -> dict[str, object]:
    """Return the scales and iterations the automatic schedule gave before issue 23, as explicit parameters."""
    height, width = params.output_size(*content.size)
    scales = auto_scales(height, width, params.minimum_side, params.iterations, first_long_side=PREVIOUS_FIRST_LONG_SIDE)
    if len(scales) == 1:
        return {"scales": [1.0]}
    return {
        "scales": list(scales),
        "scale_iterations": list(split_iterations(params.iterations, scales)),
        "photo_detail": False,
        "fine_content_factor": 1.0,
        "fine_content_hold": 0.0,
        "fine_lr_factor": 0.0,
        "rescale_moments": False,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, weights: LoadedWeights, device: torch.device) -> None:
        self.args = args
        self.weights = weights
        self.device = device
        self.judge = Judge(weights, device)
        self.output: Path = args.output
        self.pictures: list[Picture] = []

    def _engine(
        self, values: dict[str, object], content: Image.Image, style: Image.Image, stop_after: float | None = None
    ) -> tuple[Image.Image, float, int]:
        params = resolve_params(values).with_schedule(*content.size)
        backbone = build_backbone(self.weights, params, self.device)

        def on_checkpoint(_progress: object) -> Control | None:
            return Control.STOP if stop_after is not None and time.perf_counter() - started >= stop_after else None

        synchronize(self.device)
        started = time.perf_counter()
        result = transfer(content, style, params, backbone=backbone, device=self.device, on_checkpoint=on_checkpoint)
        synchronize(self.device)
        return result.image, time.perf_counter() - started, result.iteration

    def _peer(self, content: Path, style: Path, size: int) -> tuple[Image.Image, float, int]:
        steps = [*((side, its) for side, its in PEER_STEPS if side < size), (size, PEER_LAST_ITERATIONS)]
        if self.args.peer_iterations:
            if len(self.args.peer_iterations) != len(steps):
                sides = ", ".join(f"{side} px" for side, _ in steps)
                raise SystemExit(
                    f"--peer-iterations: {len(steps)} runs at {size} px ({sides}), {len(self.args.peer_iterations)} counts given"
                )
            steps = [(side, its) for (side, _), its in zip(steps, self.args.peer_iterations, strict=True)]
        threads = torch.get_num_threads()
        started = time.perf_counter()
        start_picture: Path | None = None
        for side, iterations in steps:
            weight = PEER_LARGE_STYLE_WEIGHT if side >= PEER_LARGE_FROM else PEER_STYLE_WEIGHT
            extra = ["-style_weight", f"{weight:g}", "-tv_weight", "0", "-style_scale", "1.0"]
            if start_picture is not None:
                extra += ["-init", "image", "-init_image", str(start_picture)]
            run_peer(content, style, side, iterations, iterations, threads, extra)
            # Beside its run folder, not in it: run_peer empties that folder of pictures before each run.
            start_picture = PEERS / f"start-{side}.png"
            shutil.copy(PEERS / PEER_OUT, start_picture)
        seconds = time.perf_counter() - started
        return Image.open(PEERS / PEER_OUT).convert("RGB"), seconds, sum(its for _, its in steps)

    def make(self, content_name: str, style_name: str, size: int) -> None:
        images: Path = self.args.images
        content, style = (Image.open(images / name).convert("RGB") for name in (content_name, style_name))
        default_values: dict[str, object] = {"size": size, **({"iterations": self.args.iterations} if self.args.iterations else {})}
        default_params = resolve_params(default_values).with_schedule(*content.size)
        one_pass_default = len(default_params.resolved_scales()) == 1
        runs: list[tuple[str, Callable[[], tuple[Image.Image, float, int]]]] = []
        if "default" in self.args.methods:
            runs.append(("default", lambda: self._engine(default_values, content, style)))
        if "one-pass" in self.args.methods and not one_pass_default:
            # As many iterations as fit in the default's time: a bound far above what it reaches.
            one_pass = {"size": size, "scales": [1.0], "iterations": 20_000}
            runs.append(
                (
                    "one-pass",
                    lambda: self._engine(one_pass, content, style, stop_after=self.find(content_name, style_name, size, "default").seconds),
                )
            )
        if "previous" in self.args.methods and not one_pass_default:
            previous = {**default_values, **previous_schedule(resolve_params(default_values), content)}
            runs.append(("previous", lambda: self._engine(previous, content, style)))
        if "nst-multires" in self.args.methods and size > PEER_STEPS[1][0] and self.device.type == "cpu":
            runs.append(("nst-multires", lambda: self._peer((images / content_name).resolve(), (images / style_name).resolve(), size)))
        if "crowsonkb" in self.args.methods:
            crowsonkb_iterations = self.args.crowsonkb_iterations
            runs.append(
                (
                    "crowsonkb",
                    lambda: crowsonkb.run(
                        (images / content_name).resolve(), (images / style_name).resolve(), size, crowsonkb_iterations, str(self.device)
                    ),
                )
            )
        for method, run in runs:
            picture, seconds, iterations = run()
            path = self.output / f"{Path(content_name).stem}-{Path(style_name).stem}-{size}-{method}.png"
            picture.save(path)
            content_distance, style_distance = self.judge.measure(picture, content, style)
            made = Picture(content_name, style_name, size, method, seconds, iterations, content_distance, style_distance, path.name)
            self.pictures.append(made)
            print(
                f"{made.pair:<28} {size:>5} {method:<13} {seconds:8.1f} s {iterations:6d} its  content {content_distance:.3f}  style {style_distance:.4f}",
                flush=True,
            )
            (self.output / "pictures.json").write_text(json.dumps([asdict(p) for p in self.pictures], indent=1))

    def find(self, content: str, style: str, size: int, method: str) -> Picture:
        return next(p for p in self.pictures if (p.content, p.style, p.size, p.method) == (content, style, size, method))


def contact_sheets(pictures: list[Picture], output: Path, images: Path) -> list[Path]:
    """Write one sheet per method: a row per pair (photo, style, then each size's picture), each at one height."""
    sheets = []
    pairs = list(dict.fromkeys((p.content, p.style) for p in pictures))
    sizes = sorted({p.size for p in pictures})

    def thumbnail(path: Path) -> Image.Image:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        return image.resize((max(1, round(image.width * THUMBNAIL_HEIGHT / image.height)), THUMBNAIL_HEIGHT), Image.Resampling.LANCZOS)

    for method in dict.fromkeys(p.method for p in pictures):
        rows = []
        for content, style in pairs:
            cells = [thumbnail(images / content), thumbnail(images / style)]
            for size in sizes:
                made = [p for p in pictures if (p.content, p.style, p.size, p.method) == (content, style, size, method)]
                cells.append(thumbnail(output / made[0].path) if made else Image.new("RGB", (THUMBNAIL_HEIGHT, THUMBNAIL_HEIGHT), "white"))
            rows.append(cells)
        columns = [max(row[i].width for row in rows) for i in range(len(rows[0]))]
        title = 24
        sheet = Image.new("RGB", (sum(columns) + 8 * len(columns), title + len(rows) * (THUMBNAIL_HEIGHT + 8)), "white")
        draw = ImageDraw.Draw(sheet)
        headings = ["photo", "style", *(f"{size} px" for size in sizes)]
        x = 0
        for heading, width in zip(headings, columns):
            draw.text((x + 4, 6), f"{method}: {heading}" if heading.endswith("px") else heading, fill="black")
            x += width + 8
        for index, row in enumerate(rows):
            x = 0
            for cell, width in zip(row, columns):
                sheet.paste(cell, (x, title + index * (THUMBNAIL_HEIGHT + 8)))
                x += width + 8
        path = output / f"sheet-{method}.jpg"
        sheet.save(path, quality=88)
        sheets.append(path)
    return sheets


def report(pictures: list[Picture], small: int) -> list[str]:
    """Return the issue's checks: each larger picture of a schedule against the default's own `small` px picture and one pass in the default's time; the peer.

    Only the default's failures count in the last line; the other schedules are shown to compare.
    """
    lines = []
    by = {(p.content, p.style, p.size, p.method): p for p in pictures}
    failures = 0
    for size, method in itertools.product(sorted({p.size for p in pictures if p.size > small}), ("default", "previous")):
        defaults = [p for p in pictures if p.size == size and p.method == method]
        if not defaults:
            continue
        lines.append(f"{method} at {size} px ({len(defaults)} pairs):")
        one_pass_styles, default_styles = [], []
        for ours in defaults:
            own = by.get((ours.content, ours.style, small, "default"))
            one = by.get((ours.content, ours.style, size, "one-pass"))
            checks = []
            if own is not None:
                checks += [
                    (
                        "content <= 1.05x its 450 px",
                        ours.content_distance <= 1.05 * own.content_distance,
                        ours.content_distance / own.content_distance,
                    ),
                    ("style <= 1.1x its 450 px", ours.style_distance <= 1.1 * own.style_distance, ours.style_distance / own.style_distance),
                ]
            if one is not None:
                checks.append(
                    (
                        "content <= 1.05x one pass",
                        ours.content_distance <= 1.05 * one.content_distance,
                        ours.content_distance / one.content_distance,
                    )
                )
                one_pass_styles.append(one.style_distance)
                default_styles.append(ours.style_distance)
            failures += sum(not passed for _, passed, _ in checks) if method == "default" else 0
            lines.append(
                f"  {ours.pair:<28} " + "; ".join(f"{name}: {ratio:.3f} {'ok' if passed else 'NO'}" for name, passed, ratio in checks)
            )
        if one_pass_styles:
            better = statistics.mean(default_styles) < statistics.mean(one_pass_styles)
            failures += not better and method == "default"
            lines.append(
                f"  mean style: {method} {statistics.mean(default_styles):.4f}, one pass in the same time {statistics.mean(one_pass_styles):.4f}: "
                f"{'ok' if better else 'NO'}"
            )
        for peer in PEER_METHODS:
            peers = [
                (ours, by[(ours.content, ours.style, size, peer)]) for ours in defaults if (ours.content, ours.style, size, peer) in by
            ]
            if not peers:
                continue
            means = {
                name: (statistics.mean(getattr(o, name) for o, _ in peers), statistics.mean(getattr(t, name) for _, t in peers))
                for name in ("content_distance", "style_distance", "seconds")
            }
            ahead = all(ours < theirs for ours, theirs in means.values())
            failures += not ahead and method == "default"
            lines.append(
                f"  against {peer} ({len(peers)} pairs), {method} / peer: "
                + ", ".join(f"{name} {ours:.3f} / {theirs:.3f}" for name, (ours, theirs) in means.items())
                + f": {'ok' if ahead else 'NO'}"
            )
    lines.append(f"{failures} check(s) of the default failed")
    return lines


def parse_pair(text: str) -> tuple[str, str]:
    content, separator, style = text.partition(":")
    if not (separator and content and style):
        raise argparse.ArgumentTypeError(f"{text!r} is not photo.jpg:painting.jpg")
    return content, style


def parse_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="the pictures' folder (default ../shared/images)")
    parser.add_argument("--contents", type=parse_names, help="content photos (default: SOURCES.md's content role)")
    parser.add_argument("--styles", type=parse_names, help="style pictures (default: SOURCES.md's style role)")
    parser.add_argument("--pairs", type=int, help="only the first N pairs")
    parser.add_argument(
        "--pair",
        type=parse_pair,
        action="append",
        help="photo.jpg:painting.jpg, repeated: these pairs only (the gallery's before and after: every size of the same pairs)",
    )
    parser.add_argument("--sizes", type=lambda t: [int(v) for v in t.split(",")], default=[450, 1024], help="long sides for every pair")
    parser.add_argument("--large-size", type=int, default=2048, help="the long side for --large-pairs pairs (0: none)")
    parser.add_argument("--large-pairs", type=int, default=2)
    parser.add_argument("--methods", type=parse_names, default=list(METHODS), help=f"any of {', '.join(METHODS)}")
    parser.add_argument(
        "--peer-iterations",
        type=lambda t: tuple(int(v) for v in t.split(",")),
        help="nst-multires: each step's iterations (default the script's: 1000 at 256 px, 500 at 512, 200 at 1024 and at the size)",
    )
    parser.add_argument("--crowsonkb-repo", type=Path, help="crowsonkb: a clone of github.com/crowsonkb/style-transfer-pytorch")
    parser.add_argument(
        "--crowsonkb-iterations",
        type=lambda t: tuple(int(v) for v in t.split(",")),
        help="crowsonkb: its first scale's and each other scale's iterations (default its own, 1000,500)",
    )
    parser.add_argument("--iterations", type=int, help="each job's iterations (default the preset's: 300); small for a smoke run")
    parser.add_argument("--output", type=Path, help="where the pictures and sheets go (default bench/results/quality-DATE)")
    parser.add_argument(
        "--report-from",
        type=Path,
        help="make nothing: print the table and checks of a run's pictures.json (one cut short, say) and write its sheets beside it",
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if args.report_from is not None:
        pictures = [Picture(**values) for values in json.loads(args.report_from.read_text())]
        print_results(pictures, min(args.sizes), args.report_from.parent, args.images)
        return
    device = pick_device(parser, args.device)
    contents, styles = image_roles(args.images)
    contents, styles = args.contents or contents, args.styles or styles
    # Style by style, each with every photo, so that the first pairs (--pairs, or a run cut short) show every photo.
    pairs = args.pair or [(c, s) for s in styles for c in contents][: args.pairs]
    if not pairs:
        parser.error("no pairs: give --contents and --styles")
    missing = sorted({name for pair in pairs for name in pair if not (args.images / name).is_file()})
    if missing:
        parser.error(f"not in {args.images}: {', '.join(missing)}")
    # Each photo in turn, with a different style each time.
    large = [(contents[i % len(contents)], styles[i % len(styles)]) for i in range(args.large_pairs)] if args.large_size else []
    args.output = args.output or ROOT / "bench" / "results" / f"quality-{time.strftime('%Y-%m-%d-%H%M')}"
    args.output.mkdir(parents=True, exist_ok=True)

    weights = load_or_pull("vgg16-caffe", load_settings().models_path)
    if "nst-multires" in args.methods:
        PEERS.mkdir(parents=True, exist_ok=True)
        install_peer()
        write_peer_model(weights)
    if "crowsonkb" in args.methods:
        if args.crowsonkb_repo is None:
            parser.error("crowsonkb needs --crowsonkb-repo: a clone of https://github.com/crowsonkb/style-transfer-pytorch")
        crowsonkb.prepare(args.crowsonkb_repo)
    print(
        f"{device_name(device)}, torch threads {torch.get_num_threads()}; {len(pairs)} pairs at {args.sizes}, {len(large)} at {args.large_size}"
    )
    print(f"methods: {', '.join(args.methods)}; pictures in {args.output}")
    bench = Bench(args, weights, device)
    # Pair by pair, so that a run cut short has every size of the pairs it made (pictures.json keeps them as it goes).
    for content, style in pairs:
        for size in args.sizes:
            bench.make(content, style, size)
    for content, style in large:
        bench.make(content, style, args.large_size)

    print_results(bench.pictures, min(args.sizes), args.output, args.images)


def print_results(pictures: list[Picture], small: int, output: Path, images: Path) -> None:
    """Print every picture's measures, then the issue's checks against the `small` px pictures; write the contact sheets."""
    print()
    header = f"{'pair':<28} {'size':>5} {'method':<13} {'seconds':>8} {'iterations':>10} {'content':>8} {'style':>7}"
    print(header)
    print("-" * len(header))
    for p in sorted(pictures, key=lambda p: (p.size, p.method, p.content, p.style)):
        print(
            f"{p.pair:<28} {p.size:>5} {p.method:<13} {p.seconds:8.1f} {p.iterations:>10} {p.content_distance:8.3f} {p.style_distance:7.4f}"
        )
    print()
    for line in report(pictures, small):
        print(line)
    for sheet in contact_sheets(pictures, output, images):
        print(f"contact sheet: {sheet}")


if __name__ == "__main__":
    main()
