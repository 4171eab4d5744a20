"""Fetching registry weights from the command line with a progress bar (`styleq weights pull`, `up`, `transfer`)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm


def pull_with_progress_bar(name: str, model_dir: Path, *, force: bool = False, url: str | None = None, quiet: bool = False) -> Path:
    """Fetch registry weights `name` into `model_dir` with a progress bar of the download; fail in one line."""
    # Imported here: torch and onnx come with it, and `styleq up` needs them only when weights are missing.
    from styleq.worker.downloads import pull_weights
    from styleq.worker.engine.weights import WeightsError

    click.echo(f"Fetching weights {name!r} into {model_dir} (once; later runs reuse them)...", err=True)
    # Made at the first news of the download: torchvision's downloads draw torch's own bar instead.
    bars: list[tqdm] = []

    def on_progress(done: int, total: int) -> None:
        if not bars:
            bars.append(
                tqdm(desc=name, total=total or None, unit="B", unit_scale=True, unit_divisor=1024, disable=quiet, dynamic_ncols=True)
            )
        bars[0].update(done - bars[0].n)

    try:
        return pull_weights(name, model_dir, force=force, url=url, on_progress=on_progress)
    except WeightsError as error:
        raise click.ClickException(f"could not fetch weights {name!r}: {error}") from None
    finally:
        for bar in bars:
            bar.close()
