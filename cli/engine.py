"""`styleq transfer` and `styleq weights`: the engine here, from the command line."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click
from PIL import Image

from styleq.shared.adapters.images import decode_image
from styleq.shared.adapters.outputs import encode_result, format_of_path
from styleq.shared.adapters.settings import load_settings
from styleq.shared.domain.errors import InvalidImage
from styleq.shared.domain.params import PRESETS, resolve_params, style_roles
from styleq.worker.downloads import load_or_pull
from styleq.worker.engine import CONVENTIONS, Progress, build_backbone, default_device, keep_cpu_choice_in, transfer
from styleq.worker.engine.weights import REGISTRY, WeightsError, is_pulled
from styleq.worker.precision_choice import ChoiceFile

from . import report
from .client import output_format
from .options import check_style_count, parameter_options, style_images
from .pulling import pull_with_progress_bar

_OUTPUT_FORMATS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def open_image(path: Path, role: str) -> Image.Image:
    """Decode an image file as the service does (upright, 8-bit RGB), or fail with a message naming it."""
    try:
        # No pixel limit of the service's own here: a local file harms no one else; Pillow's bomb guard stays.
        return decode_image(path, max_pixels=None)
    except (InvalidImage, OSError) as error:
        raise click.ClickException(f"cannot read the {role} image {path}: {error}") from None


def _check_output(path: Path, option: str, suffixes: set[str]) -> None:
    # Checked before the run starts: minutes of optimisation must not end in an unwritable file name.
    if path.suffix.lower() not in suffixes:
        raise click.BadParameter(f"{path} should end in one of {', '.join(sorted(suffixes))}", param_hint=option)
    if not path.parent.resolve().is_dir():
        raise click.BadParameter(f"the folder {path.parent} does not exist", param_hint=option)


@click.command("transfer")
@click.argument("content", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@style_images
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the picture (.png, .jpg, .webp with the parameters inside; .bmp, .tif).",
)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="styleq",
    show_default=True,
    help="Starting values of every parameter: 'seed' is the notebook exactly.",
)
@click.option("--convention", type=click.Choice(sorted(CONVENTIONS)), help="Input convention of a weights file (default torchvision).")
@parameter_options
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option(
    "--max-pass-pixels",
    type=click.IntRange(min=1),
    help="Optimise a picture (or scale) larger than this many pixels in tiles, each pass at most this large. Default: $STYLEQ_MAX_PASS_PIXELS, else no limit.",
)
@click.option("--history", type=click.Path(dir_okay=False, path_type=Path), help="Write every checkpoint to FILE.csv or FILE.json.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Draw the losses (and the picture) to FILE.png.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def transfer_command(
    content: Path,
    styles: tuple[Path, ...],
    output: Path,
    convention: str | None,
    device: str,
    max_pass_pixels: int | None,
    history: Path | None,
    plot: Path | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Paint CONTENT in the style of STYLE (or a blend of several STYLE images) and write the picture to OUTPUT."""
    check_style_count(len(styles), options["style_weights"])
    _check_output(output, "--output", _OUTPUT_FORMATS)
    options.update(output_format(output, options["format"]))
    try:
        # Options left unset are None: the preset decides them.
        params = resolve_params(**options)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if history is not None:
        _check_output(history, "--history", {".csv", ".json"})
    if plot is not None:
        _check_output(plot, "--plot", {".png"})
        if importlib.util.find_spec("matplotlib") is None:
            raise click.UsageError("--plot needs matplotlib, which this install left out: pip install 'styleq[plot]'")
    content_image = open_image(content, "content")
    style_images = [open_image(path, role) for path, role in zip(styles, style_roles(len(styles)))]
    try:
        params.check_output_size(*content_image.size)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--size") from None
    # The automatic schedule written out for this photo, so the progress bar counts the iterations it runs.
    params = params.with_schedule(*content_image.size)

    settings = load_settings()
    keep_cpu_choice_in(ChoiceFile(settings.models_path))
    if params.weights in REGISTRY and not is_pulled(params.weights, settings.models_path):
        pull_with_progress_bar(params.weights, settings.models_path, quiet=quiet)
    try:
        weights = load_or_pull(params.weights, settings.models_path, convention=convention)
        torch_device = default_device() if device == "auto" else device
        backbone = build_backbone(weights, params, torch_device)
    except (WeightsError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None

    checkpoints: list[Progress] = []
    with report.progress_bar(params.iterations, disable=quiet) as bar:

        def on_checkpoint(checkpoint: Progress) -> None:
            checkpoints.append(checkpoint)
            bar.advance(checkpoint)

        try:
            result = transfer(
                content_image,
                style_images,
                params,
                backbone=backbone,
                device=torch_device,
                on_checkpoint=on_checkpoint,
                max_pass_pixels=max_pass_pixels or settings.max_pass_pixels,
            )
        except ValueError as error:  # the one the loop raises for the CLI's inputs: a pass too small for the network's margins
            raise click.BadParameter(str(error), param_hint="--max-pass-pixels") from None
    if format_of_path(output) is not None:
        # A weights file is named by its file name: the picture should not carry a local path around.
        output.write_bytes(
            encode_result(result.image, params, weights=params.weights if params.weights in REGISTRY else Path(params.weights).name)
        )
    else:
        result.image.save(output)  # BMP or TIFF: a picture without metadata
    if history is not None:
        report.write_history(checkpoints, history)
    if plot is not None:
        report.plot_losses(checkpoints, result.image, plot)
    click.echo(f"Wrote {output} ({result.image.width}x{result.image.height}) after {result.iteration} iterations.", err=quiet)


@click.group()
def weights() -> None:
    """Fetch and list the VGG weights the engine runs on."""


@weights.command("list")
def list_weights() -> None:
    """List the registry's weights and whether each is fetched."""
    model_dir = load_settings().models_path
    click.echo(f"Model directory: {model_dir}")
    for name, spec in REGISTRY.items():
        state = "pulled" if is_pulled(name, model_dir) else "not pulled"
        click.echo(f"  {name:<12} {spec.architecture:<6} {spec.convention:<12} {state:<11} {spec.description}")


@weights.command("pull")
@click.argument("name", type=click.Choice(sorted(REGISTRY)))
@click.option("--force", is_flag=True, help="Fetch again even if a valid file is there.")
@click.option("--url", help="Download from this mirror instead (the pinned hash is still checked).")
def pull(name: str, force: bool, url: str | None) -> None:
    """Fetch registry weights NAME into the model directory and verify them."""
    path = pull_with_progress_bar(name, load_settings().models_path, force=force, url=url)
    click.echo(str(path))
