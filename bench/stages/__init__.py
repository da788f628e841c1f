"""The stages of `python -m bench all`: one module per group of targets (P1-P8, sweeps).

bench/commands/all.py runs them in order; each returns its figures and the details that
bench/harness/report.py prints.
"""
