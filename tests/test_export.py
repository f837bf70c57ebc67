"""``layerprune export``: one file in each family's ORIGINAL checkpoint layout, read back by stock diffusers.

The layout is proved against diffusers' own converters (``loaders/single_file_utils.py``): they must map the file's
keys back to exactly the diffusers state dict. The files are then loaded in a fresh process that never imports this
package (``from_single_file``, ``GGUFQuantizationConfig``) and generate the folder's images.
"""

import json
import os
import textwrap
import time

import pytest
import torch

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.export import original_state_dict, read_file_metadata
from diffusers_layerprune.families import get_family
from diffusers_layerprune.modeling import prune_pipeline, read_transformer_config, save_pruned_pipeline
from diffusers_layerprune.testing import (
    FLUX1_DEV_TRANSFORMER,
    FLUX2_DEV_TRANSFORMER,
    QWEN_IMAGE_TRANSFORMER,
    SANA_1600M_TRANSFORMER,
    SD35_MEDIUM_TRANSFORMER,
    TINY_RESOLUTION,
    build_tiny_flux_pipeline,
    build_tiny_pixart_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
)

from helpers import run_stock

PROMPT = "a small red circle at the top left"


def converter(family: str):
    """The mapping stock ``from_single_file`` applies to this family's files (the registry entry of its class), held
    to the name the family's layout records."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    fn = SINGLE_FILE_LOADABLE_CLASSES[get_family(family).transformer_class]["checkpoint_mapping_fn"]
    name = get_family(family).single_file.converter
    assert fn.__name__ == (name if name != "identity" else "<lambda>")
    return fn


# Published configs at a pruned depth. Row counts are the real ones (diffusers' Flux converter splits fused rows at
# Flux.1's widths); columns are cut to 2 so the check costs kilobytes: every conversion works on rows.
PUBLISHED = {
    "flux": ("FluxTransformer2DModel", {**FLUX1_DEV_TRANSFORMER, "num_layers": 2, "num_single_layers": 3}),
    "sd3": ("SD3Transformer2DModel", {**SD35_MEDIUM_TRANSFORMER, "num_layers": 3, "dual_attention_layers": (0, 1)}),
    "sana": ("SanaTransformer2DModel", {**SANA_1600M_TRANSFORMER, "num_layers": 2}),
    "flux2": ("Flux2Transformer2DModel", {**FLUX2_DEV_TRANSFORMER, "num_layers": 2, "num_single_layers": 3}),
    "qwenimage": ("QwenImageTransformer2DModel", {**QWEN_IMAGE_TRANSFORMER, "num_layers": 3}),
}
ORIGINAL_BLOCKS = {
    "flux": ("double_blocks", "single_blocks"),
    "sd3": ("joint_blocks",),
    "sana": ("blocks",),
    "flux2": ("double_blocks", "single_blocks"),
    "qwenimage": ("transformer_blocks",),  # diffusers' own names: its stock single-file mapping is the identity
}
RENAMED_LAYOUTS = ("flux", "sd3", "sana", "flux2")


@pytest.mark.slow  # published sizes: ~50 s for SD3.5 Medium's row counts
@pytest.mark.parametrize("family", list(PUBLISHED))
def test_diffusers_converter_maps_the_original_layout_back_to_the_exact_state_dict(family):
    import diffusers
    from accelerate import init_empty_weights

    class_name, config = PUBLISHED[family]
    with init_empty_weights():
        model = getattr(diffusers, class_name)(**config)
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn((v.shape[0], *[min(n, 2) for n in v.shape[1:]]), generator=g)
        for k, v in model.state_dict().items()
    }
    assert_converter_inverts(family, model.config, state)


def assert_converter_inverts(family: str, config, state) -> None:
    original = dict(original_state_dict(get_family(family), config, state))
    if family in RENAMED_LAYOUTS:
        assert not set(original) & set(state) - {"context_embedder.weight", "context_embedder.bias"}  # renamed
    for prefix, depth in zip(ORIGINAL_BLOCKS[family], get_family(family).stack_depths(config), strict=True):
        assert {int(k.split(".")[1]) for k in original if k.startswith(prefix + ".")} == set(range(depth))

    back = converter(family)(dict(original))
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("family", ["flux2", "qwenimage"])
def test_diffusers_converter_maps_the_tiny_original_layout_back_to_the_exact_state_dict(family):
    """The same inversion at tiny size (the published-size check above is slow): FLUX.2's converter splits no row
    at a published width, so any width reads back."""
    pipe = get_family(family).tiny_pipeline()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) for k, v in pipe.transformer.state_dict().items()}
    assert_converter_inverts(family, pipe.transformer.config, state)


def widened(pipe, **overrides):
    """The tiny pipeline with a transformer wide enough (64) for GGUF's 32-value blocks to quantize its Linears."""
    torch.manual_seed(3)
    pipe.transformer = type(pipe.transformer).from_config({**pipe.transformer.config, **overrides}).eval()
    return pipe


