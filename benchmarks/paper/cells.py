"""Cells: one judged model (teacher, pruned or distilled) per line of a JSONL file, appended as soon as it is done,
so a killed run loses at most the cell it was computing. Used by every toy-world benchmark that runs a grid."""

from __future__ import annotations

import json
import os
from pathlib import Path

from toybench import mean_std  # noqa: F401  (paper's modules and older scripts import it from here)


def cell_key(stage: str, seed: int, dropped, variant: str = "") -> str:
    """``variant`` names the distillation settings, so cells of other budgets in the same folder are not reused."""
    stage = f"{stage}[{variant}]" if variant else stage
    return f"{stage}|seed={seed}|drop={','.join(str(b) for b in dropped)}"


class Cells:
    """Append-only store of judged cells; a line is written (and flushed to disk) as soon as its cell is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.computed = 0
        self._read()

    def _read(self) -> None:
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill: that cell is computed again
                        continue
                    self.records[record["key"]] = record

    def get(self, key: str) -> dict | None:
        if key not in self.records:  # a second run of the same command (another process) may have finished it
            self._read()
        return self.records.get(key)

    def put(self, key: str, record: dict) -> dict:
        record = {"key": key, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = record
        self.computed += 1
        return record


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the library's atomic file: a reader never sees half a file)."""
    from diffusers_layerprune.outputs import atomic_output_file

    with atomic_output_file(path) as tmp:
        tmp.write_text(text)


def replace_section(path: str | os.PathLike, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the generated section of the
    page ``path``, atomically; a page without both markers is refused, saying where they go."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no generated section markers; add\n{begin}\n{end}\nwhere the results go")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end + "\n", 1) if end + "\n" in rest else rest.split(end, 1)
    write_text(path, head + section + tail)


# The GPU section of a page (benchmarks/gpu_check.py --report-only writes it); pages another script writes whole keep
# it with generated_section.
GPU_START, GPU_END = "<!-- gpu_check:start -->", "<!-- gpu_check:end -->"


def generated_section(path: str | os.PathLike, begin: str, end: str) -> str:
    """The generated section of the page ``path``, markers included, or ``""`` when the page or a marker is missing:
    what a script that rewrites the whole page carries over so another script's section survives."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if begin not in text or end not in text.split(begin, 1)[1]:
        return ""
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end
