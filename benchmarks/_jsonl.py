"""JSON-lines output shared by the benchmark scripts."""

import json


def emit(out, record):
    """Print ``record`` as one JSON line and, with ``out``, append it there
    (as it comes: an interrupted run keeps the lines it printed)."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
