"""The `styleq` command: one group whose subcommands are imported only when they run.

One module per audience: `service` runs the job service on this machine (`up`, `db`, `keys`,
`worker`), `engine` runs the engine here (`transfer`, `weights`), and `client` talks to a running API
(`submit`, and `StyleqClient` for Python). This package may import `api`, `worker` and `shared`;
nothing imports it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

log = logging.getLogger(__name__)

# Importing subcommands lazily keeps `styleq --help` fast and free of torch.
_SUBCOMMANDS = {
    "transfer": ("styleq.cli.engine:transfer_command", "Paint CONTENT in the style of STYLE, here, with a progress bar."),
    "weights": ("styleq.cli.engine:weights", "Fetch and list the VGG weights the engine runs on."),
    "worker": ("styleq.cli.service:worker_command", "Run job workers: one process per GPU."),
    "up": ("styleq.cli.service:up", "Set everything up and run the API and a worker until Ctrl-C."),
    "db": ("styleq.cli.service:db", "Manage the job database."),
    "keys": ("styleq.cli.service:keys", "Manage API keys."),
    "submit": ("styleq.cli.client:submit", "Submit a job to a styleq API and follow it."),
    "gc": ("styleq.cli.service:gc", "Remove results, previews, states and uploads past their retention."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_SUBCOMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _SUBCOMMANDS:
            return super().get_command(ctx, name)
        module, attribute = _SUBCOMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def invoke(self, ctx: click.Context) -> Any:
        # Every failure a command did not foresee still ends in one line and exit status 1, never a
        # traceback (which may hold a statement's parameters, such as a new key's hash); the
        # traceback goes to the log at DEBUG, for whoever debugs styleq itself.
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            log.debug("styleq %s failed", ctx.invoked_subcommand, exc_info=True)
            raise click.ClickException(one_line(error) + " (STYLEQ_LOG_LEVEL=DEBUG logs the traceback)") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table above, so that `styleq --help` does not import torch to print one line each.
        with formatter.section("Commands"):
            formatter.write_dl([(name, _SUBCOMMANDS[name][1]) for name in sorted(_SUBCOMMANDS)])


def one_line(error: BaseException) -> str:
    """Describe an unexpected error in one line: its type and the first line of its message."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(error, SQLAlchemyError):
        # The driver's words, not SQLAlchemy's, which go on with the statement and its parameters.
        error = getattr(error, "orig", None) or error
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="styleq")
def main() -> None:
    """Neural style transfer: run it here, or as a job service."""
    from pydantic import ValidationError

    from styleq.shared.adapters.logs import configure_logging
    from styleq.shared.adapters.settings import load_settings

    try:
        settings = load_settings()
    except ValidationError as error:
        raise click.ClickException(f"a STYLEQ_* environment variable is invalid: {error}") from None
    # Log lines (JSON unless standard error is a terminal; STYLEQ_LOG_FORMAT, STYLEQ_LOG_LEVEL) as the service writes them.
    configure_logging(settings)
