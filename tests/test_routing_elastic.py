"""Routing over an elastic run's depths: `layerprune route` on a train_distill --elastic_depths folder trains only
the router, whose codes are the run's nested depths; each prompt runs one trained depth of the one weight set, the
budget holds on the training prompts, and the folder still loads with stock diffusers (as the largest depth, and
routed through the custom_pipeline file)."""

from __future__ import annotations

import json

import pytest
import torch
from test_elastic import VALUES, elastic_args, make_workspace

from diffusers_layerprune.cli import main as cli

from helpers import run_train_distill

PROMPTS = [
    "a small red circle",
    "a large blue square",
    "a green star at the top left",
    "a white cross",
    "a small blue circle at the bottom",
    "a large red star",
    "a green square in the center",
    "a small white circle at the top right",
]
FAST = ["--steps", "4", "--batch-size", "4"]


def _gen(pipe, seeds):
    size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return dict(
        num_inference_steps=2, guidance_scale=1.0, height=size, width=size, use_resolution_binning=False,
        max_sequence_length=16, output_type="pt", generator=[torch.Generator().manual_seed(s) for s in seeds],
    )  # fmt: skip


@pytest.fixture(scope="module")
def elastic(tmp_path_factory):
    """A 6-block PixArt teacher, a 2-step elastic run over depths 5, 4, 3 (out/), and a router over its depths with
    a budget of 4 blocks (routed/)."""
    work = make_workspace(tmp_path_factory.mktemp("route_elastic"), "pixart", VALUES, 5)
    run_train_distill(elastic_args(work, work / "out", "5,4,3"))
    (work / "route_prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    args = ["route", "--model", str(work / "out"), "--budget", "4", "--prompts", str(work / "route_prompts.txt"),
            *FAST, "--output", str(work / "routed")]  # fmt: skip
    assert cli(args) == 0
    return work


