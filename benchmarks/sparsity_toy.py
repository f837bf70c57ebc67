"""Post-training weight sparsity on the bundled toy world: quality curves, the SD2 study's claims, and sparsity
combined with depth pruning. Writes benchmarks/results/sparsity_toy.json, docs/sparsity.md and docs/sparsity.png.

1. **Curves.** For each component (text_encoder, transformer, both) x method (magnitude, wanda): unstructured
   sparsity 10..90% in steps of 10 (scope ``layer``: magnitude per layer, Wanda per output row), and the N:4 family
   3:4, 2:4, 1:4 (25, 50, 75%). Wanda calibrates on ``--calibration-prompts`` training captions drawn with seed
   ``s`` (noise seeds ``1000 s + i``, a full 20-step generation, one pass of the dense model), for each of
   ``--seeds``; magnitude has no randomness and runs once. Every cell is judged on the 216 held-out captions with
   the same noise (``--eval-seed + i``), so cells compare image for image.
2. **Claims** of the post-training pruning study of Stable Diffusion 2, each stated as holds / partly / does not
   hold, with the rules written in the generated page.
3. **Depth + sparsity.** The transformer's non-zero parameter count of 25% depth pruning (3 of 12 blocks removed)
   is reached with d = 0, 1, 2 blocks removed plus the magnitude sparsity that removes the rest, and with d = 3
   alone. Blocks are chosen by the preference criterion (scored per seed on 64 training captions, as
   reproduce_paper.py does). Each pair is judged before and after the same distillation budget
   (``training/train_distill.py``, 400 steps, the settings of reproduce_paper.py); the sparse students keep their
   zeros (train_distill re-applies the masks after every step when the student folder has ``sparsity.json``).
   The other order (distil the depth-pruned model, then sparsify) is measured for d = 1, 2 as a check of that
   choice.

Cells are appended to ``OUTPUT/cells.jsonl`` as they finish; a re-run skips finished cells. ``--report-only``
rebuilds the doc and the plot from benchmarks/results/sparsity_toy.json.

    python benchmarks/sparsity_toy.py                # everything (~40 min on a 2-core CPU)
    python benchmarks/sparsity_toy.py --report-only  # docs/sparsity.md + docs/sparsity.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Before torch is imported (diffusers imports it): spinning OpenMP waits stall badly on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's package, then benchmarks/
from sparsity_study.claims import METRICS, check_claims, curve_table  # noqa: E402,F401  (the rules; tests read them here)
from sparsity_study.report import finish  # noqa: E402
from sparsity_study.run import Benchmark  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="Wanda calibration seeds")
    p.add_argument("--combo-seeds", default="0,1,2", help='depth + sparsity seeds ("" skips that part)')
    p.add_argument("--calibration-prompts", type=int, default=64)
    p.add_argument("--score-prompts", type=int, default=64, help="training captions of the preference scan")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out captions judged (default: all 216)")
    p.add_argument("--eval-seed", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=72)
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--order-seeds", default="0", help='seeds of the distil-then-sparsify check (d = 1, 2; "" skips it)')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="runs/sparsity_toy", help="cells and models")
    p.add_argument("--results", default="benchmarks/results/sparsity_toy.json")
    p.add_argument("--doc", default="docs/sparsity.md", help="the generated page; its plot goes next to it (.png)")
    p.add_argument("--report-only", action="store_true", help="rebuild the doc and the plot from --results")
    p.add_argument("--runtime-note", default=None, help="how busy the machine was, stated beside the runtime")
    p.add_argument("--keep-models", action="store_true", help="keep the students and distilled models on disk")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report_only:
        result = json.loads(Path(args.results).read_text())
    else:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        started = time.time()
        result = Benchmark(args).run()
        print(f"finished in {(time.time() - started) / 60:.1f} min", flush=True)
    finish(result, args)


if __name__ == "__main__":
    main()
