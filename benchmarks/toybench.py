"""Pieces the benchmark scripts share: writing a result, rendering captions with fixed seeds.

Each benchmark stays a short script that states its question; what every one of them does the same way lives here,
so a fix (say, to how seeds map to captions) reaches all of them at once. Scripts run as ``python benchmarks/x.py``,
which puts this folder on ``sys.path``; ``import toybench`` therefore needs no path set-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_result(path: str | os.PathLike, result: dict, note: str = "") -> Path:
    """Write ``result`` as indented JSON to ``path`` (parents created) and print where it went.

    ``note`` is appended to the printed line, e.g. the run's duration.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}{note}")
    return out
