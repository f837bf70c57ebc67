"""Depth x cache x weights (x steps) on the bundled toy world: does depth pruning stack with diffusers' cache hooks
and int8 weights?

A small measurement (the machine is a 2-core CPU shared by several jobs), with these limits, all stated in the page
it writes:

- model: ``--model toy`` (PixArt toy) or ``--model toy-flux`` (the toy Flux); one result file each;
- depth: the teacher and, at 25% and 40% of the blocks removed, the selection whose distilled students were best in
  the paper grid (``reproduce_paper.json``'s distilled table for ``toy``: ``learnable``; ``reproduce_paper_flux.json``'s
  distilled stack plans for ``toy-flux``), the seed-0 plan, distilled 400 steps with reproduce_paper.py's recipe
  (``--distilled``; students kept under ``--work`` and reused; without it the pruned models are judged undistilled);
- cache: none, FirstBlockCache (threshold ``--fbc-threshold``), TaylorSeer (interval 2 from step 2), MagCache
  (diffusers' defaults: threshold 0.06, at most 3 skipped steps in a row, no skip in the first 20% of steps) with
  magnitude ratios calibrated per model (``MagCacheConfig(calibrate=True)`` on ``--calib-prompts`` *training*
  captions, never the held-out ones; with true CFG the mean of the cond and uncond contexts' ratios; the int8 cells
  reuse their float model's ratios); ``--mag-extra`` adds MagCache at other thresholds (float weights, cells named
  ``magcache@T``); a depth the paper grid has no distilled plan for is left out (toy-flux: 40%);
- weights: float32 and int8 weight-only (optimum-quanto, in memory); GGUF Q8_0 is checked with ``layerprune
  export``'s own check: both toys are refused (PixArt: no single-file loader; toy-flux: 64 wide, diffusers' Flux
  converter reads 3072 only), the refusal is recorded and shown; a model it accepts stops the script (no GGUF cells
  are implemented);
- steps (``--steps-axis N``): the uncached float32 models also at N denoising steps;
- ``--eval-prompts`` held-out captions x ``--seeds-per-caption`` noise seeds (seed ``s`` of caption ``i`` is
  ``eval-seed + 1000 s + i``, reproduce_paper.py's seeds); accuracy intervals are Wilson intervals over all images,
  points lost a paired interval over captions (each caption's seeds averaged, then a normal interval of the mean
  difference to the teacher on the same captions and seeds).

Per cell: the judge's all-four-right accuracy, transformer FLOPs per image counted with
``torch.utils.flop_counter.FlopCounterMode`` around every transformer call (int8 cells: the float cell's count, the
counter does not see quanto's kernels; the arithmetic is the same), latency as the process's CPU time per image
against the teacher's uncached float32 cell, from a separate pass of ``--timing`` images without the FLOP counter
(CPU time, not wall time: the cores are shared), and the cell's CPU seconds. Finished cells are kept one file each in
``--work/<model>/cells/`` (a killed or split run resumes; ``--depths`` / ``--caches`` split a run over parallel
commands); a retrained teacher is refused there (``teacher.sha256``). Writes the model's result JSON,
docs/stacking.png and the generated section of docs/stacking.md (every model whose JSON exists).

    python benchmarks/stack_toy.py --distilled --steps-axis 10 --mag-extra 0.02,0.01   # PixArt toy, ~12 CPU-minutes
    python benchmarks/stack_toy.py --model toy-flux --distilled --steps-axis 10 --mag-extra 0.02,0.01
    python benchmarks/stack_toy.py --distilled --depths 40%       # split runs (parallel commands): cells only
    python benchmarks/stack_toy.py --report-only                    # page and plot from the JSONs
    python benchmarks/stack_toy.py --smoke --results-dir /tmp/s --docs-dir /tmp/s   # ~1 CPU-minute: 2 images, 4 steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning waits stall on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's package, then benchmarks/
from paper.cells import replace_section  # noqa: E402
from stack_study.claims import MODELS, best_plans, derive, paired_points_lost, verdict  # noqa: E402,F401  (tests read them here)
from stack_study.report import BEGIN, END, plot, render  # noqa: E402
from stack_study.run import RESULTS, run  # noqa: E402
from toybench import write_json  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="toy", help="toy: PixArt toy; toy-flux: Flux toy")
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--seeds-per-caption", type=int, default=3)
    parser.add_argument("--eval-seed", type=int, default=100000)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--steps-axis", type=int, default=None, help="also the uncached float models at N steps")
    parser.add_argument("--fbc-threshold", type=float, default=0.05)
    parser.add_argument("--mag-threshold", type=float, default=0.06)
    parser.add_argument(
        "--mag-extra", type=lambda t: [float(x) for x in t.split(",")], default=None,
        help="also MagCache at these thresholds (float weights), e.g. 0.02",
    )  # fmt: skip
    parser.add_argument("--calib-prompts", type=int, default=16, help="training captions MagCache is calibrated on")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--timing", type=int, default=24, help="images per cell of the CPU-time pass (0: none)")
    parser.add_argument("--caches", default=None, help="split runs: compute only these caches' cells, write nothing")
    parser.add_argument(
        "--depths", default=None, help="split runs: compute only these depths' cells (full,25%%,40%%), write nothing"
    )
    parser.add_argument(
        "--distilled", action="store_true", help="distil the 25%%/40%% students first (reproduce_paper.py's recipe)"
    )
    parser.add_argument("--distill-steps", type=int, default=400)
    parser.add_argument("--work", default="runs/stack_toy", help="distilled students and finished cells (reused)")
    parser.add_argument("--smoke", action="store_true", help="2 captions, 1 seed, 2 steps, undistilled, nothing kept")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the result JSONs are read and written")
    parser.add_argument("--docs-dir", default=str(ROOT / "docs"), help="where stacking.md / stacking.png are")
    args = parser.parse_args(argv)
    if args.smoke:
        args.eval_prompts, args.seeds_per_caption, args.steps, args.calib_prompts = 2, 1, 4, 2
        args.distilled, args.steps_axis = False, 2
    results_dir, docs_dir = Path(args.results_dir), Path(args.docs_dir)
    if not args.report_only:
        result = run(args)
        if result is None:  # a split run (--depths, --caches)
            return
        write_json(results_dir / MODELS[args.model][0], result)
    results = [
        json.loads((results_dir / name).read_text()) for name, _, _ in MODELS.values() if (results_dir / name).is_file()
    ]
    results = [r for r in results if r.get("model")]  # a result of the first version has no model: run it again
    plot(results, docs_dir / "stacking.png")
    replace_section(docs_dir / "stacking.md", BEGIN, END, render(results))
    for result in results:
        print(MODELS[result["model"]][2])
        print("\n".join(verdict(result)))


if __name__ == "__main__":
    main()
