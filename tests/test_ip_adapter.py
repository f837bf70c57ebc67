"""IP-Adapters across pruning (``layerprune adapt-ip-adapter``), Flux.1 and SD3: the families with a stock
``load_ip_adapter`` in diffusers.

Exactness is the contract: in a fresh process that never imports this package, the stock pipeline on the pruned folder
with the adapted IP-Adapter (``pipe.load_ip_adapter``) generates what the parent with the original IP-Adapter
generates with the removed blocks skipped. The same process shows what the stock loader does with the parent's
IP-Adapter unadapted (Flux: loads and generates something else; SD3: fails), which is why the command exists.
"""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusers_layerprune.cli import main as cli

from helpers import run_stock

PROMPT = "a small red circle"


def flux_ip_adapter(n_double: int, *, text_width: int = 32, width: int = 16, clip: int = 8, xlabs: bool = False):
    """A random Flux IP-Adapter file's tensors for a model of ``width`` and ``text_width``: ``ImageProjection``
    (``proj`` to 4 tokens, ``norm``) and per double block biased ``to_k_ip`` / ``to_v_ip``; in diffusers' key layout,
    or in XLabs' original one (``xlabs``), which diffusers' Flux loader converts."""
    g = torch.Generator().manual_seed(11)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    proj = {"proj.weight": r(4 * text_width, clip), "proj.bias": r(4 * text_width)}
    proj.update({"norm.weight": 1 + r(text_width, scale=0.1), "norm.bias": r(text_width, scale=0.1)})
    layers = {
        f"{i}.to_{kv}_ip.{p}": r(width, text_width) if p == "weight" else r(width)
        for i in range(n_double)
        for kv in "kv"
        for p in ("weight", "bias")
    }
    if xlabs:
        out = {f"ip_adapter_proj_model.{k}": v for k, v in proj.items()}
        for key, value in layers.items():
            i, name = key.split(".", 1)
            name = name.replace("to_k_ip", "ip_adapter_double_stream_k_proj").replace(
                "to_v_ip", "ip_adapter_double_stream_v_proj"
            )
            out[f"double_blocks.{i}.processor.{name}"] = value
        return out
    return {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in layers.items()}}


def sd3_ip_adapter(n_blocks: int, *, width: int = 16, head_dim: int = 8, embed: int = 8, hidden: int = 16):
    """A random SD3 IP-Adapter file's tensors: an ``IPAdapterTimeImageProjection`` (the shapes diffusers' loader
    infers: depth 4, 64-channel heads) and one ``SD3IPAdapterJointAttnProcessor2_0`` layer per joint block."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    g = torch.Generator().manual_seed(12)
    proj = IPAdapterTimeImageProjection(
        embed_dim=embed, output_dim=width, hidden_dim=hidden, heads=1, num_queries=4, timestep_in_dim=32
    )
    out = {f"image_proj.{k}": torch.randn(v.shape, generator=g) * 0.3 for k, v in proj.state_dict().items()}
    layer = SD3IPAdapterJointAttnProcessor2_0(
        hidden_size=width, ip_hidden_states_dim=width, head_dim=head_dim, timesteps_emb_dim=hidden
    )
    for i in range(n_blocks):
        for k, v in layer.state_dict().items():
            out[f"ip_adapter.{i}.{k}"] = torch.randn(v.shape, generator=g) * 0.3
    return out


# family -> (blocks of the tiny pipeline (double or joint, single), kept global blocks, the IP-Adapter file's tensors)
# Flux: 4 double + 2 single blocks, doubles 0 and 2 removed; SD3: 4 joint blocks, 0 and the last (3) removed, so the
# kept block 2 becomes the context_pre_only last block.
CASES = {
    "flux": (4, 2, [1, 3, 4, 5], lambda: flux_ip_adapter(4)),
    "flux-xlabs": (4, 2, [1, 3, 4, 5], lambda: flux_ip_adapter(4, xlabs=True)),
    "sd3": (4, None, [1, 2], lambda: sd3_ip_adapter(4)),
}


def _save_image_encoder(case: str, folder) -> None:
    """A tiny image encoder of the kind the family's ``load_ip_adapter`` loads from a folder: CLIP with projection
    (Flux: 8-wide image embeds, the IP-Adapter's ``proj`` input) or SigLIP and its processor (SD3: 8-wide tokens)."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(3)
    size = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32)
    if case.startswith("flux"):
        config = CLIPVisionConfig(**size, patch_size=8, projection_dim=8)
        CLIPVisionModelWithProjection(config).save_pretrained(folder)
    else:
        SiglipVisionModel(SiglipVisionConfig(**dict(size, hidden_size=8), patch_size=8)).save_pretrained(folder)
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _load_kwargs(case: str, root) -> dict:
    """``load_ip_adapter`` arguments that take the image encoder from the workspace (the same in STOCK_SCRIPT)."""
    if case.startswith("flux"):
        return dict(image_encoder_pretrained_model_name_or_path=f"{root}/encoder", image_encoder_dtype=torch.float32)
    return dict(image_encoder_folder=f"{root}/encoder")


