"""One module per `python -m bench <name>` command, named after it (bench/__main__.py finds them).

Each README figure names the command that produced it; its code is bench/commands/<name>.py.
"""
