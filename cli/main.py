"""The `mlxstore` command: a click group whose commands live in their own modules.

Commands are imported only when run, so `mlxstore --help` stays fast and a broken
optional dependency of one command does not break the others.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# Adding a command is adding its name here: module mlxstore.cli.<name> defines click
# command <name>.
COMMANDS = ("pack", "info", "verify", "demo", "generate", "serve", "chat", "plan")


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"mlxstore.cli.{name}"), name)

    def invoke(self, ctx: click.Context):
        """Exit quietly with 0 when stdout is closed early (`mlxstore info STORE | head`)."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)  # the interpreter's last flush would fail again
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlxstore")
def main() -> None:
    """Page-aligned tensor stores for MLX models: pack, inspect, verify, run, serve, chat."""
