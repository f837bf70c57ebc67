"""Post-training weight sparsity (``layerprune sparsify``, ``sparsify_pipeline``): exact sparsity per layer and per
component, the N:M pattern, Wanda's score, stock loading of saved folders, depth pruning before and after, masked
distillation, and bad input."""

import json
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline
from diffusers_layerprune.sparsity import (
    SparsityRecord,
    parse_pattern,
    read_sparsity_record,
    record_input_norms,
    sparsifiable_layers,
    sparsify_pipeline,
)
from diffusers_layerprune.sparsity.masks import global_masks
from diffusers_layerprune.sparsity.wanda import wanda_scores
from diffusers_layerprune.testing import save_tiny_pixart_pipeline, tiny_generation_kwargs

from helpers import distill_args, run_stock, run_train_distill

PROMPT = "a small red circle at the top left"
CALIBRATION = ["a small red circle", "a large blue square at the top", "a green cross on the left", "a white star"]


def generate(pipe):
    return pipe(PROMPT, **tiny_generation_kwargs(pipe, seed=0)).images


def zeros(layer):
    return int((layer.weight == 0).sum())


@pytest.fixture
def pipe(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# How many weights, and which


def test_layer_scope_zeroes_exactly_round_s_n_in_every_layer_and_records_it(pipe):
    record = sparsify_pipeline(pipe, "both", text_encoder_sparsity=0.3, transformer_sparsity=0.55)
    for component, s in (("text_encoder", 0.3), ("transformer", 0.55)):
        layers = sparsifiable_layers(getattr(pipe, component), component)
        assert layers and all(zeros(layer) == round(s * layer.weight.numel()) for layer in layers.values())
        measured = record.components[component]
        assert measured.target == s
        assert measured.zeros == sum(zeros(layer) for layer in layers.values())
        assert measured.layers == {name: [zeros(layer), layer.weight.numel()] for name, layer in layers.items()}
        assert abs(measured.achieved - s) < 1e-3
    # the final projection, embeddings and norms stay dense
    assert zeros(pipe.transformer.proj_out) == 0 and "proj_out" not in record.components["transformer"].layers
    assert int((pipe.text_encoder.shared.weight == 0).sum()) == 0
    assert record.method == "magnitude" and record.pattern == "unstructured" and record.calibration is None


def test_magnitude_zeroes_the_smallest_weights(pipe):
    dense = {
        n: layer.weight.detach().clone() for n, layer in sparsifiable_layers(pipe.transformer, "transformer").items()
    }
    sparsify_pipeline(pipe, "transformer", sparsity=0.4)
    for name, layer in sparsifiable_layers(pipe.transformer, "transformer").items():
        pruned = layer.weight == 0
        assert dense[name].abs()[pruned].max() <= dense[name].abs()[~pruned].min()
        assert torch.equal(layer.weight[~pruned], dense[name][~pruned])  # survivors keep their values


def test_global_scope_is_exact_over_the_component(pipe):
    layers = sparsifiable_layers(pipe.transformer, "transformer")
    dense = {name: layer.weight.detach().abs().clone() for name, layer in layers.items()}
    record = sparsify_pipeline(pipe, "transformer", sparsity=0.37, scope="global")
    total = sum(layer.weight.numel() for layer in layers.values())
    pruned = sum(zeros(layer) for layer in layers.values())
    assert pruned == round(0.37 * total) == record.components["transformer"].zeros
    assert len({round(zeros(layer) / layer.weight.numel(), 2) for layer in layers.values()}) > 1  # uneven per layer
    # one threshold for the whole component: every pruned weight is no larger than every kept one
    gone = torch.cat([dense[name][layer.weight == 0] for name, layer in layers.items()])
    kept = torch.cat([dense[name][layer.weight != 0] for name, layer in layers.items()])
    assert gone.max() <= kept.min()


def test_global_masks_break_ties_to_an_exact_count():
    scores = [torch.ones(3, 4), torch.ones(2, 4), torch.tensor([[0.0, 2.0, 1.0, 1.0]])]
    masks = list(global_masks([lambda s=s: s for s in scores], 0.5))  # 24 weights, 12 pruned, many ties at 1.0
    assert sum(int((~m).sum()) for m in masks) == 12
    assert not masks[2][0, 0] and masks[2][0, 1]  # the zero goes first, the largest survives


def test_wanda_prunes_each_output_row_exactly(pipe):
    sparsify_pipeline(pipe, "transformer", sparsity=0.3, method="wanda", prompts=CALIBRATION, num_inference_steps=2)
    for layer in sparsifiable_layers(pipe.transformer, "transformer").values():
        per_row = (layer.weight == 0).sum(dim=1)
        assert torch.all(per_row == round(0.3 * layer.in_features))


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_2_4_holds_in_every_group_of_4_along_the_input_dimension(pipe, method):
    options = dict(prompts=CALIBRATION, num_inference_steps=2) if method == "wanda" else {}
    record = sparsify_pipeline(pipe, "both", method=method, pattern="2:4", **options)
    for component in ("text_encoder", "transformer"):
        for layer in sparsifiable_layers(getattr(pipe, component), component).values():
            groups = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(dim=-1)
            assert torch.all(groups == 2)  # random weights: exactly 2 survivors per group of 4
        assert record.components[component].achieved == 0.5
    assert record.pattern == "2:4"
    assert parse_pattern("1:8").sparsity == 0.875


# ---------------------------------------------------------------------------------------------------------------
# Wanda's score on a hand-made example


class _Encoder(nn.Module):
    """A text-encoder-like module: one Linear on [batch, length, 2] inputs, called with an attention_mask."""

    def __init__(self, linear):
        super().__init__()
        self.fc = linear

    def forward(self, x, attention_mask=None):
        return self.fc(x)


def test_wanda_score_is_abs_w_times_input_norm_counting_only_real_tokens():
    linear = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0], [-3.0, 0.5], [0.25, 4.0]]))
    x = torch.tensor([[[3.0, 0.0], [4.0, 1.0], [100.0, 100.0]]])  # the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    encoder = _Encoder(linear)
    with record_input_norms({"fc": linear}, mask_source=encoder) as recorder:
        encoder(x, attention_mask=mask)
    norms = recorder.norms()["fc"]
    assert torch.allclose(norms, torch.tensor([5.0, 1.0]))  # sqrt(3^2 + 4^2), sqrt(0^2 + 1^2)
    assert recorder.tokens["fc"] == 2
    expected = torch.tensor([[5.0, 2.0], [15.0, 0.5], [1.25, 4.0]])  # |W| * ||X||
    assert torch.equal(wanda_scores(linear.weight, norms), expected)

    # Pruning half of each row removes the lower score: column 1, 1, 0 (magnitude would remove column 0, 1, 0).
    from diffusers_layerprune.sparsity.masks import row_mask

    keep = row_mask(expected, 0.5)
    assert keep.tolist() == [[True, False], [True, False], [False, True]]


