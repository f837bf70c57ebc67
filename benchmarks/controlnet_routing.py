"""Where a parent's ControlNet residuals land on a depth-pruned model, before and after ``layerprune adapt-controlnet``.

For tiny random Flux, SD3 and Sana pipelines and ControlNets (fp32, CPU, 2 steps, 16 px): the parent is pruned with
``prune_to_folder``; the stock ``FluxControlNetPipeline`` / ``StableDiffusion3ControlNetPipeline`` / ``SanaControlNetPipeline`` runs

- **reference**: the parent + its ControlNet with the removed blocks skipped, every kept block receiving the residual
  its source block receives in the full parent (``skip_blocks`` + ``residuals_as_in_parent``);
- **stock**: the pruned folder + the unchanged ControlNet (what a user gets today);
- **adapted**: the pruned folder + the ControlNet ``adapt_controlnet`` wrote, loaded by the stock class.

Sana's ControlNet feeds its sample k to block k + 1 (blocks beyond its depth get none). It reports whether each runs, which parent sample each kept block receives (parent vs stock), the chain the adapted
ControlNet runs, and the max abs image difference to the reference. Cases that no exact remap covers are listed with
the one-line refusal. Writes benchmarks/results/controlnet_routing.json.

    python benchmarks/controlnet_routing.py    # ~1 min on a 2-core CPU
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers_layerprune.adapters.controlnet import (  # noqa: E402
    adapt_controlnet,
    residual_routing,
    residuals_as_in_parent,
)
from diffusers_layerprune.blocks import skip_blocks  # noqa: E402
from diffusers_layerprune.errors import LayerPruneError  # noqa: E402
from diffusers_layerprune.families import family_of  # noqa: E402
from diffusers_layerprune.modeling import prune_to_folder  # noqa: E402
from diffusers_layerprune.testing import (  # noqa: E402
    build_tiny_controlnet,
    build_tiny_flux_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
    tiny_controlnet_images,
)

# name, pipeline builder + arguments, ControlNet depths, ControlNet config, removed blocks (global numbering)
CASES = [
    (
        "flux 4+8 blocks, ControlNet 2+3, drop double 1, single 4 and 7",
        build_tiny_flux_pipeline,
        (4, 8),
        (2, 3),
        {},
        [1, 8, 11],
    ),
    (
        "flux 4+8, ControlNet 2+3, drop double 3 (tail group), single 0",
        build_tiny_flux_pipeline,
        (4, 8),
        (2, 3),
        {},
        [3, 4],
    ),
    ("sd3 6 blocks, ControlNet 3, drop 2 and 3", build_tiny_sd3_pipeline, (6,), (3,), {}, [2, 3]),
    (
        "sd3.5-like (dual attention 0-2), ControlNet 3 (dual 0-1), drop 1",
        build_tiny_sd3_pipeline,
        (6,),
        (3,),
        {"dual_attention_layers": (0, 1), "qk_norm": "rms_norm"},
        [1],
    ),
    (
        "flux: the whole group of single sample 1 removed (single 3-5)",
        build_tiny_flux_pipeline,
        (4, 8),
        (2, 3),
        {},
        [7, 8, 9],
    ),
    ("flux: the whole first double group removed (double 0-1)", build_tiny_flux_pipeline, (4, 8), (2, 3), {}, [0, 1]),
    ("sd3: the last block removed", build_tiny_sd3_pipeline, (6,), (3,), {}, [5]),
    (
        "sd3.5-large-like ControlNet (single blocks, the transformer's pos_embed), drop 2 and 3",
        build_tiny_sd3_pipeline,
        (6,),
        (3,),
        {"joint_attention_dim": None, "use_pos_embed": False},
        [2, 3],
    ),
    ("sana 6 blocks, ControlNet 3 (feeds blocks 1-3), drop 3 and 5", build_tiny_sana_pipeline, (6,), (3,), {}, [3, 5]),
    ("sana: drop 5 only (beyond the ControlNet's blocks)", build_tiny_sana_pipeline, (6,), (3,), {}, [5]),
    ("sana: drop 2 (inside the ControlNet's blocks)", build_tiny_sana_pipeline, (6,), (3,), {}, [2]),
    ("sana: drop 0", build_tiny_sana_pipeline, (6,), (3,), {}, [0]),
]


def run_case(work: Path, name, builder, args, cn_depths, cn_config, removed) -> dict:
    import diffusers

    extra = {"dual_attention_layers": (0, 1, 2), "sample_size": 8} if cn_config.get("dual_attention_layers") else {}
    parent = builder(*args, **({"dual_attention_layers": extra["dual_attention_layers"]} if extra else {}))
    family = family_of(parent.transformer)
    layout = family.controlnet
    pipe_class = getattr(diffusers, layout.pipeline_class)
    controlnet = build_tiny_controlnet(parent.transformer, *cn_depths, **cn_config)
    case = work / f"case{len(list(work.iterdir()))}"
    parent.save_pretrained(case / "parent")
    controlnet.save_pretrained(case / "controlnet")
    pruned_transformer = prune_to_folder(case / "parent", case / "pruned", pruned_layers=removed, dtype="float32")
    kept = list(pruned_transformer.config.kept_layers)
    depths = family.stack_depths(parent.transformer.config)
    row = {"case": name, "family": family.name, "removed": removed, "kept": kept}
    row["routing"] = residual_routing(family, kept, depths, controlnet.config)
    row["wrong_blocks"] = [r["block"] for stack in row["routing"] for r in stack if r["parent"] != r["stock"]]

    with torch.no_grad():
        reference_pipe = pipe_class(**parent.components, controlnet=controlnet)
        try:
            with skip_blocks(reference_pipe.transformer, removed):
                with residuals_as_in_parent(controlnet, family, kept, depths):
                    reference = tiny_controlnet_images(reference_pipe)
        except LayerPruneError as error:  # a kept block takes a place no residual reaches (Sana's block 0)
            reference, row["reference"] = None, str(error)
        pruned_pipe = pipe_class.from_pretrained(case / "pruned", controlnet=controlnet)
        try:
            stock = tiny_controlnet_images(pruned_pipe)
            row["stock_runs"] = True
            if reference is not None:
                row["stock_max_abs_diff"] = float((stock - reference).abs().max())
        except Exception as error:  # what a user meets: report it, do not stop the benchmark
            row["stock_runs"] = False
            row["stock_error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        try:
            result = adapt_controlnet(case / "controlnet", case / "pruned", case / "adapted")
        except LayerPruneError as error:
            row["adapted"] = None
            row["refused"] = str(error)
            return row
        adapted_cn = getattr(diffusers, layout.model_class).from_pretrained(case / "adapted")
        adapted = tiny_controlnet_images(pipe_class.from_pretrained(case / "pruned", controlnet=adapted_cn))
    row["adapted"] = {
        "controlnet_blocks": [[o, p.length] for o, p in zip(result.original_depths, result.plans, strict=True)],
        "identity_blocks": [sum(p.identity) for p in result.plans],
        "chains": [list(p.blocks) for p in result.plans],
        "max_abs_diff": float((adapted - reference).abs().max()),
    }
    return row


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            row = run_case(Path(tmp), *case)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "routing"}))
    out = ROOT / "benchmarks" / "results" / "controlnet_routing.json"
    out.write_text(
        json.dumps({"torch": torch.__version__, "device": "cpu", "dtype": "float32", "rows": rows}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
