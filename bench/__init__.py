"""Benchmarks for mlxstore, run as `python -m bench COMMAND` from the repo root.

- bench/commands/: one module per command, named after it (`python -m bench policy` is
  bench/commands/policy.py); the README names the command behind each figure.
- bench/stages/: the stages of `python -m bench all` (targets P1-P8, the sweeps).
- bench/harness/: what they share (model generator, worker processes, memory cap,
  raw-disk reference, hostile stores, policy simulation, report, results files).
- bench/results/: the figures the README quotes; a rerun writes a new file beside them.
- bench/micro/: pytest-benchmark micro-benchmarks of the hot pieces.
"""
