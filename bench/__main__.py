"""`python -m bench`: one click group; each subcommand lives in its own module.

To add a subcommand, create ``bench/commands/<name>.py`` defining a module-level
``command = click.command("<name>")(...)``. Modules are found by scanning that
package, so no registry needs editing; modules without ``command`` are skipped.
The file is named after its command: `python -m bench X` is bench/commands/X.py.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

import bench.commands


class _ScanGroup(click.Group):
    """Finds ``command`` in each bench module; a module that fails to import only
    hides its own subcommand (its error is shown when no command matches)."""

    def _scan(self) -> tuple[dict[str, click.Command], dict[str, str]]:
        found: dict[str, click.Command] = {}
        broken: dict[str, str] = {}
        for mod in pkgutil.iter_modules(bench.commands.__path__):
            if mod.name.startswith("_"):
                continue
            try:
                module = importlib.import_module(f"bench.commands.{mod.name}")
            except Exception as e:  # noqa: BLE001 - reported below, other commands still work
                broken[mod.name] = f"{type(e).__name__}: {e}"
                continue
            cmd = getattr(module, "command", None)
            if isinstance(cmd, click.Command):
                found[cmd.name or mod.name] = cmd
        return found, broken

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._scan()[0])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found, broken = self._scan()
        if cmd_name not in found and broken:
            details = "; ".join(f"bench/commands/{m}.py: {err}" for m, err in sorted(broken.items()))
            raise click.ClickException(f"no command {cmd_name!r}; modules that failed to import: {details}")
        return found.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        broken = self._scan()[1]
        if broken:
            with formatter.section("Modules that failed to import"):
                formatter.write_dl(sorted((f"bench/commands/{m}.py", err) for m, err in broken.items()))


@click.group(cls=_ScanGroup)
def cli() -> None:
    """mlxstore benchmarks."""


if __name__ == "__main__":
    cli()
