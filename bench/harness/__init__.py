"""What the commands and stages share: the benchmark model, worker processes and their
memory cap, interleaved sides, raw-disk references, hostile stores, trace replay of the
slot policies, the results files and the report.
"""
