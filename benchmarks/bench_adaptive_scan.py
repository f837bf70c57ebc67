"""Adaptive vs exhaustive preference scan on the toy world: images generated, and the judged quality of the blocks
each one removes. Writes benchmarks/results/bench_adaptive_scan.json and the generated section of docs/criteria.md.

For each seed ``s`` (0-5) and each removal count (25% and 40% of the 12 blocks: 3 and 5):

1. The prompt budget: ``--score-prompts`` training captions drawn with seed ``s``, noise seeds ``1000 s + i`` (as in
   benchmarks/reproduce_paper.py).
2. Exhaustive: ``preference`` on every prompt with every block skipped, ``(12 + 1) x N`` images; its stability
   (bootstrap probability of the same selection) for each removal count.
3. Adaptive: ``layerprune score --adaptive`` for each removal count on the same budget (rounds of
   ``--round-prompts``, ``--tolerance`` and ``--confidence`` as given); the images it generates are the images of
   its rounds (the blocks still undecided, per prompt, and the full model in the first round).
4. Quality: drop each scan's selection from the teacher and judge the 216 held-out captions (noise seeds
   ``100000 + 1000 s + i``, never used in scoring): overall accuracy (colour, position, shape and size all right).
   Difference adaptive - exhaustive with its standard error from the per-caption paired differences.

``--confirmation-seeds`` (3, 4, 5) were scanned only after the configurations compared (tolerances, proxies) had
been fixed by looking at the others: every configuration is also judged on them alone, as a check that was not tuned.

Both scans go through one ImportanceScan with a progress file, so they share units (the adaptive scan's images are a
subset of the exhaustive scan's) and a killed run resumes; importance files and judged cells in ``--output`` are
reused, so only missing work runs. ``--report-only`` rebuilds the JSON and the docs section from them.

    python benchmarks/bench_adaptive_scan.py                 # ~1 h from nothing on the shared 2-core CPU
    python benchmarks/bench_adaptive_scan.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from adaptive_scan_study.claims import judged_option  # noqa: E402,F401  (the rule; tests read it here)
from adaptive_scan_study.report import BEGIN, END, render  # noqa: E402
from adaptive_scan_study.run import run  # noqa: E402
from paper.cells import replace_section  # noqa: E402  (atomic writes)
from toybench import write_json  # noqa: E402  (the toy benchmarks' shared pieces)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument(
        "--confirmation-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds (of --seeds) scanned only after the configurations were fixed; every configuration is also judged "
        "on them alone (default: those of 3, 4, 5 in --seeds)",
    )
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.40])
    p.add_argument("--score-prompts", type=int, default=64, help="the prompt budget of both scans")
    p.add_argument("--round-prompts", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument(
        "--sweep-tolerances",
        type=float,
        nargs="*",
        default=[0.02, 0.075, 0.1],
        help="also run the adaptive scan with these tolerances on the same budget (its images come from the progress "
        "files, so only the judging of new selections costs time): the images/quality trade-off",
    )
    p.add_argument(
        "--proxy-steps",
        type=int,
        nargs="*",
        default=[5, 10],
        help="cheaper proxies: the exhaustive and the adaptive scan with this many sampler steps (of the model's 20) "
        "on the same prompts and noise; their rank correlation with the full exhaustive scan, and the judged quality "
        "of what they choose (judged at the full setting)",
    )
    p.add_argument(
        "--spread-draws",
        type=int,
        default=200,
        help="bootstrap resamples of the exhaustive scan's prompts: the choices another prompt draw would have made, "
        "judged, give the spread of the exhaustive choice's quality (0: skip)",
    )
    p.add_argument("--eval-prompts", type=int, default=216)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per unit while scoring (and per judge batch x4)")
    p.add_argument("--output", type=Path, default=ROOT / "runs" / "bench_adaptive_scan")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_adaptive_scan.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "criteria.md")
    p.add_argument("--report-only", action="store_true", help="rebuild the JSON and the docs section from --output")
    args = p.parse_args(argv)
    if args.confirmation_seeds is None:
        args.confirmation_seeds = [seed for seed in (3, 4, 5) if seed in args.seeds]
    if not set(args.confirmation_seeds) <= set(args.seeds):
        p.error(f"--confirmation-seeds {args.confirmation_seeds} must be among --seeds {args.seeds}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started, load = time.time(), os.getloadavg()[0]
    result = run(args)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    # Every run that added work, in order (a re-run reuses finished scans and cells, so each adds only what was new).
    result["runs"] = previous.get("runs", [previous["run"]] if "run" in previous else [])
    if not args.report_only:
        # The machine is shared: the load tells how much of it this run had.
        result["runs"].append(
            {
                "wall_seconds": time.time() - started,
                "load_average_1min_start": load,
                "load_average_1min_end": os.getloadavg()[0],
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
            }
        )
    write_json(args.json, result)
    replace_section(args.doc, BEGIN, END, render(result))
    print(render(result))


if __name__ == "__main__":
    main()
