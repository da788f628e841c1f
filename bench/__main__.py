"""`python -m bench`: one click group; each subcommand lives in its own module.

To add a subcommand, create ``bench/<name>.py`` defining a module-level
``command = click.command("<name>")(...)``. Modules are found by scanning this
package, so no registry needs editing; modules without ``command`` are skipped.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

import bench


class _ScanGroup(click.Group):
    """Imports bench modules only when the command list or a command is asked for."""

    def _scan(self) -> dict[str, click.Command]:
        found: dict[str, click.Command] = {}
        for mod in pkgutil.iter_modules(bench.__path__):
            if mod.name.startswith("_"):
                continue
            module = importlib.import_module(f"bench.{mod.name}")
            cmd = getattr(module, "command", None)
            if isinstance(cmd, click.Command):
                found[cmd.name or mod.name] = cmd
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._scan())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._scan().get(cmd_name)


@click.group(cls=_ScanGroup)
def cli() -> None:
    """mlxstore benchmarks."""


if __name__ == "__main__":
    cli()