def test_codes_are_the_trained_depths_and_the_budget_holds_on_the_training_prompts(elastic):
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline, read_routing_record

    record = read_routing_record(elastic / "routed")
    run = json.loads((elastic / "out" / "elastic.json").read_text())
    # the largest depth's blocks 0, 2, 3, 4, 5 of the source are the routed model's 0..4; depth 4 keeps source
    # blocks 0, 2, 4, 5 (local 0, 1, 3, 4), depth 3 keeps 0, 2, 4 (local 0, 1, 3): the elastic run's own sets
    assert [c.kept_layers for c in record.codes] == [[0, 1, 2, 3, 4], [0, 1, 3, 4], [0, 1, 3]]
    assert record.num_layers == 5 and record.elastic == {"depths": [5, 4, 3], "kept_layers": run["kept_layers"]}
    assert record.budget == 4 and record.mean_blocks <= 4 + 1e-9
    routed = RoutedPixArtSigmaPipeline.from_pretrained(elastic / "routed")
    codes = routed.route(PROMPTS)
    assert sum(len(record.codes[c].kept_layers) for c in codes) / len(codes) == pytest.approx(record.mean_blocks)
    assert record.depth_penalty >= 0
    assert cli(["push", str(elastic / "routed"), "--repo-id", "me/routed-elastic", "--dry-run"]) == 0
    card = (elastic / "routed" / "README.md").read_text()
    assert "A prompt-routed elastic model of" in card and "nested depths 5, 4, 3" in card
    # the shared weights are the elastic run's, unchanged (no fine-tuning asked)
    from safetensors.torch import load_file

    a = load_file(next((elastic / "out" / "transformer").glob("*.safetensors")))
    b = load_file(next((elastic / "routed" / "transformer").glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_routed_depth_generates_what_the_extracted_depth_generates(elastic, tmp_path):
    """Code k of the router is depth k of the elastic run: the image of a prompt sent to depth 3 equals the image of
    `layerprune extract --num-layers 3` for the same seed."""
    from diffusers_layerprune.modeling import load_pipeline
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline

    assert cli(["extract", str(elastic / "out"), "--num-layers", "3", "--output", str(tmp_path / "d3")]) == 0
    routed = RoutedPixArtSigmaPipeline.from_pretrained(elastic / "routed")
    routed.set_progress_bar_config(disable=True)
    extracted = load_pipeline(str(tmp_path / "d3"))
    extracted.set_progress_bar_config(disable=True)
    a = routed(PROMPTS[:2], code=2, **_gen(routed.pipeline, [3, 4])).images
    b = extracted(PROMPTS[:2], **_gen(extracted, [3, 4])).images
    assert torch.allclose(a, b, atol=1e-5)


def test_routed_elastic_folder_loads_with_stock_diffusers_alone_and_routes_alike(elastic, tmp_path):
    """In a fresh process without this package: the folder is the largest depth for DiffusionPipeline, and the
    custom_pipeline file routes each prompt to the code this package routes it to (the depth penalty included) and
    makes the same images."""
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline

    from helpers import run_stock

    routed = RoutedPixArtSigmaPipeline.from_pretrained(elastic / "routed")
    routed.set_progress_bar_config(disable=True)
    ours = routed(PROMPTS[:4], **_gen(routed.pipeline, [5, 6, 7, 8]))
    torch.save(ours.images, tmp_path / "ours.pt")
    script = f"""
import json, sys, torch
import diffusers.utils.dynamic_modules_utils as dynamic
dynamic.HF_MODULES_CACHE = {str(tmp_path / "modules")!r}  # diffusers copies the custom file there: keep it in the test
from diffusers import DiffusionPipeline
folder = {str(elastic / "routed")!r}
plain = DiffusionPipeline.from_pretrained(folder)
assert type(plain).__name__ == "PixArtSigmaPipeline" and len(plain.transformer.transformer_blocks) == 5
pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_routed_pixart", trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
prompts = {PROMPTS[:4]!r}
embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=300)
codes = pipe.route(embeds, mask)
out = pipe(prompts, num_inference_steps=2, guidance_scale=1.0, height=size, width=size, use_resolution_binning=False,
           max_sequence_length=16, output_type="pt", generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)])
ours = torch.load({str(tmp_path / "ours.pt")!r}, weights_only=True)
assert "diffusers_layerprune" not in sys.modules
print(json.dumps({{"codes": codes, "max_diff": float((out.images - ours).abs().max())}}))
"""
    done = run_stock(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == routed.route(PROMPTS[:4]) == ours.codes
    assert result["max_diff"] < 1e-5


def test_depth_penalty_moves_prompts_to_shallower_depths_only():
    """The penalty a router over given codes meets its budget with: plain argmax when within budget, otherwise the
    prompts move shallower, and the routed pipeline's routing applies the recorded penalty."""
    from diffusers_layerprune.routing.codes import FixedCodes
    from diffusers_layerprune.routing.record import CodeStats, Routing, RoutingRecord
    from diffusers_layerprune.routing.router import PromptRouter

    codes = FixedCodes([[0, 1, 2, 3, 4], [0, 1, 3, 4], [0, 1, 3]], 5)
    assert codes.expected_depths().tolist() == [5, 4, 3] and list(codes.parameters()) == []
    torch.manual_seed(0)
    router = PromptRouter(8, 3)
    pooled = torch.randn(32, 8)
    stats = [CodeStats(kept_layers=k) for k in codes.binary()]
    record = RoutingRecord(num_layers=5, budget=4.0, codes=stats, router=router.config(), transformer_sha256="x")
    plain = Routing(record, router).route(pooled)
    record.depth_penalty = 0.5
    penalised = Routing(record, router).route(pooled)
    depth = {0: 5, 1: 4, 2: 3}
    assert all(depth[int(p)] <= depth[int(q)] for p, q in zip(penalised, plain, strict=True))
    assert sum(depth[int(c)] for c in penalised) < sum(depth[int(c)] for c in plain)  # some prompts moved
    record.depth_penalty = 1e6  # every prompt at the shallowest depth
    assert set(Routing(record, router).route(pooled).tolist()) == {2}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget", "2"], "below the shallowest code (3 blocks)"),
        (["--budget", "5"], "full depth or more"),
        (["--budget", "4", "--num-codes", "2"], "--num-codes 2 but 3 codes are given"),
    ],
)
def test_bad_input_on_an_elastic_folder_is_one_line_and_writes_nothing(elastic, tmp_path, capsys, extra, message):
    from test_bad_input import cli_refused_leaving_unchanged

    args = ["route", "--model", str(elastic / "out"), "--prompts", str(elastic / "route_prompts.txt"), *extra,
            "--output", str(tmp_path / "out")]  # fmt: skip
    cli_refused_leaving_unchanged(capsys, args, message, elastic, tmp_path)


def test_num_codes_is_required_for_an_ordinary_model(tiny_pipeline_dir, tmp_path, capsys):
    args = ["route", "--model", str(tiny_pipeline_dir), "--budget", "3", "--output", str(tmp_path / "out")]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--num-codes K is required" in err and not (tmp_path / "out").exists()
