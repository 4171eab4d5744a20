"""The STYLE arguments and `--style-weights` option that `styleq transfer` and `styleq submit` share (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from styleq.shared.domain.params import MAX_STYLES, parse_style_weights

F = TypeVar("F", bound=Callable[..., Any])


def parse_style_weights_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """Parse `--style-weights` like 0.7,0.3 (`styleq transfer` and `styleq submit`)."""
    if value is None:
        return None
    try:
        return parse_style_weights(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def check_style_count(count: int, weights: tuple[float, ...] | None) -> None:
    """Refuse a number of STYLE arguments that is not 1 to MAX_STYLES, or that `--style-weights` does not give one weight each."""
    if count > MAX_STYLES:
        raise click.UsageError(f"give 1 to {MAX_STYLES} STYLE images to blend, got {count}")
    if weights is not None and len(weights) != count:
        raise click.BadParameter(
            f"{len(weights)} weight(s) for {count} STYLE image(s); give one per style, in their order",
            param_hint="--style-weights",
        )


def style_images(command: F) -> F:
    """Give a command its STYLE... arguments (`styles`, 1 to MAX_STYLES paths) and `--style-weights` (`style_weights`)."""
    command = click.option(
        "--style-weights",
        callback=parse_style_weights_option,
        help=f"With several STYLE images (up to {MAX_STYLES}): each one's share of the blend, e.g. 0.7,0.3 (default: equal shares).",
    )(command)
    return click.argument(
        "styles",
        metavar="STYLE...",
        nargs=-1,
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
    )(command)
