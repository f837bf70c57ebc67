"""Full-size rehearsal: the whole recipe on a randomly initialised pipeline with PixArt-Sigma-XL's real sizes.

    python benchmarks/rehearse_full_size.py                       # CPU: 256 px, 2 prompts, 2 sampler steps
    python benchmarks/rehearse_full_size.py --device cuda --dtype bfloat16 --resolution 1024

The pipeline has PixArt-Sigma-XL's transformer (28 blocks, width 1152, 0.61B parameters), the SDXL VAE, a T5
encoder of T5-XXL's real width (d_model 4096, 64 heads, d_ff 10240, 32128-token embedding) with
``--text-encoder-layers`` of its 24 layers, and the real 300-token text length. With ``--scorer vit-h`` the
preference scorer is a CLIP of HPSv2's size (ViT-H-14 image tower, 1024-wide 24-layer text tower), random too.

Each stage runs as users run it, as its own command (``layerprune score / prune``, ``python -m
diffusers_layerprune.train_distill``, ``layerprune eval / push``): score the blocks with ``preference`` and
``block_influence``, prune 28 -> 24 blocks (transformer only), distil a few steps, evaluate against the teacher,
and a dry-run push of the transformer only. Per stage it records wall time, the peak resident memory of the
stage's process tree (sampled every 0.1 s) and the bytes it wrote. It also measures, in this process, the cost of
one transformer forward (and of the text encoder per prompt), which docs/scale.md uses to project each stage to
the paper's settings. Prints a table and writes ``benchmarks/results/rehearse_full_size[_<device>].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from paper.cells import GPU_END, GPU_START, generated_section  # noqa: E402,F401  (tests read them here)
from rehearse_study.measure import count_component_flops  # noqa: E402
from rehearse_study.report import project, write_doc  # noqa: E402
from rehearse_study.run import run  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/rehearsal", help="working folder (replaced)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="sampler steps while scoring, generating latents, evaluating")
    p.add_argument("--distill-steps", type=int, default=2)
    p.add_argument("--text-encoder-layers", type=int, default=2, help="of T5-XXL's 24 (width is real)")
    p.add_argument("--scorer", default="vit-h", choices=["vit-h", "tiny"], help="size of the random CLIP scorer")
    p.add_argument("--keep", type=int, default=24, help="blocks kept (of 28)")
    p.add_argument("--output", default=None, help="JSON (default: benchmarks/results/rehearse_full_size[_DEVICE].json)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "scale.md"), help="page to write from the JSON")
    p.add_argument("--report-only", action="store_true", help="rebuild --doc from the JSON; run nothing")
    args = p.parse_args(argv)
    name = f"rehearse_full_size{'' if args.device == 'cpu' else '_' + args.device}.json"
    out = Path(args.output or ROOT / "benchmarks" / "results" / name)
    if args.report_only:
        result = json.loads(out.read_text())
        result.setdefault("flops", count_component_flops())
        result["projection"] = project(result["flops"])
        result["json_name"] = f"benchmarks/results/{out.name}"
        out.write_text(json.dumps(result, indent=2) + "\n")
        write_doc(result, Path(args.doc))
        print(f"wrote {args.doc}")
        return
    run(args, out)


if __name__ == "__main__":
    main()
