"""Benchmarks for mlxstore, run as `python -m bench SUBCOMMAND` from the repo root."""
