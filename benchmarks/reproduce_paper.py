"""The DiT-Pruner experiment on the bundled toy world: every criterion, three pruning ratios, three seeds, with and
without distillation. Writes benchmarks/results/reproduce_paper.json, docs/results.md and docs/results.png.

For each seed ``s`` (0, 1, 2 by default):

1. Score the 12 blocks of the toy teacher with every criterion (one shared scan, the settings of
   ``layerprune score --model toy``) on ``--score-prompts`` training captions drawn with seed ``s``, noise seeds
   ``1000 s + i``; ``random`` is the draw of seed ``1000 s``. Importance files go to ``OUTPUT/seed-s/importance``.
2. For each ratio (15%, 25%, 40% -> 2, 3, 5 of 12 blocks), drop each criterion's least important blocks (plan
   ``one_shot``; angular distance also with its ``span`` plan) and judge the 216 held-out captions (noise seeds
   ``EVAL_SEED + 1000 s + i``, none used in scoring or training): judge accuracy (colour, position, shape, size;
   overall = all four right) and toy preference score. Skipping blocks computes exactly what the pruned model
   computes (tests/test_modeling.py), so no copy is saved for this step.
3. For the ``--distill-criteria`` (preference, block_influence, random), save the pruned pipeline, distil it from
   the teacher with ``training/train_distill.py`` for a fixed ``--distill-steps`` budget (seed ``s``, prompt-only
   KD on the toy training captions: output + feature losses), and judge it the same way.

Every judged cell is appended to ``OUTPUT/cells.jsonl`` as it finishes; a re-run (after a crash, or with more
seeds) reuses finished cells and distilled models, so only missing work runs. ``--report-only`` rebuilds the JSON,
the doc and the plot from the cells.

The code is the small package ``benchmarks/paper/``: ``run`` (the experiment), ``claims`` (aggregation and the
paper's claims as checks), ``report`` (docs/results.md from ``results.md.in``, and the plot), ``cells`` (the cell
store the other toy-world benchmarks share).

    python benchmarks/reproduce_paper.py                        # the full grid: ~36 min on a 2-core CPU
    python benchmarks/reproduce_paper.py --report-only          # rewrite docs/results.md from runs/reproduce_paper
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper.cells import Cells, cell_key, mean_std  # noqa: E402,F401  (imported from here by older scripts)
from paper.claims import (  # noqa: E402,F401
    CRITERIA,
    DISTILL_CRITERIA,
    METRICS,
    RATIOS,
    RESTORED,
    SIMILARITY,
    SPAN,
    aggregate,
    blocks_to_drop,
    check_claims,
)
from paper.report import render_results, write_plot  # noqa: E402,F401
from paper.run import Experiment, plans_for  # noqa: E402,F401
from paper.run import main as _main  # noqa: E402
from paper.run import parse_args as _parse_args  # noqa: E402


def parse_args(argv=None):
    return _parse_args(argv, description=__doc__)


def main(argv=None) -> None:
    _main(argv, description=__doc__)


if __name__ == "__main__":
    main()
