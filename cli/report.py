"""What a person sees of a run on a terminal: a progress bar, a history file and a loss plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from styleq.worker.engine import Progress

HISTORY_FIELDS = ("iteration", "elapsed_s", "content", "style", "tv", "total", "scale")


class ProgressBar:
    """A tqdm bar that moves by checkpoints and shows the latest losses."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def advance(self, checkpoint: Progress) -> None:
        """Move the bar to the checkpoint's iteration and show its losses."""
        self.bar.set_postfix(
            content=f"{checkpoint.content:.3g}",
            style=f"{checkpoint.style:.3g}",
            tv=f"{checkpoint.tv:.3g}",
            total=f"{checkpoint.total:.3g}",
            refresh=False,
        )
        self.bar.update(checkpoint.iteration - self.bar.n)


@contextmanager
def progress_bar(iterations: int, *, disable: bool = False) -> Iterator[ProgressBar]:
    """Show iteration, losses, it/s and time left on stderr while the block runs."""
    with tqdm(total=iterations, unit="it", desc="styling", disable=disable, dynamic_ncols=True) as bar:
        yield ProgressBar(bar)


def write_history(checkpoints: Sequence[Progress], path: Path) -> None:
    """Write every checkpoint's losses to a .csv or .json file."""
    rows = [checkpoint.losses() for checkpoint in checkpoints]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1) + "\n")
        return
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot_losses(checkpoints: Sequence[Progress], picture: Image.Image, path: Path) -> None:
    """Draw content, style and TV loss against iteration on a log scale beside the picture, like the notebook."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; chosen here so importing this module stays cheap
    from matplotlib import pyplot

    figure, (losses, image) = pyplot.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    iterations = [checkpoint.iteration for checkpoint in checkpoints]
    for name in ("content", "style", "tv"):
        values = [getattr(checkpoint, name) for checkpoint in checkpoints]
        losses.plot(iterations, values, label="TV" if name == "tv" else name)
    losses.set_yscale("log")
    losses.set_xlabel("iteration")
    losses.set_ylabel("loss")
    losses.grid(True, which="both", alpha=0.3)
    losses.legend()
    image.imshow(picture)
    image.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