# ---------------------------------------------------------------------------------------------------------------
# Saved folders: stock diffusers in a fresh process; depth pruning before and after


def _stock_images(folders, tmp_path):
    """Generate with stock diffusers in a fresh process (no plugin on the path); returns images per folder."""
    script = textwrap.dedent(
        f"""
        import sys, json, numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads({torch.get_num_threads()})
        out = {{}}
        for i, folder in enumerate({[str(f) for f in folders]!r}):
            pipe = DiffusionPipeline.from_pretrained(folder)
            size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
            images = pipe({PROMPT!r}, num_inference_steps=2, height=size, width=size, use_resolution_binning=False,
                          max_sequence_length=16, clean_caption=False, output_type="pt",
                          generator=torch.Generator().manual_seed(0)).images
            np.save(f"{tmp_path}/stock-{{i}}.npy", images.numpy())
            out[folder] = pipe.transformer.config.get("_kept_layers")
        assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
        print(json.dumps(out))
        """
    )
    result = run_stock(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = json.loads(result.stdout.strip().splitlines()[-1])
    return [np.load(tmp_path / f"stock-{i}.npy") for i in range(len(folders))], [kept[str(f)] for f in folders]


def test_saved_folders_load_in_stock_diffusers_with_the_same_images(tiny_pipeline_dir, tmp_path):
    # 1. sparsify in memory, save, reload in a fresh stock process
    pipe = load_pipeline(tiny_pipeline_dir)
    record = sparsify_pipeline(pipe, "both", sparsity=0.5, method="wanda", prompts=CALIBRATION, num_inference_steps=2)
    expected_sparse = generate(pipe).numpy()
    sparse_dir = save_pruned_pipeline(pipe, tmp_path / "sparse", extra_files={"sparsity.json": record.to_json()})
    assert read_sparsity_record(sparse_dir) == record
    assert record.calibration["prompts"]["count"] == len(CALIBRATION)
    weights = load_file(sparse_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert (weights["transformer_blocks.0.attn1.to_q.weight"] == 0).float().mean() == 0.5  # zeros stored densely

    # 2. prune depth, then sparsify with the command (2:4): kept_layers survive
    assert cli(["prune", "--model", str(tiny_pipeline_dir), "--drop", "1,4", "--output", str(tmp_path / "d")]) == 0
    args = ["--model", str(tmp_path / "d"), "--component", "transformer", "--pattern", "2:4"]
    assert cli(["sparsify", *args, "--output", str(tmp_path / "d+s")]) == 0
    depth_sparse = load_pipeline(tmp_path / "d+s")
    assert depth_sparse.transformer.config.kept_layers == [0, 2, 3, 5]
    expected_depth_sparse = generate(depth_sparse).numpy()

    # 3. the reverse: sparsify, then prune depth; the record follows, measured again on the kept blocks
    sparse_then_depth = tmp_path / "s+d"
    assert cli(["prune", "--model", str(sparse_dir), "--drop", "0,2", "--output", str(sparse_then_depth)]) == 0
    carried = read_sparsity_record(sparse_then_depth)
    assert carried.history[-1] == {"action": "prune", "kept_layers": [1, 3, 4, 5]}
    assert carried.components["text_encoder"] == record.components["text_encoder"]
    assert carried.components["transformer"].weights < record.components["transformer"].weights
    assert not any(name.startswith("transformer_blocks.4") for name in carried.components["transformer"].layers)
    expected_reverse = generate(load_pipeline(sparse_then_depth)).numpy()

    images, kept = _stock_images([sparse_dir, tmp_path / "d+s", sparse_then_depth], tmp_path)
    assert kept == [None, [0, 2, 3, 5], [1, 3, 4, 5]]
    for stock, expected in zip(images, [expected_sparse, expected_depth_sparse, expected_reverse], strict=True):
        np.testing.assert_array_equal(stock, expected)
    assert not np.array_equal(images[0], generate(load_pipeline(tiny_pipeline_dir)).numpy())  # it did change


def test_a_transformer_folder_stays_a_transformer_folder(tiny_pipeline_dir, tmp_path):
    from diffusers import PixArtTransformer2DModel

    out = tmp_path / "tf"
    args = ["--model", str(tiny_pipeline_dir / "transformer"), "--base-model", str(tiny_pipeline_dir)]
    assert cli(["sparsify", *args, "--component", "transformer", "--sparsity", "0.25", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "sparsity.json",
    ]
    layer = PixArtTransformer2DModel.from_pretrained(out).transformer_blocks[0].attn1.to_q
    assert zeros(layer) == round(0.25 * layer.weight.numel())
    assert read_sparsity_record(out).components["transformer"].target == 0.25


def test_distillation_keeps_the_zeros(tmp_path):
    save_tiny_pixart_pipeline(tmp_path / "teacher", num_layers=6)
    (tmp_path / "prompts.txt").write_text("\n".join(CALIBRATION) + "\n")
    student = prune_pipeline(load_pipeline(tmp_path / "teacher"), pruned_layers=[2])
    record = sparsify_pipeline(student, "transformer", sparsity=0.6)
    save_pruned_pipeline(student, tmp_path / "student", extra_files={"sparsity.json": record.to_json()})
    run_train_distill(distill_args(tmp_path, tmp_path / "kd", steps=3) + ["--report_to", "none"])

    before = load_file(tmp_path / "student" / "transformer" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "kd" / "transformer" / "diffusion_pytorch_model.safetensors")
    name = "transformer_blocks.0.ff.net.0.proj.weight"
    assert torch.equal(after[name] == 0, before[name] == 0) and not torch.equal(after[name], before[name])
    saved = read_sparsity_record(tmp_path / "kd")
    assert saved.components["transformer"].zeros == record.components["transformer"].zeros
    assert saved.history[-1] == {"action": "distill", "steps": 3, "masks_kept": True}
    assert json.loads((tmp_path / "kd" / "distill_config.json").read_text())["sparsity_masks_kept"] is True


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


@pytest.fixture(scope="module")
def no_text_encoder_dir(tmp_path_factory):
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(2)
    folder = tmp_path_factory.mktemp("no-te") / "pipe"
    type(pipe)(**{**pipe.components, "text_encoder": None, "tokenizer": None}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "1"], "--sparsity 1 is outside [0, 1)"),
        (["--sparsity", "-0.1"], "--sparsity -0.1 is outside [0, 1)"),
        (["--transformer-sparsity", "1.5"], "--transformer-sparsity 1.5 is outside [0, 1)"),
        (["--sparsity", "0.5", "--pattern", "4:2"], "pattern '4:2' is not valid"),
        (["--sparsity", "0.5", "--pattern", "2:4:8"], "pattern '2:4:8' is not valid"),
        (["--sparsity", "0.3", "--pattern", "2:4"], "the 2:4 pattern zeroes 0.5 of the weights"),
        (["--sparsity", "0.5", "--method", "wanda"], "wanda needs calibration prompts; pass --prompts"),
        (["--sparsity", "0.5", "--method", "sparsegpt"], "unknown sparsity method 'sparsegpt'"),
        (["--sparsity", "0.5", "--component", "unet"], "unknown component 'unet'"),
        (["--sparsity", "0.5", "--component", "text_encoder", "@no-te"], "has no text_encoder"),
        (
            ["--sparsity", "0.5", "--component", "both", "@transformer-only"],
            "holds only a transformer, no text_encoder",
        ),
        (["--sparsity", "0.5", "--prompts", "toy:train"], "magnitude uses no calibration prompts"),
        (["--sparsity", "0.5", "--scope", "global", "--method", "wanda", "--prompts", "toy:train"], "--scope global"),
        (["--sparsity", "0.5", "--prompts", "missing.txt", "--method", "wanda"], "prompt file missing.txt does not"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tiny_pipeline_dir, no_text_encoder_dir, tmp_path, capsys, args, message
):
    model = {"@no-te": str(no_text_encoder_dir), "@transformer-only": str(tiny_pipeline_dir / "transformer")}
    model_args = ["--model", str(tiny_pipeline_dir)]
    for key, path in model.items():
        if key in args:
            args = [a for a in args if a != key]
            model_args = ["--model", path, "--base-model", str(tiny_pipeline_dir)]
    if "--component" not in args:
        args = [*args, "--component", "transformer"]
    out = tmp_path / "out"
    assert cli(["sparsify", *model_args, *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_record_round_trip_and_refusals(tmp_path):
    from diffusers_layerprune import LayerPruneError

    with pytest.raises(LayerPruneError, match="not a sparsity record"):
        SparsityRecord.from_dict({"format": "other"})
    (tmp_path / "sparsity.json").write_text(
        json.dumps({"format": "diffusers-layerprune/sparsity", "format_version": 99})
    )
    with pytest.raises(LayerPruneError, match="newer diffusers-layerprune"):
        read_sparsity_record(tmp_path)
    assert read_sparsity_record(tmp_path / "nothing") is None


# ---------------------------------------------------------------------------------------------------------------
# The toy benchmark's claim rules (benchmarks/sparsity_toy.py), on synthetic curves


def test_benchmark_claim_rules():
    from helpers import load_benchmark

    bench = load_benchmark("sparsity_toy")

    levels = [round(0.1 * i, 1) for i in range(1, 10)]
    te = dict(zip(levels, [0.6] * 6 + [0.3, 0.1, 0.0], strict=True))  # kept to 60%, collapsed at 80%: sudden
    tf = dict(zip(levels, [0.6, 0.5, 0.3, 0.1] + [0.0] * 5, strict=True))  # kept to 10%, collapsed at 40%: gradual
    cells = [{"stage": "dense", "accuracy": {m: 0.6 for m in bench.METRICS}, "toy_score": 0.9, "achieved": 0.0}]
    for component, curve in (("text_encoder", te), ("transformer", tf)):
        for method in ("magnitude", "wanda"):
            for s, acc in curve.items():
                if method == "wanda" and component == "text_encoder":
                    acc = max(acc - 0.05, 0.0)  # Wanda 5 points behind on the text encoder, tied on the transformer
                accuracy = {m: acc for m in bench.METRICS}
                cell = {"component": component, "method": method, "pattern": "unstructured", "sparsity": s}
                cells.append({"stage": "curve", **cell, "accuracy": accuracy, "toy_score": acc, "achieved": s})
    claims = {c["id"]: c for c in bench.check_claims(cells, num_images=100)}
    magnitude = claims["magnitude_beats_wanda"]
    assert (magnitude["verdict"], magnitude["won"], magnitude["lost"]) == ("holds", 8, 0)
    assert claims["text_encoder_tolerates_more"]["verdict"] == "holds"
    assert [(r["text_encoder"], r["transformer"]) for r in claims["text_encoder_tolerates_more"]["comparisons"]] == [
        (0.6, 0.1),
        (0.6, 0.1),
    ]
    curves = {(c["component"], c["method"]): c for c in claims["sudden_collapse"]["curves"]}
    assert (curves["text_encoder", "magnitude"]["first_collapsed"], curves["text_encoder", "magnitude"]["sudden"]) == (
        0.8,
        True,
    )
    assert (curves["transformer", "wanda"]["last_kept"], curves["transformer", "wanda"]["first_collapsed"]) == (
        0.1,
        0.4,
    )
    assert claims["sudden_collapse"]["verdict"] == "does not hold"  # 2 sudden, 2 gradual
