"""How the pages write numbers, durations, times and parameters (Jinja filters and globals)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.models import Job, JobStatus, utcnow
from shared.outputs import job_format

from ..payloads import timestamp
from . import bp

STATUS_LABELS = {
    JobStatus.QUEUED: "Queued",
    JobStatus.RUNNING: "Running",
    JobStatus.SUCCEEDED: "Succeeded",
    JobStatus.FAILED: "Failed",
    JobStatus.CANCELED: "Canceled",
}
# The parameters as the job page lists them, in this order, with a person's words for each.
PARAM_LABELS = {
    "preset": "Preset",
    "weights": "Network weights",
    "size": "Size",
    "iterations": "Iterations",
    "optimizer": "Optimizer",
    "learning_rate": "Learning rate",
    "lr_decay_step": "Decay every",
    "lr_decay_gamma": "Decay factor",
    "content_weight": "Content weight",
    "style_weight": "Style weight",
    "tv_weight": "TV weight",
    "style_repeats": "Style repeats",
    "colors": "Colours from",
    "style_scale": "Style scale",
    "scales": "Scales",
    "scale_iterations": "Iterations per scale",
    "precision": "Precision",
    "style_loss": "Style loss",
    "content_layers": "Content layers",
    "style_layers": "Style layers",
    "init": "Start from",
    "seed": "Random seed",
    "image_space": "Optimised in",
    "normalize_losses": "Normalised losses",
    "keep_style_aspect": "Keep style aspect",
    "checkpoint_every": "Checkpoint every",
    "format": "File format",
    "quality": "Quality",
}
# Parameters the job page shows elsewhere: each style's share of a blend, under its picture.
SHOWN_WITH_INPUTS = {"style_weights"}


@bp.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    """Write a length of time the way a person would: '0.4 s', '12 s', '3 min 05 s', '2 h 07 min'."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@bp.app_template_filter("size")
def size(count: int) -> str:
    """Write a number of bytes the way a person would: '812 B', '4.2 MB', '1.07 GB' (powers of 1000, as disks are sold)."""
    if count < 1000:
        return f"{count} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000
        if count < 1000 or unit == "TB":
            return f"{count:.3g} {unit}"
    raise AssertionError("unreachable")


@bp.app_template_filter("loss")
def loss(value: float | None) -> str:
    """Write a loss with four significant digits."""
    return "—" if value is None else f"{value:.4g}"


@bp.app_template_filter("iso")
def iso(value: datetime | None) -> str:
    """Write a time as ISO 8601 UTC (the page's script shows it in the reader's time zone)."""
    return timestamp(value) or ""


@bp.app_template_filter("clock")
def clock(value: datetime | None) -> str:
    """Write a time in UTC for readers without JavaScript."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


@bp.app_template_filter("param")
def param(value: Any) -> str:
    """Write one parameter's value."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(item, int) for item in value):
            return f"{value[0]} × {value[1]} px"
        return ", ".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@bp.app_template_global()
def status_label(status: str) -> str:
    """Return the status as a heading word."""
    return STATUS_LABELS.get(status, status)


@bp.app_template_global()
def run_seconds(job: Job) -> float | None:
    """Return how long the job has run (so far, while it runs)."""
    if job.started_at is None:
        return None
    return ((job.finished_at or utcnow()) - job.started_at).total_seconds()


@bp.app_template_global()
def wait_seconds(job: Job) -> float:
    """Return how long the job waited in the queue (so far, while it waits)."""
    end = job.started_at or job.finished_at or utcnow()
    return (end - job.created_at).total_seconds()


@bp.app_template_global()
def result_file_name(job: Job) -> str:
    """Return the name a browser saves the job's result under: styleq-<id>.<the extension of its format>."""
    return f"styleq-{job.id[:8]}.{job_format(job.params).extension}"


@bp.app_template_global()
def params_rows(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the job's parameters as (label, value) rows, known ones first."""
    known = [(label, _param_named(name, params[name])) for name, label in PARAM_LABELS.items() if name in params]
    extra = [(name, param(value)) for name, value in params.items() if name not in PARAM_LABELS and name not in SHOWN_WITH_INPUTS]
    return known + extra


def _param_named(name: str, value: Any) -> str:
    """Write a parameter whose meaning its name gives: scales as shares of the size, counts as counts."""
    if name == "scales" and isinstance(value, list):
        return ", ".join(f"{item:.0%}" for item in value) + " of the size"
    if name == "scale_iterations" and isinstance(value, list):
        return ", ".join(str(item) for item in value)  # never a [height, width] size, however many
    return param(value)
