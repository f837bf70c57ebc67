"""One prepared GPU check: every figure that only a GPU shows, in one command under 8 minutes on one H100.

    python benchmarks/gpu_check.py --output benchmarks/results/gpu          # on the GPU (see docs/gpu.md)
    python benchmarks/gpu_check.py --output /tmp/gpu-smoke --smoke          # the same code paths, tiny, on CPU
    python benchmarks/gpu_check.py --output benchmarks/results/gpu --report-only   # docs' GPU sections from JSON

Every model is built from a published config shipped in the package (``testing.PUBLISHED_TRANSFORMERS``, T5-XXL's
encoder from ``testing.T5_XXL_ENCODER``) with random weights (speed and memory do not depend on the values), in
bfloat16, at 1024 px. Sections run in this order; each writes ``DIR/<section>.json`` (atomically) as soon as it ends,
and the long ones also save each finished measurement in ``DIR/<section>.partial.json``, so a run that is cut off
loses at most the measurement in flight. A rerun skips finished sections (``--force`` redoes them) and finished
measurements. At the end every section is merged into ``gpu_<card>.json`` beside ``DIR``. After ``--time-limit``
seconds (420 by default on a GPU) no new section or measurement starts, so one call ends inside 8 minutes even
when the estimates below are off; the rerun finishes the set.

a  pixart     PixArt-Sigma-XL transformer: latency and peak memory of the full model and of 25% / 40% pruned ones
              (blocks evenly spread), speed-up against the ideal (the depth ratio).                      ~20 s
b  families   the same for every other family at its published config (Sana 1.6B, SD3.5 Medium, Flux.1-dev).
                                                                                                            ~70 s
c  kd         one knowledge-distillation step of PixArt-Sigma-XL pruned by 25% (``distill.kd_step_losses``:
              teacher forward keeping paired block outputs, student forward and backward, AdamW) against its
              floor (teacher forward + a plain student step), and each one's peak memory.              ~40 s
d  sparsity   2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) of the T5-XXL encoder's
              and of the PixArt-Sigma-XL transformer's linears: speed-up and output error.              ~45 s
e  stacking   depth x cache (diffusers.hooks First Block Cache, TaylorSeer) x int8 (torchao weight-only, when
              installed) on Flux.1-dev and PixArt-Sigma-XL: latency of a denoising loop.              ~110 s

The times are estimates for one H100 from FLOP counts (no GPU was available when this was written), start-up and
model builds included; each section's JSON records its measured time. Timing: CUDA events around the timed work
after ``torch.cuda.synchronize`` (``evaluation.elapsed_seconds``), warm-up first, median of repeats, models of a
comparison interleaved (``evaluation.transformer_latency``). Peak memory: the allocator's peak during one forward over
what was allocated before it, plus the model's own weights (a pruned model shares its weights with the full one here,
so its weights are counted by its own tensors).

``--smoke`` runs the same code on CPU in float32 with the package's tiny random models (their depth doubled so that
25% and 40% pruning differ) and few repeats, in under a minute (about 20 CPU-seconds). The CUDA-only parts fall back and say so in the
JSON: the wall clock instead of CUDA events, no peak memory (no allocator statistics), and 2:4 as a mask on dense
weights (a dense matmul) instead of the sparse kernels. Smoke results are not measurements; ``--report-only`` refuses
to write them into the repository's docs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP waits stall on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the paper package (replace_section)

import torch  # noqa: E402
from gpu_study.common import DOCS, GPU, GPU_TIME_LIMIT, SCHEMA, SMOKE  # noqa: E402,F401  (tests read SCHEMA here)
from gpu_study.report import END, START, report  # noqa: E402,F401
from gpu_study.running import Section, load_records, merge, run_sections, select_sections  # noqa: E402,F401
from gpu_study.sparsity import mask_two_four  # noqa: E402,F401  (the names below: tests read them here)
from gpu_study.stacking import apply_cache, remove_hooks  # noqa: E402,F401

from diffusers_layerprune.evaluation import latency_inputs  # noqa: E402,F401
from diffusers_layerprune.quiet import quiet  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder of the section JSONs (e.g. benchmarks/results/gpu)")
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU: the same code paths in under a minute")
    p.add_argument("--report-only", action="store_true", help="rebuild the docs' GPU sections from --output's JSON")
    p.add_argument("--sections", default=None, help="comma-separated letters or names (default: all, in order)")
    p.add_argument("--force", action="store_true", help="redo sections (and measurements) already finished")
    p.add_argument("--merged", default=None, help="merged JSON (default: gpu_<card>.json beside --output)")
    p.add_argument("--docs", default=str(DOCS), help="folder of the pages --report-only rewrites")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help=f"seconds after which no new section or measurement starts (default: {GPU_TIME_LIMIT:.0f} on a GPU, "
        "none with --smoke; 0: none); a rerun finishes the rest",
    )
    args = p.parse_args(argv)
    output = Path(args.output)
    if args.report_only:
        for path in report(output, Path(args.docs)):
            print(f"wrote {path}")
        return load_records(output)
    sections = select_sections(args.sections)
    settings = SMOKE if args.smoke else GPU
    if settings.cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine (docs/gpu.md), or --smoke for the CPU rehearsal")
    if settings.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    with quiet():  # the libraries' warnings about casting random models would bury the section lines
        limit = args.time_limit if args.time_limit is not None else (None if settings.smoke else GPU_TIME_LIMIT)
        records = run_sections(sections, settings, output, args.force, limit)
    merged = merge(output, Path(args.merged) if args.merged else None)
    print(f"total {time.perf_counter() - started:.0f} s; sections in {output}; merged: {merged}")
    return records


if __name__ == "__main__":
    main()
