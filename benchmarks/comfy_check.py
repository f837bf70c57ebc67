"""Does ComfyUI read what ``layerprune export`` writes? A check against a ComfyUI checkout (and ComfyUI-GGUF).

ComfyUI is not a dependency of this project (nor of its CI); this script takes the path of a checkout, imports ComfyUI
only in a separate process that never imports this package, and asks ComfyUI's own code:

1. **Files written by the CLI** (tiny pruned models of each exportable family; Flux.1 at its real width 3072, 1 double
   + 1 single block kept, bfloat16, unless ``--no-flux``): ComfyUI's model detection
   (``comfy.model_detection.detect_unet_config`` / ``model_config_from_unet`` on ``comfy.utils.load_torch_file`` of
   the single file) names a model type and block counts; ComfyUI-GGUF's loader (``loader.gguf_sd_loader``) reads the
   GGUF file: its ``general.architecture`` accepted, each tensor with the single file's shape, dequantized
   (``dequant.dequantize_tensor``) within Q8_0 precision of the single file's values; the detection is run on the GGUF
   state dict as its "Unet Loader (GGUF)" node does. The Flux.1 file (Flux.1's text and latent widths) also goes
   through ComfyUI's own loader (``comfy.sd.load_diffusion_model_state_dict``) and one forward of ComfyUI's Flux
   model is compared with diffusers' ``from_single_file`` of the same file on the same inputs.
2. **Published widths** (FLUX.1-dev, SD3.5-Medium, Sana-1600M, FLUX.2-dev, Qwen-Image at a pruned depth; shapes
   only, so no weights are made): the exporter's own key mapping (``export.original_state_dict``) gives the file's
   keys and shapes; ComfyUI detects the model from those shapes, builds its model on the meta device, and the key
   sets and shapes are compared: the missing / unexpected / mismatched keys ComfyUI's loader would report.

    pip install einops torchsde gguf        # what ComfyUI's model modules import beyond torch
    python benchmarks/comfy_check.py --comfyui /path/to/ComfyUI --comfyui-gguf /path/to/ComfyUI-GGUF \\
        [--comfyui-ref COMMIT] [--no-flux]

Without a checkout it prints one line and exits 0. ComfyUI's ``model_base`` imports torchvision, torchaudio and av at
module level for models other than these; where they are not installed (this project never installs torchvision),
the reader process puts empty stand-ins for them on ``sys.modules`` and says so in the result: detection and model
construction do not use them. Writes ``benchmarks/results/comfy_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "comfy_check.json"
DROPPED = [1, 3]  # of 4 source blocks: a middle one and the last

# The ComfyUI side: runs in its own interpreter with the ComfyUI checkout first on sys.path, never this package.
READER = textwrap.dedent(
    r"""
    import importlib, importlib.abc, importlib.machinery, json, sys, types
    from unittest import mock

    comfy_dir, gguf_dir, jobs_file = sys.argv[1:4]
    stubbed = []

    class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # stand-ins for media libraries ComfyUI's model_base imports for other model types
        names = ("torchvision", "torchaudio", "av")

        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in self.names:
                stubbed.append(name)
                return importlib.machinery.ModuleSpec(name, self, is_package=True)

        def create_module(self, spec):
            module = mock.MagicMock(name=spec.name)
            module.__path__, module.__spec__ = [], spec
            return module

        def exec_module(self, module):
            pass

    _Absent.names = tuple(n for n in _Absent.names if importlib.util.find_spec(n) is None)
    if any("forward" in job for job in json.load(open(jobs_file))["files"].values()):
        # diffusers (and transformers) read the versions of optional libraries when first imported: before the
        # stand-ins, so that they see the libraries as absent
        import diffusers.loaders.single_file_model  # noqa: F401
        from diffusers import FluxTransformer2DModel  # noqa: F401
    sys.meta_path.append(_Absent())
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    import comfy.model_detection as detection
    import comfy.utils

    gguf_loader = dequant = None
    if gguf_dir:
        package = types.ModuleType("comfyui_gguf")  # its folder name has a hyphen; its __init__ wants a server
        package.__path__ = [gguf_dir]
        sys.modules["comfyui_gguf"] = package
        gguf_loader = importlib.import_module("comfyui_gguf.loader")
        dequant = importlib.import_module("comfyui_gguf.dequant")

    BLOCK_CONFIG_KEYS = ("depth", "depth_single_blocks", "num_layers", "num_blocks")

    def detect(state):
        config = detection.detect_unet_config(state, "")
        if config is None:
            return dict(image_model=None, model_config=None), None
        found = dict(image_model=config.get("image_model") or ("mmdit" if "x_block_self_attn_layers" in config else "?"))
        found.update({k: config[k] for k in BLOCK_CONFIG_KEYS if k in config})
        model_config = detection.model_config_from_unet_config(config, state)
        found["model_config"] = type(model_config).__name__ if model_config is not None else None
        return found, model_config

    def against_model(model_config, shapes, prefixes, small):
        # ComfyUI's model for the detected config, weightless (meta device): which of our keys it has, which it lacks.
        # Some models cannot be built on the meta device; a small one (a tiny file's block count) is built on the CPU.
        try:
            with torch.device("meta"):
                model = model_config.get_model({}, "", device=torch.device("meta"))
        except Exception as error:
            if not small:
                return dict(built=False, error=f"{type(error).__name__}: {error}"[:300])
            try:
                model = model_config.get_model({}, "")
            except Exception as error:
                return dict(built=False, error=f"{type(error).__name__}: {error}"[:300])
        ref = {k[len("diffusion_model."):]: tuple(v.shape) for k, v in model.state_dict().items()
               if k.startswith("diffusion_model.")}
        missing = sorted(set(ref) - set(shapes))
        unexpected = sorted(set(shapes) - set(ref))
        mismatched = sorted(k for k in set(ref) & set(shapes) if ref[k] != tuple(shapes[k]))
        blocks = {p: len({k.split(".")[1] for k in ref if k.startswith(p + ".")}) for p in prefixes}
        return dict(built=True, blocks_built=blocks, missing=len(missing), unexpected=len(unexpected),
                    mismatched=len(mismatched), examples=(missing + unexpected + mismatched)[:4])

    def flux_forward(job, state):
        # ComfyUI's own load path ("Load Diffusion Model"), then one forward of ComfyUI's Flux and of diffusers' Flux
        # (from_single_file of the same file) on the same random inputs, in float32
        import logging

        import comfy.sd
        import diffusers

        messages = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        patcher = comfy.sd.load_diffusion_model_state_dict(dict(state), model_options={"dtype": torch.float32})
        comfy_model = patcher.model.diffusion_model.float().eval()
        logging.getLogger().removeHandler(handler)
        stock = getattr(diffusers, job["forward"]["stock_class"]).from_single_file(
            job["single"], config=job["forward"]["folder"], subfolder="transformer", torch_dtype=torch.float32
        ).eval()
        g = torch.Generator().manual_seed(0)
        b, c, h, w, tokens = 1, 16, 8, 8, 8
        x, context = torch.randn(b, c, h, w, generator=g), torch.randn(b, tokens, 4096, generator=g)
        pooled, t, guidance = torch.randn(b, 768, generator=g), torch.tensor([0.7]), torch.tensor([3.5])
        with torch.no_grad():
            theirs = comfy_model(x, t, context, y=pooled, guidance=guidance)
            # diffusers' Flux takes 2x2 patches as tokens (channel, row, column order) with (0, row, column) ids
            packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
            ids = torch.zeros(h // 2, w // 2, 3)
            ids[..., 1], ids[..., 2] = torch.arange(h // 2)[:, None], torch.arange(w // 2)[None, :]
            ours = stock(hidden_states=packed, encoder_hidden_states=context, pooled_projections=pooled, timestep=t,
                         img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(tokens, 3), guidance=guidance).sample
            ours = ours.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return dict(
            comfy_load_messages=[m[:300] for m in messages if "missing" in m or "unexpected" in m or "left over" in m],
            comfy_model=type(comfy_model).__name__,
            max_abs_difference=(theirs - ours).abs().max().item(),
            output_max_abs=ours.abs().max().item(),
        )

    jobs = json.load(open(jobs_file))
    out = dict(files={}, published={})
    for name, job in jobs["files"].items():
        state = comfy.utils.load_torch_file(job["single"])
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        found, model_config = detect(state)
        row = dict(single=found)
        if model_config is not None:
            row["single_vs_model_keys"] = against_model(model_config, shapes, job["prefixes"], small=True)
        if gguf_loader is not None:
            try:
                sd, arch = gguf_loader.gguf_sd_loader(job["gguf"], return_arch=True)
            except Exception as error:
                row["gguf"] = dict(read=False, error=f"{type(error).__name__}: {error}"[:300])
            else:
                worst, types_seen, bad_shapes = 0.0, {}, []
                for key, tensor in sd.items():
                    qtype = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
                    types_seen[qtype] = types_seen.get(qtype, 0) + 1
                    if tuple(tensor.tensor_shape) != shapes.get(key):
                        bad_shapes.append(key)
                        continue
                    value = dequant.dequantize_tensor(tensor, dtype=torch.float32).float()
                    ref = state[key].float()
                    worst = max(worst, ((value - ref).norm() / ref.norm().clamp_min(1e-12)).item())
                g_found = detect(sd)[0]
                row["gguf"] = dict(read=True, arch=arch, same_keys=sorted(sd) == sorted(state),
                                   shape_mismatches=bad_shapes[:4], tensor_types=types_seen,
                                   max_relative_error=worst, detected=g_found)
        if "forward" in job:
            row["forward"] = flux_forward(job, state)
        out["files"][name] = row
    for name, job in jobs["published"].items():
        shapes = {k: tuple(v) for k, v in job["shapes"].items()}
        state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        found, model_config = detect(state)
        row = dict(detected=found, expected_blocks=job["blocks"])
        if model_config is not None:
            row["vs_model"] = against_model(model_config, shapes, list(job["blocks"]), small=False)
        out["published"][name] = row
    out["stand_ins"] = sorted({n.split(".")[0] for n in stubbed})
    assert "diffusers_layerprune" not in sys.modules
    print(json.dumps(out))
    """
)


def _published_shapes() -> dict:
    """Published configs at a pruned depth -> the exported file's ``{key: shape}`` (meta tensors: no weights)."""
    import diffusers
    from accelerate import init_empty_weights

    from diffusers_layerprune.export import original_state_dict
    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.families.flux import FLUX1_DEV_TRANSFORMER
    from diffusers_layerprune.families.flux2 import FLUX2_DEV_TRANSFORMER
    from diffusers_layerprune.families.qwenimage import QWEN_IMAGE_TRANSFORMER
    from diffusers_layerprune.families.sana import SANA_1600M_TRANSFORMER
    from diffusers_layerprune.families.sd3 import SD35_MEDIUM_TRANSFORMER

    published = {
        "flux (FLUX.1-dev)": ("flux", {**FLUX1_DEV_TRANSFORMER, "num_layers": 14, "num_single_layers": 28}),
        "sd3 (SD3.5-Medium)": ("sd3", {**SD35_MEDIUM_TRANSFORMER, "num_layers": 18}),
        "sana (Sana-1600M)": ("sana", {**SANA_1600M_TRANSFORMER, "num_layers": 14}),
        "flux2 (FLUX.2-dev)": ("flux2", {**FLUX2_DEV_TRANSFORMER, "num_layers": 6, "num_single_layers": 36}),
        "qwenimage (Qwen-Image)": ("qwenimage", {**QWEN_IMAGE_TRANSFORMER, "num_layers": 45}),
    }
    out = {}
    for label, (name, config) in published.items():
        family = get_family(name)
        with init_empty_weights():
            model = getattr(diffusers, family.transformer_class)(**config)
        shapes = {k: list(v.shape) for k, v in original_state_dict(family, model.config, model.state_dict())}
        blocks = _block_counts(name, shapes)
        out[label] = dict(shapes=shapes, blocks=blocks, family=name)
    return out


def _block_prefixes(name: str) -> list[str]:
    from diffusers_layerprune.families import get_family

    return {"flux": ["double_blocks", "single_blocks"], "flux2": ["double_blocks", "single_blocks"],
            "sd3": ["joint_blocks"], "sana": ["blocks"], "qwenimage": ["transformer_blocks"]}[get_family(name).name]  # fmt: skip


def _block_counts(name: str, keys) -> dict[str, int]:
    return {p: len({k.split(".")[1] for k in keys if k.startswith(p + ".")}) for p in _block_prefixes(name)}


def _tiny_files(work: Path, with_flux: bool) -> dict:
    """Prune tiny models of each exportable family (4 blocks, 2 kept) and export them with the CLI."""
    import torch

    from diffusers_layerprune.cli import main as cli
    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
    from diffusers_layerprune.testing import build_tiny_flux_pipeline

    def widened(pipe, **overrides):  # wide enough (64) for GGUF's 32-value blocks to quantize the Linear weights
        torch.manual_seed(3)
        pipe.transformer = type(pipe.transformer).from_config({**pipe.transformer.config, **overrides}).eval()
        return pipe

    builds = {
        "sd3": (
            "sd3",
            lambda: widened(get_family("sd3").tiny_pipeline(4), attention_head_dim=32, caption_projection_dim=64),
            DROPPED,
        ),  # fmt: skip
        "sd35": (
            "sd3",
            lambda: widened(
                get_family("sd3").tiny_pipeline(4, dual_attention_layers=(0, 1)),
                attention_head_dim=32,
                caption_projection_dim=64,
            ),
            DROPPED,
        ),  # fmt: skip
        "sana": (
            "sana",
            lambda: widened(
                get_family("sana").tiny_pipeline(4),
                attention_head_dim=32,
                cross_attention_head_dim=32,
                cross_attention_dim=64,
            ),
            DROPPED,
        ),  # fmt: skip
        "flux2": (
            "flux2",
            lambda: widened(get_family("flux2").tiny_pipeline(2, 2), attention_head_dim=32, axes_dims_rope=(8,) * 4),
            DROPPED,
        ),  # fmt: skip
        "qwenimage": (
            "qwenimage",
            lambda: widened(get_family("qwenimage").tiny_pipeline(4), attention_head_dim=32, axes_dims_rope=(16, 8, 8)),
            DROPPED,
        ),  # fmt: skip
    }
    if with_flux:

        def real_width_flux():  # Flux.1's widths (diffusers' converter reads no other): 1 double + 2 single blocks
            pipe = build_tiny_flux_pipeline(1, 2)
            config = {**pipe.transformer.config, "num_attention_heads": 24, "attention_head_dim": 128}
            # the text and latent widths ComfyUI 0.3.64 assumes for Flux, so that its model takes every tensor (the
            # tiny pipeline's encoders no longer fit: the pipeline is only saved and exported, never run)
            config.update(
                axes_dims_rope=(16, 56, 56), joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64
            )
            torch.manual_seed(0)
            with _default_dtype(torch.bfloat16):
                pipe.transformer = type(pipe.transformer).from_config(config).eval()
            return pipe.to(torch.bfloat16)

        builds["flux"] = ("flux", real_width_flux, [2])
    files = {}
    for name, (family, build, dropped) in builds.items():
        folder = save_pruned_pipeline(prune_pipeline(build(), pruned_layers=dropped), work / name / "pruned")
        single, gguf_file = work / name / "transformer.safetensors", work / name / "transformer-Q8_0.gguf"
        for fmt, path in (("single-file", single), ("gguf", gguf_file)):
            assert cli(["export", str(folder), "--format", fmt, "--output", str(path)]) == 0
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            expected = _block_counts(family, list(f.keys()))
        files[name] = dict(single=str(single), gguf=str(gguf_file), prefixes=_block_prefixes(family), blocks=expected)
        if name == "flux":  # ComfyUI's Flux model loads the file and computes what diffusers' model computes
            files[name]["forward"] = dict(folder=str(folder), stock_class="FluxTransformer2DModel")
    return files


class _default_dtype:
    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        import torch

        self.before = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.before)


def _ref(comfy_dir: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(
            ["git", "-C", str(comfy_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = comfy_dir / "comfyui_version.py"
        return version.read_text().strip().splitlines()[-1] if version.is_file() else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="a ComfyUI checkout (COMFYUI_DIR)")
    parser.add_argument("--comfyui-gguf", default=os.environ.get("COMFYUI_GGUF_DIR"), help="a ComfyUI-GGUF checkout")
    parser.add_argument("--comfyui-ref", help="the checkout's commit, where it is not a git work tree")
    parser.add_argument("--comfyui-gguf-ref", help="the ComfyUI-GGUF checkout's commit")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that imports ComfyUI")
    parser.add_argument(
        "--no-flux", action="store_true", help="skip the real-width Flux.1 files (~1.6 GB on disk, ~8 GB of memory)"
    )
    parser.add_argument("--output", default=str(RESULT))
    args = parser.parse_args(argv)
    comfy_dir = Path(args.comfyui).expanduser() if args.comfyui else None
    if comfy_dir is None or not (comfy_dir / "comfy" / "model_detection.py").is_file():
        print(f"comfy_check: skipped: no ComfyUI checkout at {comfy_dir or '(none given)'} (give --comfyui PATH)")
        return 0
    gguf_dir = Path(args.comfyui_gguf).expanduser() if args.comfyui_gguf else None
    if gguf_dir is not None and not (gguf_dir / "loader.py").is_file():
        print(f"comfy_check: no ComfyUI-GGUF loader.py in {gguf_dir}; checking single files only")
        gguf_dir = None

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="comfy-check-") as tmp:
        work = Path(tmp)
        jobs = dict(files=_tiny_files(work, not args.no_flux), published=_published_shapes())
        (work / "jobs.json").write_text(json.dumps(jobs))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
        result = subprocess.run(
            [args.python, "-c", READER, str(comfy_dir.resolve()), str(gguf_dir.resolve()) if gguf_dir else "",
             str(work / "jobs.json")],
            capture_output=True, text=True, env=env, cwd=work,
        )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"comfy_check: the ComfyUI process failed:\n{result.stderr[-3000:]}")
    read = json.loads(result.stdout.strip().splitlines()[-1])
    for name, row in read["files"].items():
        row["blocks_in_file"] = jobs["files"][name]["blocks"]
    for name, row in read["published"].items():
        row["family"] = jobs["published"][name]["family"]
    report = dict(
        comfyui=_ref(comfy_dir, args.comfyui_ref),
        comfyui_gguf=_ref(gguf_dir, args.comfyui_gguf_ref) if gguf_dir else None,
        seconds=round(time.perf_counter() - start, 1),
        **read,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
