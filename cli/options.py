"""Argument types shared by commands."""

from __future__ import annotations

import click

from mlxstore.sizes import parse_size


class Size(click.ParamType):
    """A byte count written like 5GB, 512MiB or 1048576 (units as mlxstore.sizes reads them)."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        try:
            return parse_size(value)
        except (TypeError, ValueError) as e:
            self.fail(str(e), param, ctx)