TINY = {
    "sd3": lambda: widened(build_tiny_sd3_pipeline(4), attention_head_dim=32, caption_projection_dim=64),
    "sd35": lambda: widened(
        build_tiny_sd3_pipeline(4, dual_attention_layers=(0, 1)), attention_head_dim=32, caption_projection_dim=64
    ),
    "sana": lambda: widened(
        build_tiny_sana_pipeline(4), attention_head_dim=32, cross_attention_head_dim=32, cross_attention_dim=64
    ),
    "flux2": lambda: widened(get_family("flux2").tiny_pipeline(2, 2), attention_head_dim=32, axes_dims_rope=(8,) * 4),
    "qwenimage": lambda: widened(
        get_family("qwenimage").tiny_pipeline(4), attention_head_dim=32, axes_dims_rope=(16, 8, 8)
    ),
}
STOCK_CLASS = {name: get_family(name if name != "sd35" else "sd3").transformer_class for name in TINY}
FAMILY_OF = {name: name if name != "sd35" else "sd3" for name in TINY}
DROPPED = [1, 3]  # a middle block and the last (SD3: the context_pre_only block)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny pruned pipelines of each exportable family, exported by the CLI as a single file and as GGUF Q8_0, then
    loaded and run in ONE fresh stock-diffusers process: the folder, the single file, the GGUF file."""
    root = tmp_path_factory.mktemp("export")
    runs = {}
    for name, build in TINY.items():
        folder = root / name / "pruned"
        save_pruned_pipeline(prune_pipeline(build(), pruned_layers=DROPPED), folder)
        files = {"single": root / name / "transformer.safetensors", "gguf": root / name / "transformer-Q8_0.gguf"}
        assert cli(["export", str(folder), "--format", "single-file", "--output", str(files["single"])]) == 0
        assert cli(["export", str(folder), "--format", "gguf", "--quant", "Q8_0", "--output", str(files["gguf"])]) == 0
        runs[name] = dict(folder=folder, **files)
    jobs = [
        (n, STOCK_CLASS[n], str(r["folder"]), str(r["single"]), str(r["gguf"]), TINY_RESOLUTION[FAMILY_OF[n]],
         dict(get_family(FAMILY_OF[n]).tiny_call_args))
        for n, r in runs.items()
    ]  # fmt: skip
    script = textwrap.dedent(
        f"""
        import json, sys, torch, diffusers
        from diffusers import DiffusionPipeline, GGUFQuantizationConfig

        def aligned(transformer):
            # safetensors' memory-mapped weights can sit at unaligned addresses where CPU matmuls round differently
            for p in transformer.parameters():
                p.data = p.data.clone()
            return transformer

        out = {{}}
        for name, cls, folder, single, gguf_file, size, extra in {jobs!r}:
            cls = getattr(diffusers, cls)
            pipe = DiffusionPipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            def generate():
                return pipe(prompt={PROMPT!r}, num_inference_steps=2, height=size, width=size, max_sequence_length=16,
                            output_type="pt", generator=torch.Generator().manual_seed(0), **extra).images
            aligned(pipe.transformer)
            images = {{"folder": generate()}}
            pipe.transformer = aligned(cls.from_single_file(single, config=folder, subfolder="transformer"))
            images["single"] = generate()
            pipe.transformer = cls.from_single_file(
                gguf_file, config=folder, subfolder="transformer",
                quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
            quantized = sorted({{str(getattr(p, "quant_type", "")) for p in pipe.transformer.parameters()}} - {{""}})
            images["gguf"] = generate()
            out[name] = dict(
                single=(images["single"] - images["folder"]).abs().max().item(),
                gguf=(images["gguf"] - images["folder"]).abs().max().item(),
                finite=bool(torch.isfinite(images["gguf"]).all()),
                quantized=quantized,
            )
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        print(json.dumps(out))
        """
    )
    result = run_stock(script, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    for name, run in runs.items():
        run["measured"] = measured[name]
    return runs


@pytest.mark.parametrize("name", list(TINY))
def test_single_file_loads_in_fresh_stock_process_and_generates_the_folders_images(name, exported):
    assert exported[name]["measured"]["single"] <= 1e-5


@pytest.mark.parametrize("name", list(TINY))
def test_gguf_q8_0_loads_quantized_in_fresh_stock_process_within_tolerance(name, exported):
    import gguf

    measured = exported[name]["measured"]
    assert measured["finite"] and measured["gguf"] <= 0.05
    # the Linear weights stayed Q8_0 blocks in the loaded model (dequantized on the fly), not a float copy
    assert measured["quantized"] == [str(int(gguf.GGMLQuantizationType.Q8_0))], measured


@pytest.mark.parametrize("name", list(TINY))
def test_files_hold_the_original_layout_renumbered_and_the_pruning_record(name, exported):
    import gguf
    from safetensors import safe_open

    run = exported[name]
    family = FAMILY_OF[name]
    with safe_open(run["single"], framework="pt") as f:
        keys = list(f.keys())
    depths = get_family(family).stack_depths(read_transformer_config(run["folder"]))
    for prefix, depth in zip(ORIGINAL_BLOCKS[family], depths, strict=True):  # 4 blocks, 2 kept, renumbered
        assert {int(k.split(".")[1]) for k in keys if k.startswith(prefix + ".")} == set(range(depth))
    assert sum(depths) == 2
    if family in RENAMED_LAYOUTS:
        assert not any(k.startswith("transformer_blocks.") for k in keys)

    reader = gguf.GGUFReader(str(run["gguf"]))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert sorted(types) == sorted(keys)
    assert reader.fields["general.architecture"].contents() == get_family(family).single_file.gguf_arch
    # 1-D tensors (biases, norms) stay F32 as GGUF loaders expect; wide Linear weights are Q8_0
    with safe_open(run["single"], framework="pt") as f:
        one_d = [k for k in keys if len(f.get_slice(k).get_shape()) == 1]
    assert one_d and all(types[k] == "F32" for k in one_d)
    assert sum(t == "Q8_0" for t in types.values()) >= 10

    for path in (run["single"], run["gguf"]):
        meta = read_file_metadata(path)
        assert json.loads(meta["layerprune.kept_layers"]) == [0, 2]
        assert meta["layerprune.source_num_layers"] == "4" and meta["layerprune.version"]
        assert meta["layerprune.family"] == family


# ----------------------------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------------


def refused(capsys, argv, fragment: str, out_dir) -> None:
    before = sorted(p.name for p in out_dir.iterdir())
    capsys.readouterr()
    assert cli([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("layerprune export: error:"), err
    assert fragment in err, err
    assert sorted(p.name for p in out_dir.iterdir()) == before  # no file, no temporary left


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Pruned tiny folders the refusals are tried on (PixArt, Flux at a width diffusers cannot read, SD3) and an
    unpruned SD3 folder."""
    root = tmp_path_factory.mktemp("refuse")
    out = {}
    for name, build in (("pixart", build_tiny_pixart_pipeline), ("flux", build_tiny_flux_pipeline)):
        out[name] = save_pruned_pipeline(prune_pipeline(build(), pruned_layers=[1]), root / name)
    pipe = build_tiny_sd3_pipeline(4)
    out["sd3"] = save_pruned_pipeline(prune_pipeline(pipe, pruned_layers=[1]), root / "sd3")
    pipe.save_pretrained(root / "unpruned")
    out["unpruned"] = root / "unpruned"
    (root / "files").mkdir()
    return root, out


@pytest.mark.parametrize(
    "folder, extra, fragment",
    [
        ("sd3", ["--format", "gguf", "--quant", "Q3_K"], "unknown quantization type 'Q3_K'"),
        ("sd3", ["--format", "single-file", "--quant", "Q8_0"], "use --format gguf"),
        ("pixart", ["--format", "single-file"], "no from_single_file in diffusers"),
        ("flux", ["--format", "gguf"], "only reads Flux.1's width 3072"),
        ("unpruned", ["--format", "single-file"], "was not pruned by layerprune"),
    ],
)
def test_export_refuses_what_cannot_be_read_back(capsys, folders, folder, extra, fragment):
    root, made = folders
    suffix = ".gguf" if "gguf" in extra else ".safetensors"
    refused(
        capsys, ["export", made[folder], *extra, "--output", root / "files" / f"t{suffix}"], fragment, root / "files"
    )


def test_export_refuses_an_existing_output_and_a_wrong_suffix(capsys, folders):
    root, made = folders
    existing = root / "files" / "mine.safetensors"
    existing.write_bytes(b"user data")
    refused(
        capsys,
        ["export", made["sd3"], "--format", "single-file", "--output", existing],
        "already exists",
        root / "files",
    )
    assert existing.read_bytes() == b"user data"
    refused(capsys, ["export", made["sd3"], "--format", "gguf", "--output", root / "files" / "t.safetensors"], "end in .gguf", root / "files")  # fmt: skip
    existing.unlink()


def test_export_checks_free_disk_before_writing(capsys, folders, monkeypatch):
    import shutil

    import diffusers_layerprune.export as export

    root, made = folders
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 1000))
    refused(capsys, ["export", made["sd3"], "--format", "gguf", "--output", root / "files" / "t.gguf"], "GiB free", root / "files")  # fmt: skip


