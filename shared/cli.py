"""The `styleq` command: one group whose subcommands are imported only when they run."""

from __future__ import annotations

import importlib

import click

# Subcommands live beside what they drive (the engine's in worker/); importing them lazily keeps
# `styleq --help` fast and keeps this package free of torch.
_SUBCOMMANDS = {
    "transfer": "worker.cli:transfer_command",
    "weights": "worker.cli:weights",
    "worker": "worker.cli:worker_command",
    "up": "api.commands:up",
    "db": "api.commands:db",
    "keys": "api.commands:keys",
    "submit": "api.client:submit",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_SUBCOMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _SUBCOMMANDS:
            return super().get_command(ctx, name)
        module, attribute = _SUBCOMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="styleq")
def main() -> None:
    """Neural style transfer: run it here, or as a job service."""


if __name__ == "__main__":
    main()
