"""What `styleq transfer` and `styleq submit` share (no torch here): the STYLE arguments with `--style-weights`, and one
option per transfer parameter, made from the parameters' specs (shared/domain/params.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from styleq.shared.domain.params import AUTO, MAX_STYLES, Parameter, parameters, parse_size, parse_style_weights

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


def _parse_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _parse_names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    return None if value is None else [name.strip() for name in value.split(",") if name.strip()]


def _parse_numbers(kind: type) -> Callable[[click.Context, click.Parameter, str | None], list | None]:
    def parse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list | None:
        if value is None:
            return None
        try:
            return [kind(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {'numbers' if kind is float else 'whole numbers'}, got {value!r}") from None

    return parse


def _parse_scales(ctx: click.Context, param: click.Parameter, value: str | None) -> list | str | None:
    if value is not None and value.strip().lower() == AUTO:
        return AUTO
    return _parse_numbers(float)(ctx, param, value)


# How a parameter of each kind (its annotation in TransferParams) is read from the command line.
READERS: dict[str, dict[str, Any]] = {
    "int": {"type": int},
    "float": {"type": float},
    "str": {"type": str},
    "tuple[int, int] | int": {"callback": _parse_size, "metavar": "HEIGHTxWIDTH|LONG_SIDE"},
    "tuple[str, ...]": {"callback": _parse_names, "metavar": "LAYER,..."},
    "tuple[float, ...] | str": {"callback": _parse_scales, "metavar": "auto|FRACTION,..."},
    "tuple[int, ...] | None": {"callback": _parse_numbers(int), "metavar": "COUNT,..."},
}


def _option(parameter: Parameter) -> Callable[[F], F]:
    """Return the click option of one parameter: its flag, its reader by kind, its help from its spec (with its bounds)."""
    spec = parameter.spec
    help_text = spec.description + (f" ({spec.bounds()})" if spec.bounds() else "")
    if parameter.kind == "bool":
        # Unset (None) leaves it to the preset, as every other option does.
        flag = parameter.option
        return click.option(f"{flag}/--no-{flag.removeprefix('--')}", parameter.name, default=None, help=help_text)
    if spec.choices:
        return click.option(parameter.option, parameter.name, type=click.Choice(spec.choices), help=help_text)
    if parameter.kind not in READERS:
        raise TypeError(
            f"parameter {parameter.name} is of a kind ({parameter.kind}) the command line has no reader for; give its spec option=''"
        )
    return click.option(parameter.option, parameter.name, help=help_text, **READERS[parameter.kind])


def parameter_options(command: F) -> F:
    """Give a command one option per transfer parameter (but those whose spec says option=""), each None when not given."""
    for parameter in reversed(parameters()):
        if parameter.spec.option != "":
            command = _option(parameter)(command)
    return command
