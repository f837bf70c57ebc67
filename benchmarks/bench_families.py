"""Depth-pruning speed-ups of Sana 1.6B, SD3.5 Medium and Flux.1-dev transformers, from block costs measured at the
published widths (random weights: speed does not depend on their values). Run through
``benchmarks/bench_inference.py --family sana|sd3|flux`` (or this file directly).

The full models do not fit this benchmark's CPU machine (Flux.1-dev alone is 12B parameters, 48 GB in float32), so
each family is built with its published config (widths, heads, text widths, SD3.5's dual attention and QK norm) but
fewer blocks of each kind, and timed at a small resolution with the pipeline's real text length:

1. ``full``: the reduced-depth model, and variants with some blocks skipped (``blocks.skip_blocks``). The time of
   a variant with ``n_k`` blocks of kind k is modelled as ``o + sum_k n_k c_k``: ``c_k`` the cost of one block of
   kind k, ``o`` the overhead every depth keeps (embeddings, final layer), fitted by least squares over the full
   model and the skip variants (the fit's largest relative residual is reported). Variants are timed interleaved and
   summarised by the median, so drift in machine load hits all of them alike.
2. ``pruned``: a saved-class pruned model (``Pruned<Family>Transformer.from_transformer``) of the reduced model, timed
   in the same loop: its measured speed-up is compared with the ideal ``t_full / (o + sum_k kept_k c_k)``.
3. Projection to the published depth: ``t = o + sum_k n_k c_k`` with the real block counts, for the pruned depths
   below. For Flux the two block kinds cost differently (a double-stream block carries two streams' weights), so the
   ideal speed-up of removing ``d`` double and ``s`` single blocks is ``t_full / (t_full - d c_double - s c_single)``,
   not a ratio of block counts.

Results: ``benchmarks/results/bench_families_<family>.json`` (a finished family is reused unless ``--force``);
``--report-only`` rewrites the measured section of ``docs/families.md`` from them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers_layerprune.blocks import skip_blocks  # noqa: E402
from diffusers_layerprune.families import DEFAULT_FAMILY, FAMILIES, get_family  # noqa: E402
from diffusers_layerprune.families.base import to_device  # noqa: E402
from diffusers_layerprune.testing import PUBLISHED_TRANSFORMERS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "families.md"
START, END = "<!-- bench_families:start -->", "<!-- bench_families:end -->"
TITLES = {"sana": "Sana 1.6B", "sd3": "SD3.5 Medium", "flux": "Flux.1-dev"}

# Reduced depth per family (real widths): {config overrides}, the block kinds with (blocks of that kind in the
# reduced model, in the published model), the skip variants timed for the fit, and the blocks the pruned model drops.
REDUCED = {
    "sana": dict(
        config=dict(num_layers=4),
        kinds={"block": (4, 20)},
        skips=[[1], [1, 2]],
        pruned=[1, 2],
    ),
    "sd3": dict(
        # blocks 0-1 dual attention (SD3.5 Medium: 0..12 of 24), 2-3 plain; the last is context_pre_only
        config=dict(num_layers=4, dual_attention_layers=(0, 1)),
        kinds={"dual-attention joint": (2, 13), "joint": (2, 11)},
        skips=[[0], [2], [0, 1]],
        pruned=[0, 2],
    ),
    "flux": dict(
        config=dict(num_layers=1, num_single_layers=2),
        kinds={"double": (1, 19), "single": (2, 38)},
        skips=[[0], [1], [1, 2]],
        pruned=[2],
    ),
}


def _registered_spec(name: str) -> tuple[dict, list[dict]]:
    """REDUCED / SCENARIOS entries of a family registered with a published config and not listed above: three
    blocks of a one-stack family, or one block of the first stack and two of the second (as Flux's); scenarios
    remove a quarter and a half of each stack's published depth."""
    record = get_family(name)
    config = record.published.config
    counts = [3] if len(record.stacks) == 1 else [1, 2]
    kinds = {s.kind: (n, int(config[s.depth_key])) for s, n in zip(record.stacks, counts, strict=True)}
    if len(counts) == 1:
        skips, pruned = [[1], [1, 2]], [1]
    else:
        skips, pruned = [[0], [1], [1, 2]], [2]
    spec = dict(
        config={s.depth_key: n for s, n in zip(record.stacks, counts, strict=True)},
        kinds=kinds,
        skips=skips,
        pruned=pruned,
    )
    scenarios = [{kind: round(real * share) for kind, (_, real) in kinds.items()} for share in (0.25, 0.5)]
    return spec, scenarios


# Published-depth pruning scenarios: blocks removed per kind.
SCENARIOS = {
    "sana": [{"block": 4}, {"block": 8}],
    "sd3": [{"joint": 4}, {"dual-attention joint": 4, "joint": 4}],
    "flux": [{"single": 19}, {"double": 5, "single": 10}, {"double": 9, "single": 19}],
}
for _name in FAMILIES:  # every other registered family with a published config (FLUX.2, Qwen-Image, ...)
    if _name not in REDUCED and _name != DEFAULT_FAMILY and get_family(_name).published is not None:
        REDUCED[_name], SCENARIOS[_name] = _registered_spec(_name)
        TITLES[_name] = get_family(_name).published.title


def build(family: str, dtype: torch.dtype):
    import diffusers

    config, _, _ = PUBLISHED_TRANSFORMERS[family]
    record = get_family(family)
    torch.manual_seed(0)
    cls = getattr(diffusers, record.transformer_class)
    return cls(**{**config, **REDUCED[family]["config"]}).eval().to(dtype)


def measure(family: str, args) -> dict:
    record = get_family(family)
    dtype = getattr(torch, args.dtype)
    model = build(family, dtype)
    _, vae_factor, tokens = PUBLISHED_TRANSFORMERS[family]
    tokens = args.text_tokens or tokens
    latent = args.resolution // vae_factor
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch_size, record.latent_channels(model.config), latent, latent, generator=g)
    text = to_device(record.random_text(model.config, args.batch_size, tokens, g), "cpu", dtype)
    latents, timestep = latents.to(dtype), torch.full((args.batch_size,), 500.0)
    spec = REDUCED[family]
    pruned = record.pruned_class().from_transformer(model, pruned_layers=spec["pruned"], copy_weights=False).eval()

    variants = {"full": (model, ())}
    for skipped in spec["skips"]:
        variants[f"skip {skipped}"] = (model, tuple(skipped))
    variants["pruned"] = (pruned, ())
    times = {name: [] for name in variants}

    def run(name):
        net, skipped = variants[name]
        with skip_blocks(net, skipped):
            start = time.perf_counter()
            record.forward(net, latents, timestep, text)
            return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(args.warmup):
            for name in variants:
                run(name)
        for _ in range(args.repeats):
            for name in variants:
                times[name].append(run(name))
    median = {name: statistics.median(t) for name, t in times.items()}
    full = median["full"]
    kinds = list(spec["kinds"])

    def counts(skipped):
        return [spec["kinds"][k][0] - sum(1 for i in skipped if _kind_of(family, i) == k) for k in kinds]

    fitted = [((), full)] + [(tuple(sk), median[f"skip {sk}"]) for sk in spec["skips"]]
    a = torch.tensor([[1.0, *counts(sk)] for sk, _ in fitted], dtype=torch.float64)
    b = torch.tensor([[t] for _, t in fitted], dtype=torch.float64)
    solution = torch.linalg.lstsq(a, b).solution.flatten().tolist()
    overhead, costs = solution[0], dict(zip(kinds, solution[1:], strict=True))
    residual = max(
        abs((a @ torch.tensor(solution, dtype=torch.float64))[i].item() - t) / t for i, (_, t) in enumerate(fitted)
    )
    model_time = overhead + sum(c * n for c, n in zip(solution[1:], counts(spec["pruned"]), strict=True))
    ideal_pruned = full / model_time
    real_full = overhead + sum(costs[kind] * real for kind, (_, real) in spec["kinds"].items())
    scenarios = []
    for removed in SCENARIOS[family]:
        kept_time = real_full - sum(costs[k] * n for k, n in removed.items())
        blocks = sum(real for _, real in spec["kinds"].values())
        n_removed = sum(removed.values())
        scenarios.append(
            dict(
                removed=removed,
                blocks=f"{blocks} -> {blocks - n_removed}",
                ideal_speedup=round(real_full / kept_time, 4),
                block_count_ratio=round(blocks / (blocks - n_removed), 4),
            )
        )
    return dict(
        benchmark="bench_families",
        family=family,
        model=TITLES[family],
        published_config={
            k: list(v) if isinstance(v, tuple) else v for k, v in PUBLISHED_TRANSFORMERS[family][0].items()
        },
        reduced_config={k: list(v) if isinstance(v, tuple) else v for k, v in spec["config"].items()},
        settings=dict(
            resolution=args.resolution,
            text_tokens=tokens,
            batch_size=args.batch_size,
            dtype=args.dtype,
            repeats=args.repeats,
            warmup=args.warmup,
        ),
        machine=dict(
            platform=platform.platform(),
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            load_average=list(_load()),
        ),
        median_seconds={k: round(v, 5) for k, v in median.items()},
        raw_seconds=times,
        block_cost_seconds={k: round(v, 5) for k, v in costs.items()},
        overhead_seconds=round(overhead, 5),
        fit_max_relative_residual=round(residual, 4),
        pruned_variant=dict(
            dropped=spec["pruned"],
            measured_speedup=round(full / median["pruned"], 4),
            ideal_speedup=round(ideal_pruned, 4),
        ),
        published_depth_full_seconds=round(real_full, 4),
        scenarios=scenarios,
    )