def test_a_failed_write_leaves_no_file(folders, monkeypatch):
    import diffusers_layerprune.export as export

    root, made = folders

    def broken(plan, tmp):
        tmp.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_safetensors", broken)
    from diffusers_layerprune.errors import LayerPruneError

    with pytest.raises(
        LayerPruneError, match=f"the disk holding {root / 'files'} is full .* partial output was removed"
    ):
        export.export_transformer(made["sd3"], root / "files" / "t.safetensors")
    assert list((root / "files").iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# layerprune run --export, the card, push
# ----------------------------------------------------------------------------------------------------------------


def test_run_export_stage_writes_reuses_and_replaces_files_beside_the_model(exported, tmp_path):
    import shutil

    from diffusers_layerprune.outputs import foreign_entries
    from diffusers_layerprune.recipe import _export_files
    from diffusers_layerprune.upload import files_to_upload

    final = tmp_path / "distilled"
    shutil.copytree(exported["sd3"]["folder"], final)
    logs = []
    _export_files(final, ["gguf:Q8_0", "single-file"], logs.append)
    names = ["transformer-Q8_0.gguf", "transformer.safetensors"]
    assert sorted(p.name for p in final.glob("transformer*.*")) == names
    assert not foreign_entries(final)  # the package's own files: --overwrite may replace the folder later
    assert {rel for rel, _ in files_to_upload(final)} >= set(names)  # push uploads them beside the pipeline
    # the same exports again: reused; a spec dropped: its file goes; new weights: exported again
    logs.clear()
    _export_files(final, ["gguf:Q8_0"], logs.append)
    assert logs == [f"[5/5] reusing {final / names[0]}"] and not (final / names[1]).exists()
    weights = final / "transformer" / "diffusion_pytorch_model.safetensors"
    later = time.time() + 10  # the model was trained again after the export
    os.utime(weights, (later, later))
    logs.clear()
    _export_files(final, ["gguf:Q8_0"], logs.append)
    assert logs == [f"[5/5] exporting {final / names[0]}"]


def test_card_lists_exported_files_and_its_snippet_loads_them_in_a_fresh_process(exported, tmp_path):
    import shutil

    from diffusers_layerprune.hub import render_model_card

    folder = tmp_path / "pruned"
    shutil.copytree(exported["sd3"]["folder"], folder)
    shutil.copyfile(exported["sd3"]["gguf"], folder / "transformer-Q8_0.gguf")
    card = render_model_card(folder, "me/tiny")
    size = (folder / "transformer-Q8_0.gguf").stat().st_size
    assert (
        f"| [`transformer-Q8_0.gguf`](https://huggingface.co/me/tiny/blob/main/transformer-Q8_0.gguf) | GGUF Q8_0 | {size / 1e3:.1f} kB |"
        in card
    )
    # the family's ComfyUI fact (benchmarks/comfy_check.py): ComfyUI cannot build a depth-pruned SD3
    assert f"ComfyUI: {get_family('sd3').single_file.comfyui}" in card and "models/unet" not in card
    snippet = card.split("## One-file versions")[1].split("```python")[1].split("```")[0]
    snippet = snippet.replace("https://huggingface.co/me/tiny/blob/main/", f"{folder}/").replace(
        '"me/tiny"', repr(str(folder))
    )
    script = (
        snippet + "\nprint(type(transformer).__name__, transformer.transformer_blocks[0].attn.to_q.weight.quant_type)\n"
    )
    result = run_stock(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["SD3Transformer2DModel", "8"]  # GGMLQuantizationType.Q8_0


def test_run_refuses_an_export_the_model_cannot_take_before_any_work(capsys, tmp_path):
    for model, spec, fragment in (
        ("tiny-random-sd3", "gguf:Q3_K", "unknown quantization type 'Q3_K'"),
        ("tiny-random-sd3", "safetensors", "unknown export format 'safetensors'"),
        ("tiny-random", "gguf:Q8_0", "no from_single_file in diffusers"),
    ):
        capsys.readouterr()
        assert cli(["run", "--model", model, "--export", spec, "--output", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("quant, tolerance", [("Q8_0", 0.01), ("Q5_0", 0.05), ("Q4_0", 0.1)])
def test_gguf_block_types_decode_with_diffusers_reader_to_the_original_layout(folders, quant, tolerance, tmp_path):
    """Every --quant block type: diffusers' own GGUF reader and dequantizer give back the original-layout tensors
    (relative error of the Linear weights bounded by the type's precision; F32 tensors exact)."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor
    from safetensors.torch import load_file

    from diffusers_layerprune.export import export_transformer

    root, made = folders
    wide = widened(build_tiny_sd3_pipeline(4), attention_head_dim=32, caption_projection_dim=64)
    folder = save_pruned_pipeline(prune_pipeline(wide, pruned_layers=[1]), tmp_path / "sd3")
    reference = tmp_path / "t.safetensors"
    export_transformer(folder, reference)
    path = export_transformer(folder, tmp_path / "t.gguf", fmt="gguf", quant=quant)
    original = load_file(reference)
    loaded = load_gguf_checkpoint(str(path))
    assert set(loaded) == set(original)
    types = set()
    for key, value in loaded.items():
        decoded = dequantize_gguf_tensor(value).float() if hasattr(value, "quant_type") else value.float()
        types.add(getattr(value, "quant_type", None))
        error = (decoded - original[key]).norm() / original[key].norm().clamp_min(1e-12)
        assert error <= (tolerance if hasattr(value, "quant_type") else 1e-3), (key, error.item())
    import gguf

    assert int(gguf.GGMLQuantizationType[quant]) in types


def test_single_file_bf16_casts_every_weight(folders, tmp_path):
    from safetensors import safe_open

    from diffusers_layerprune.export import export_transformer

    root, made = folders
    path = export_transformer(made["sd3"], tmp_path / "t.safetensors", quant="BF16")
    with safe_open(path, framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def test_push_uploads_the_exported_files_beside_the_pipeline_and_the_card_lists_them(exported, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    calls = []

    class Hub:  # records what HfApi would be asked; nothing leaves the machine
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            pass

        def upload_folder(self, **kwargs):
            calls.append(kwargs)
            return type("Info", (), {"commit_url": "https://huggingface.co/me/tiny/commit/abc"})()

        create_commit = upload_folder

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token_not_real")
    folder = tmp_path / "pruned"
    shutil.copytree(exported["qwenimage"]["folder"], folder)
    for key, name in (("gguf", "transformer-Q8_0.gguf"), ("single", "transformer.safetensors")):
        shutil.copyfile(exported["qwenimage"][key], folder / name)
    assert cli(["push", str(folder), "--repo-id", "me/tiny"]) == 0
    upload = calls[-1]
    if "operations" in upload:  # one commit of explicit additions (files rewritten on the way)
        sent = {op.path_in_repo: op.path_or_fileobj for op in upload["operations"]}
        sent = {k: v if isinstance(v, bytes) else open(v, "rb").read() for k, v in sent.items()}
    else:  # the folder as is: what upload_folder's own filter keeps
        from huggingface_hub.utils import filter_repo_objects

        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        kept = filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"])
        sent = {rel: (folder / rel).read_bytes() for rel in kept}
    for name in ("transformer-Q8_0.gguf", "transformer.safetensors"):
        assert sent[name] == (folder / name).read_bytes()  # beside the pipeline, unchanged
        assert f"[`{name}`](https://huggingface.co/me/tiny/blob/main/{name})" in sent["README.md"].decode()
    assert "transformer/diffusion_pytorch_model.safetensors" in sent
    assert f"ComfyUI: {get_family('qwenimage').single_file.comfyui}" in sent["README.md"].decode()


def test_comfy_check_skips_in_one_line_without_a_comfyui_checkout(tmp_path):
    """benchmarks/comfy_check.py is no CI dependency: without a ComfyUI checkout it says so and succeeds."""
    import subprocess
    import sys

    from helpers import ROOT

    script = ROOT / "benchmarks" / "comfy_check.py"
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFYUI_GGUF_DIR")}
    result = subprocess.run(
        [sys.executable, str(script), "--comfyui", str(tmp_path / "none")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"comfy_check: skipped: no ComfyUI checkout at {tmp_path / 'none'} (give --comfyui PATH)"]  # fmt: skip
    assert not (tmp_path / "none").exists()
