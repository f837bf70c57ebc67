"""Dense vs 2:4 semi-structured sparse PixArt-Sigma-XL transformer (random weights, the real sizes): speed on a GPU,
quality everywhere. Writes benchmarks/results/bench_sparsity_<device>.json.

Every Linear weight of the transformer's blocks, caption projection and timestep embedding (not ``proj_out``) is
pruned to 2:4 by magnitude (``sparsify_pipeline``'s rule). Quality = relative error of the transformer's output
against the dense model, for 2:4 and for unstructured 50% magnitude pruning (same number of zeros, no pattern).

- ``--device cpu`` (default): a mask on dense weights. No speed-up is expected on a CPU (no sparse kernels for this
  pattern; the zeros are multiplied like any other weight), so only quality is measured, at a small latent size.
- ``--device cuda``: also converts every pruned weight with ``torch.sparse.to_sparse_semi_structured`` (needs an
  Ampere or newer GPU and fp16/bf16) and times the transformer's forward pass dense vs packed 2:4 (CUDA events,
  warm-up, median of repeats), at 1024 px (128x128 latents, 4096 image tokens) with the batch of 2 that
  classifier-free guidance runs. The GPU branch has not been run on the machine this was written on (no GPU):
  record the numbers with the card's name when you run it.

    python benchmarks/bench_sparsity.py                          # CPU: quality only
    python benchmarks/bench_sparsity.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP waits stall on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusers_layerprune.sparsity import sparsifiable_layers  # noqa: E402
from diffusers_layerprune.sparsity.magnitude import magnitude_scores  # noqa: E402
from diffusers_layerprune.sparsity.masks import layer_mask, n_m_mask  # noqa: E402
from diffusers_layerprune.testing import PIXART_SIGMA_XL_TRANSFORMER  # noqa: E402


def build_transformer(device: str, dtype: torch.dtype, seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**PIXART_SIGMA_XL_TRANSFORMER).eval().to(device)
    return model if dtype == torch.float32 else model.to(dtype)  # float32 needs no cast (and no cast warning)


def inputs(model, batch: int, latent: int, text_tokens: int, device: str, dtype: torch.dtype, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return dict(
        hidden_states=torch.randn(batch, cfg.in_channels, latent, latent, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, text_tokens, cfg.caption_channels, generator=g).to(device, dtype),
        timestep=torch.tensor([500] * batch, device=device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


@torch.no_grad()
def forward(model, kwargs) -> torch.Tensor:
    return model(**kwargs).sample


@torch.no_grad()
def apply_masks(model, pattern: str) -> int:
    """Zero weights in place (``2:4`` or ``unstructured`` 50%, magnitude); returns the number of pruned layers."""
    layers = sparsifiable_layers(model, "transformer")
    for layer in layers.values():
        scores = magnitude_scores(layer.weight)
        keep = n_m_mask(scores, 2, 4) if pattern == "2:4" else layer_mask(scores, 0.5)
        layer.weight.masked_fill_(~keep, 0)
    return len(layers)


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference.float()).norm() / reference.float().norm())


def time_cuda(fn, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}


def to_semi_structured(model) -> int:
    """Replace every pruned Linear weight by its packed 2:4 form (GPU only). Returns the layers converted.

    UNTESTED HERE (written on a CPU-only machine): follows torch's documented use,
    ``linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight))``. torch 2.13 checks that the weight is
    a 2-D contiguous CUDA tensor whose sides are multiples of (32, 64) for fp16/bf16 with the CUTLASS kernels, or
    (16, 16) with cuSPARSELt; every pruned PixArt-Sigma-XL layer qualifies (1152, 4608, 6912 by 256, 1152, 4096,
    4608). The weight must already hold the 2:4 pattern along its input dimension (compression does not prune).
    ``nn.Linear`` then dispatches to ``semi_sparse_linear``, which flattens ``[batch, tokens, features]`` inputs.
    """
    from torch.sparse import to_sparse_semi_structured

    converted = 0
    for layer in sparsifiable_layers(model, "transformer").values():
        layer.weight = torch.nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
        converted += 1
    return converted


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="default: cpu float32, cuda float16"
    )
    p.add_argument("--resolution", type=int, default=None, help="image side (default: cpu 256, cuda 1024)")
    p.add_argument("--batch", type=int, default=2, help="forward batch (2 = one prompt with guidance)")
    p.add_argument("--text-tokens", type=int, default=300)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="default: benchmarks/results/bench_sparsity_<device>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    resolution = args.resolution or (1024 if cuda else 256)
    latent = resolution // 8
    result: dict = {
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": resolution,
        "image_tokens": (latent // 2) ** 2,
        "text_tokens": args.text_tokens,
        "batch": args.batch,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        major, minor = torch.cuda.get_device_capability()
        result["gpu"] = torch.cuda.get_device_name()
        result["compute_capability"] = f"{major}.{minor}"
        if major < 8:
            raise SystemExit(f"{result['gpu']} (sm_{major}{minor}): 2:4 sparse kernels need Ampere (sm_80) or newer")
        if dtype == torch.float32:
            raise SystemExit("--device cuda: use --dtype float16 or bfloat16 for 2:4 kernels")
    else:
        print("CPU: no speed-up is expected from 2:4 sparsity (no sparse kernels on CPU; zeros are multiplied like any")
        print("other weight). Measuring quality only (relative output error against the dense model).")

    model = build_transformer(args.device, dtype)
    kwargs = inputs(model, args.batch, latent, args.text_tokens, args.device, dtype)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["pruned_weights"] = sum(x.weight.numel() for x in sparsifiable_layers(model, "transformer").values())
    reference = forward(model, kwargs)
    if cuda:
        result["dense"] = time_cuda(lambda: forward(model, kwargs), args.repeats, args.warmup)

    # unstructured 50% first, then 2:4 on a rebuilt model (the same seed gives the same dense weights; rebuilding
    # instead of keeping a copy keeps the CPU run near one model's memory, ~2.4 GB in float32)
    layers = apply_masks(model, "unstructured")
    result["pruned_layers"] = layers
    result["unstructured_50_relative_error"] = relative_error(forward(model, kwargs), reference)
    del model
    model = build_transformer(args.device, dtype)
    apply_masks(model, "2:4")
    masked = forward(model, kwargs)
    result["2:4_relative_error"] = relative_error(masked, reference)

    if cuda:
        result["2:4_masked_dense"] = time_cuda(lambda: forward(model, kwargs), args.repeats, args.warmup)
        before = torch.cuda.memory_allocated()
        result["converted_layers"] = to_semi_structured(model)
        torch.cuda.synchronize()
        result["weight_memory_change_bytes"] = torch.cuda.memory_allocated() - before
        packed = forward(model, kwargs)
        result["packed_vs_masked_relative_error"] = relative_error(packed, masked)
        result["2:4_packed"] = time_cuda(lambda: forward(model, kwargs), args.repeats, args.warmup)
        result["speedup"] = result["dense"]["median_ms"] / result["2:4_packed"]["median_ms"]
    else:
        result["speedup"] = None
        result["note"] = "CPU: quality only; 2:4 is a mask on dense weights here, no speed-up expected"

    print(json.dumps(result, indent=1))
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"bench_sparsity_{args.device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"{time.time() - started:.0f} s")