def _kind_of(family: str, index: int) -> str:
    if family not in ("sana", "sd3", "flux"):  # a registered family's spec: the kind of the stack holding the index
        spec = REDUCED[family]
        return get_family(family).stack_of([n for n, _ in spec["kinds"].values()])[index]
    if family == "sana":
        return "block"
    if family == "sd3":
        return "dual-attention joint" if index in REDUCED["sd3"]["config"]["dual_attention_layers"] else "joint"
    return "double" if index < REDUCED["flux"]["config"]["num_layers"] else "single"


def _load() -> tuple[float, float, float]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return (math.nan,) * 3


def report(families) -> str:
    lines = [
        START,
        "",
        "Measured by `python benchmarks/bench_inference.py --family <family>` (CPU, random weights at the published "
        "widths, reduced depth; see the method above). Costs are medians of interleaved repeats.",
        "",
        "| model | block costs (s / forward) | overhead (s) | fit residual | pruned model: measured vs ideal "
        "speed-up | settings, machine load |",
        "|---|---|---|---|---|---|",
    ]
    found = []
    for family in families:
        path = RESULTS / f"bench_families_{family}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        found.append(r)
        costs = ", ".join(f"{k} {v:.3f}" for k, v in r["block_cost_seconds"].items())
        p, st = r["pruned_variant"], r["settings"]
        load = ", ".join(f"{x:.1f}" for x in r["machine"]["load_average"])
        lines.append(
            f"| {r['model']} | {costs} | {r['overhead_seconds']:.3f} | {100 * r['fit_max_relative_residual']:.1f}% "
            f"| {p['measured_speedup']:.2f}x vs "
            f"{p['ideal_speedup']:.2f}x (blocks {p['dropped']} of the reduced model) | {st['resolution']} px, "
            f"{st['text_tokens']} text tokens, batch {st['batch_size']}, {st['dtype']}, "
            f"{r['machine']['threads']} threads, load avg {load} |"
        )
    lines += [
        "",
        "Projected to the published depth from those costs (ideal speed-up of the transformer forward; the "
        "block-count ratio is what a cost-blind estimate would say):",
        "",
        "| model | blocks removed | depth | ideal speed-up | block-count ratio |",
        "|---|---|---|---|---|",
    ]
    for r in found:
        for sc in r["scenarios"]:
            removed = ", ".join(f"{n} {k}" for k, n in sc["removed"].items())
            lines.append(
                f"| {r['model']} | {removed} | {sc['blocks']} | {sc['ideal_speedup']:.2f}x | "
                f"{sc['block_count_ratio']:.2f}x |"
            )
    if not found:
        lines.append("| (no results yet) | | | | |")
    lines += ["", END]
    return "\n".join(lines)


def write_report(families) -> None:
    text = DOC.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} has no {START} ... {END} section")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    DOC.write_text(before + report(families) + after)
    print(f"wrote {DOC}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(REDUCED), action="append", help="repeatable; default: all")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=None, help="default: the pipeline's padding length")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="re-measure families whose results exist")
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/families.md from the JSON")
    args = parser.parse_args()
    families = args.family or list(REDUCED)
    if not args.report_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for family in families:
            path = RESULTS / f"bench_families_{family}.json"
            if path.is_file() and not args.force:
                print(f"{family}: reusing {path.relative_to(ROOT)}")
                continue
            result = measure(family, args)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            tmp.replace(path)
            print(
                f"{family}: block costs {result['block_cost_seconds']} s, overhead {result['overhead_seconds']} s, "
                f"pruned {result['pruned_variant']}, projected {result['scenarios']}"
            )
    write_report(list(REDUCED))


if __name__ == "__main__":
    main()
