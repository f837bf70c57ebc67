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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from comfy_study.files import published_shapes, tiny_files  # noqa: E402
from comfy_study.reader import READER  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "comfy_check.json"


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
        jobs = dict(files=tiny_files(work, not args.no_flux), published=published_shapes())
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