def _build(case: str):
    from diffusers_layerprune.testing import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

    depth, single, _, _ = CASES[case]
    return build_tiny_flux_pipeline(depth, single) if case.startswith("flux") else build_tiny_sd3_pipeline(depth)


@pytest.fixture(scope="module", params=sorted(CASES))
def workspace(request, tmp_path_factory):
    """Parent pipeline, pruned pipeline (by ``layerprune prune``), the parent's IP-Adapter file, a tiny image encoder
    folder of the family's kind and an image prompt."""
    case = request.param
    root = tmp_path_factory.mktemp(case)
    _build(case).save_pretrained(root / "parent")
    kept = CASES[case][2]
    assert cli(["prune", "--model", str(root / "parent"), "--keep", ",".join(map(str, kept)),
                "--output", str(root / "pruned")]) == 0  # fmt: skip
    (root / "ip").mkdir()
    save_file(CASES[case][3](), str(root / "ip" / "ip-adapter.safetensors"))
    _save_image_encoder(case, root / "encoder")
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5))
    Image.fromarray((pixels * 255).to(torch.uint8).numpy()).save(root / "image.png")
    return case, root


def _generate(pipe, image=None) -> torch.Tensor:
    from diffusers_layerprune.testing import tiny_call_kwargs

    return pipe(PROMPT, **({"ip_adapter_image": image} if image else {}), **tiny_call_kwargs(pipe)).images


# Run by a fresh interpreter: only diffusers and torch, as a user would after `layerprune adapt-ip-adapter`.
STOCK_SCRIPT = r"""
import json, sys, torch
from diffusers import DiffusionPipeline
from PIL import Image
root = sys.argv[1]
out = {}

def generate(pipe):
    kwargs = dict(num_inference_steps=2, height=16, width=16, max_sequence_length=16, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    return pipe("a small red circle", ip_adapter_image=Image.open(f"{root}/image.png"), **kwargs).images

for name, folder in (("adapted", "adapted"), ("unadapted", "ip")):
    pipe = DiffusionPipeline.from_pretrained(f"{root}/pruned")
    if "Flux" in type(pipe).__name__:  # FluxIPAdapterMixin: a CLIP encoder (fp16 by default)
        encoder = dict(image_encoder_pretrained_model_name_or_path=f"{root}/encoder", image_encoder_dtype=torch.float32)
    else:  # SD3IPAdapterMixin: a SigLIP encoder and processor folder
        encoder = dict(image_encoder_folder=f"{root}/encoder")
    try:
        pipe.load_ip_adapter(f"{root}/{folder}", weight_name="ip-adapter.safetensors", **encoder)
        torch.save(generate(pipe), f"{root}/{name}.pt")
        out[name] = "ok"
    except Exception as error:
        out[name] = f"{type(error).__name__}: {error}"
out["imported_layerprune"] = any(m.startswith("diffusers_layerprune") for m in sys.modules)
print(json.dumps(out))
"""


