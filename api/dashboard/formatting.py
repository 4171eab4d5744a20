"""How the pages write numbers, durations, times and parameters (Jinja filters and globals)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from styleq.shared.adapters.models import Job, JobStatus, utcnow
from styleq.shared.adapters.outputs import job_format
from styleq.shared.domain.params import Spec, parameters, split_iterations

from ..payloads import timestamp
from . import bp

# Keyed by the statuses, which are strings: a template's plain status name finds its label too.
STATUS_LABELS: dict[str, str] = {
    JobStatus.QUEUED: "Queued",
    JobStatus.RUNNING: "Running",
    JobStatus.SUCCEEDED: "Succeeded",
    JobStatus.FAILED: "Failed",
    JobStatus.CANCELED: "Canceled",
}
# Parameters the job page shows elsewhere: each style's share of a blend, under its picture.
SHOWN_WITH_INPUTS = {"style_weights"}
# Parameters that change nothing for some jobs, and the test that tells whether they matter: the page leaves them out.
APPLIES_WHEN = {
    "lbfgs_history": lambda params: params.get("optimizer") == "lbfgs",
    "line_search": lambda params: params.get("optimizer") == "lbfgs",
    "quality": lambda params: params.get("format", "png") != "png",  # a PNG is lossless
    "scale_iterations": lambda params: isinstance(params.get("scales"), list) and len(params["scales"]) > 1,
}
# What "auto" precision is until a worker has run the job (worker/engine/precision.py resolve_precision).
AUTOMATIC_PRECISION = "automatic (bf16 where the worker's device supports it, else fp32)"


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
    amount: float = count
    for unit in ("kB", "MB", "GB", "TB"):
        amount /= 1000
        if amount < 1000 or unit == "TB":
            return f"{amount:.3g} {unit}"
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
def params_rows(params: dict[str, Any], precision: str | None = None) -> list[tuple[str, str]]:
    """Return the job's parameters as (label, value) rows, known ones first, leaving out those that change nothing for it.

    `precision` is what the job ran in ("fp32" or "bf16") where a worker recorded it: it says what "auto" became.
    """
    specs = {parameter.name: parameter.spec for parameter in parameters() if parameter.name not in SHOWN_WITH_INPUTS}
    known = [
        (spec.label, _param_named(name, spec, params, precision))
        for name, spec in specs.items()
        if name in params and APPLIES_WHEN.get(name, lambda _: True)(params)
    ]
    # Parameters of a later version than this page knows: their names, and their values where set.
    extra = [
        (name, param(value)) for name, value in params.items() if name not in specs and name not in SHOWN_WITH_INPUTS and value is not None
    ]
    # An unset value means "decided elsewhere": written out where it can be, left out where not, never shown as None.
    return [(label, value) for label, value in known if value is not None] + extra


def _param_named(name: str, spec: Spec, params: dict[str, Any], precision: str | None) -> str | None:
    """Write one parameter in words: choices as words, counts with their unit, unset values as what they come to."""
    value = params[name]
    if name == "precision" and value == "auto":
        return f"{precision} (chosen for the worker's device)" if precision else AUTOMATIC_PRECISION
    if name == "size" and isinstance(value, int):
        return f"{value} px on the long side"
    if name == "scales" and isinstance(value, list):
        return ", ".join(f"{item:.0%}" for item in value) + " of the size" + (" (one pass)" if len(value) == 1 else "")
    if name == "scales":
        return "automatic"
    if name == "scale_iterations":
        counts = value if value is not None else split_iterations(params["iterations"], tuple(params["scales"]))
        return ", ".join(str(item) for item in counts)  # never a [height, width] size, however many
    if spec.unit and isinstance(value, int):
        return f"{value} {spec.unit}"
    if spec.choices and isinstance(value, str):
        return spec.words_for(value)
    return None if value is None else param(value)
