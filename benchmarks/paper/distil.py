"""The toy-world benchmarks' distillation run: ``training/train_distill.py`` with the experiment's fixed recipe
(cosine schedule, 5% warm-up, prompt-only KD), resumed from its last checkpoint after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "training" / "train_distill.py"


def distil(
    teacher: str,
    student: Path,
    output: Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    log: Path,
    max_train_samples: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> float:
    """Distil ``student`` from ``teacher`` into ``output`` (skipped when it is finished); the seconds it took.
    The child imports this checkout's package first; its output goes to ``log``, whose tail a failure shows."""
    if (output / "model_index.json").is_file():
        return 0.0
    if any(output.glob("checkpoint-*")):
        resume = ["--resume_from_checkpoint", "latest"]
    else:  # a run killed before its first checkpoint left nothing to resume: start it again
        resume = ["--overwrite_output_dir"] if output.exists() else []
    cmd = [
        sys.executable, str(TRAIN_SCRIPT),
        "--teacher_model", teacher,
        "--student_model", str(student),
        "--output_dir", str(output),
        "--max_train_steps", str(steps),
        "--train_batch_size", str(batch_size),
        "--learning_rate", str(learning_rate),
        "--lr_scheduler", "cosine",
        "--lr_warmup_steps", str(max(1, steps // 20)),
        "--checkpointing_steps", str(max(1, steps // 2)),
        "--checkpoints_total_limit", "1",
        "--seed", str(seed),
        "--report_to", "none",
        *(["--max_train_samples", str(max_train_samples)] if max_train_samples else []),
        *extra_args,
        *resume,
    ]  # fmt: skip
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log.open("a") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"distillation failed ({log}):\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return time.perf_counter() - start