def test_adapted_ip_adapter_on_stock_pruned_pipeline_equals_parent_with_blocks_skipped(workspace, capsys):
    from diffusers import DiffusionPipeline

    from diffusers_layerprune.blocks import skip_blocks

    case, root = workspace
    image = Image.open(root / "image.png")
    parent = DiffusionPipeline.from_pretrained(root / "parent")
    depth = len(parent.transformer.transformer_blocks) + len(
        getattr(parent.transformer, "single_transformer_blocks", [])
    )
    removed = [i for i in range(depth) if i not in CASES[case][2]]
    with torch.no_grad(), skip_blocks(parent.transformer, removed):
        without_ip = _generate(parent, {})
    parent.load_ip_adapter(str(root / "ip"), weight_name="ip-adapter.safetensors", **_load_kwargs(case, root))
    with torch.no_grad(), skip_blocks(parent.transformer, removed):
        reference = _generate(parent, image)
    assert (reference - without_ip).abs().max() > 1e-3  # the IP-Adapter changes the images: the check can fail
    torch.save({"reference": reference, "without_ip": without_ip}, root / "reference.pt")  # for docs/ip_adapter.md

    capsys.readouterr()
    assert cli(["adapt-ip-adapter", str(root / "ip"), "--pruned", str(root / "pruned"), "--output",
                str(root / "adapted")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "IP-Adapter layers kept" in printed
    assert ("[1, 3]" if case.startswith("flux") else "[1, 2]") in printed
    record = json.loads((root / "adapted" / "layerprune_ip_adapter.json").read_text())
    assert record["source_ip_adapter"]["sha256"] and record["ip_layers_dropped"] == (
        [0, 2] if case != "sd3" else [0, 3]
    )

    done = run_stock(STOCK_SCRIPT, args=[root], cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported_layerprune"] is False
    assert result["adapted"] == "ok", result
    adapted = torch.load(root / "adapted.pt", weights_only=True)
    assert (adapted - reference).abs().max() <= 1e-4
    # Without adapting, the stock loader gives kept blocks the wrong layers (Flux) or fails (SD3): docs/ip_adapter.md.
    if case == "sd3":
        assert result["unadapted"].startswith("KeyError"), result
    else:
        assert result["unadapted"] == "ok"
        assert (torch.load(root / "unadapted.pt", weights_only=True) - reference).abs().max() > 1e-3


def _tree(root) -> dict:
    """Every path under ``root`` with its bytes' hash: a refused command must leave it unchanged."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def bad_ws(tmp_path_factory, tiny_pipeline_dir):
    """A pruned Flux transformer folder (4 + 2 blocks, doubles 0 and 2 removed), its parent, a pruned PixArt
    pipeline, and IP-Adapters that do not fit."""
    from diffusers_layerprune.families import family_of
    from diffusers_layerprune.modeling import save_pruned_transformer
    from diffusers_layerprune.testing import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("bad_ip")
    parent = build_tiny_flux_pipeline(4, 2).transformer
    parent.save_pretrained(root / "flux_parent")
    pruned = family_of(parent).pruned_class().from_transformer(parent, [1, 3, 4, 5])
    save_pruned_transformer(pruned, root / "flux_pruned")
    assert (
        cli(["prune", "--model", str(tiny_pipeline_dir), "--drop", "1", "--output", str(root / "pixart_pruned")]) == 0
    )
    medium = build_tiny_sd3_pipeline(4, dual_attention_layers=(0, 1)).transformer  # SD3.5-Medium-like
    save_pruned_transformer(family_of(medium).pruned_class().from_transformer(medium, [0, 1, 3]), root / "sd35m_pruned")
    files = {
        "good": flux_ip_adapter(4),
        "sd3": sd3_ip_adapter(4),
        "wide": flux_ip_adapter(4, text_width=64),
        "deep": flux_ip_adapter(6),
        "short": flux_ip_adapter(3),
        "not_ip": {"transformer.blocks.0.lora_A.weight": torch.zeros(2, 2)},
        "damaged": {k: v for k, v in flux_ip_adapter(4).items() if k != "ip_adapter.2.to_v_ip.bias"},
    }
    for name, tensors in files.items():
        save_file(tensors, str(root / f"{name}.safetensors"))
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("mine")
    return root


# case -> (IP_ADAPTER, --pruned, --output, words the one-line error must hold)
BAD = {
    "other_family": ("sd3.safetensors", "flux_pruned", "out", "is not a Flux.1 IP-Adapter"),
    "other_width": ("wide.safetensors", "flux_pruned", "out", "does not fit this Flux.1 model"),
    "beyond_parent_depth": ("deep.safetensors", "flux_pruned", "out", "double blocks [4, 5] beyond the parent's depth"),
    "missing_blocks": ("short.safetensors", "flux_pruned", "out", "no layers for double blocks [3]"),
    "damaged_layer": ("damaged.safetensors", "flux_pruned", "out", "its layer 2 has no to_v_ip.bias"),
    "not_an_ip_adapter": ("not_ip.safetensors", "flux_pruned", "out", "is not an IP-Adapter"),
    "no_such_file": ("nothing.safetensors", "flux_pruned", "out", "does not exist"),
    "no_kept_record": ("good.safetensors", "flux_parent", "out", "records no kept blocks"),
    "family_without_loader": ("good.safetensors", "pixart_pruned", "out", "no IP-Adapter loader for PixArt-Sigma"),
    "sd3_dual_attention": ("sd3.safetensors", "sd35m_pruned", "out", "dual-attention blocks are not supported"),
    "output_exists": ("good.safetensors", "flux_pruned", "taken", "holds files layerprune did not write"),
    "output_inside_input": ("good.safetensors", "flux_pruned", "flux_pruned/ip", "is inside the input"),
}


def test_bin_file_is_read_like_the_stock_loader_reads_it(bad_ws, tmp_path):
    """A ``.bin`` IP-Adapter (the two-part dict ``load_ip_adapter`` reads with ``torch.load``) adapts to the same
    file as its ``.safetensors`` twin."""
    from safetensors.torch import load_file

    from diffusers_layerprune.adapters.ip_adapter import read_ip_adapter

    state = read_ip_adapter(bad_ws / "good.safetensors")
    torch.save(state, tmp_path / "ip-adapter.bin")
    for name in ("ip-adapter.bin", "good.safetensors"):
        folder = tmp_path if name.endswith(".bin") else bad_ws
        out = tmp_path / f"out-{name}"
        assert (
            cli(["adapt-ip-adapter", str(folder / name), "--pruned", str(bad_ws / "flux_pruned"), "--output", str(out)])
            == 0
        )
    from_bin = load_file(tmp_path / "out-ip-adapter.bin" / "ip-adapter.safetensors")
    from_safetensors = load_file(tmp_path / "out-good.safetensors" / "ip-adapter.safetensors")
    assert from_bin.keys() == from_safetensors.keys() and len(from_bin) == 4 + 2 * 4
    assert all(torch.equal(from_bin[k], from_safetensors[k]) for k in from_bin)
    assert torch.equal(from_bin["ip_adapter.0.to_k_ip.weight"], state["ip_adapter"]["1.to_k_ip.weight"])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_in_one_line_and_writes_nothing(bad_ws, case, capsys):
    ip, pruned, out, words = BAD[case]
    before = _tree(bad_ws)
    capsys.readouterr()
    code = cli(["adapt-ip-adapter", str(bad_ws / ip), "--pruned", str(bad_ws / pruned), "--output", str(bad_ws / out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("layerprune adapt-ip-adapter: error:"), err
    assert words in err, err
    assert _tree(bad_ws) == before


SD35_LARGE_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3.5-large (InstantX/SD3.5-Large-IP-Adapter's base)
    num_layers=38, attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
    caption_projection_dim=2432, pooled_projection_dim=2048, dual_attention_layers=(),
)  # fmt: skip


@pytest.mark.parametrize("family_name", ["flux", "sd3"])
def test_published_widths_fit_and_other_widths_do_not(family_name):
    """The width checks accept an IP-Adapter shaped as diffusers' loader builds it for the published checkpoint
    (Flux.1-dev: XLabs' layout; SD3.5 Large: InstantX's), and refuse it for a model of another width (a narrower
    Flux; SD3.5 Medium). Shapes only: meta tensors."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    from diffusers_layerprune.families import get_family
    from diffusers_layerprune.testing import FLUX1_DEV_TRANSFORMER, SD35_MEDIUM_TRANSFORMER

    layout = get_family(family_name).ip_adapter
    with torch.device("meta"):
        if family_name == "flux":
            inner, text = 3072, 4096
            image_proj = {"proj.weight": torch.empty(4 * text, 768), "proj.bias": torch.empty(4 * text),
                          "norm.weight": torch.empty(text), "norm.bias": torch.empty(text)}  # fmt: skip
            layer = {f"to_{kv}_ip.{p}": torch.empty((inner, text) if p == "weight" else (inner,))
                     for kv in "kv" for p in ("weight", "bias")}  # fmt: skip
            config, other = FLUX1_DEV_TRANSFORMER, dict(FLUX1_DEV_TRANSFORMER, num_attention_heads=12)
        else:
            image_proj = IPAdapterTimeImageProjection(embed_dim=1152, output_dim=2432, hidden_dim=1280, heads=20)
            image_proj = image_proj.state_dict()
            layer = SD3IPAdapterJointAttnProcessor2_0(2432, 2432, 64, 1280).state_dict()
            config, other = SD35_LARGE_TRANSFORMER, dict(SD35_MEDIUM_TRANSFORMER, dual_attention_layers=())
    state = {"image_proj": image_proj, "ip_adapter": {f"{i}.{k}": v for i in range(2) for k, v in layer.items()}}
    assert set(layer) == layout.layer_names
    assert layout.check_widths(config, state) is None
    assert "needs" in layout.check_widths(other, state)
