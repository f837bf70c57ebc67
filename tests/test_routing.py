"""Prompt-routed depth (diffusers_layerprune.routing) on tiny random pipelines: the assignment's balance, the
routed pipeline's grouping and order, the budget, persistence, and every mistake a user can make at the CLI."""

import json
import shutil

import pytest
import torch

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.errors import LayerPruneError

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
SETTINGS = dict(num_codes=3, budget=4, steps=12, batch_size=4, teacher_steps=2, guidance_scale=1.0, seed=0)


def _gen(pipe, seeds, **extra):
    size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return dict(
        num_inference_steps=2,
        guidance_scale=1.0,
        height=size,
        width=size,
        use_resolution_binning=False,
        max_sequence_length=16,
        output_type="pt",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        **extra,
    )


@pytest.fixture(scope="module")
def routed():
    from diffusers_layerprune.routing import train_routed
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(6)
    pipe.set_progress_bar_config(disable=True)
    return train_routed(pipe, PROMPTS, model_name="tiny-random", **SETTINGS)


def test_sinkhorn_meets_both_marginals():
    from diffusers_layerprune.routing import sinkhorn

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 4, generator=g) * 3
    rows = torch.full((40,), 1 / 40)
    cols = torch.tensor([0.1, 0.2, 0.3, 0.4])
    plan = sinkhorn(scores, rows, cols, epsilon=0.1)
    assert torch.allclose(plan.sum(1), rows, atol=1e-6)
    assert torch.allclose(plan.sum(0), cols, atol=1e-4)
    assert (plan >= 0).all()


def test_budget_marginals_have_the_budget_as_mean_depth():
    from diffusers_layerprune.routing import budget_marginals

    depths = torch.tensor([4.0, 6.0, 9.0, 11.0])
    q = budget_marginals(depths, 7.5)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float((q * depths).sum()) == pytest.approx(7.5, abs=1e-4)
    assert (q > 0.05).all()  # as even as the constraint allows, not all mass on two codes


def test_budgeted_assignment_meets_the_batch_budget_at_least_score_cost():
    import itertools

    from diffusers_layerprune.routing import budgeted_assignment

    g = torch.Generator().manual_seed(1)
    depths = [4, 6, 9, 11]
    scores = torch.randn(7, 4, generator=g) + torch.tensor([0.0, 0.0, 1.0, 2.0])  # plain routing runs deep
    plain = scores.argmax(-1)
    assert sum(depths[c] for c in plain) / 7 > 7
    codes, lam = budgeted_assignment(scores, depths, 7)
    mean = sum(depths[c] for c in codes) / 7
    assert mean <= 7 and lam > 0
    assert all(depths[c] <= depths[p] for c, p in zip(codes, plain, strict=True))  # prompts only move shallower
    # no assignment that runs at most as many blocks keeps more router score (checked against all 4^7)
    best = float(scores[torch.arange(7), codes].sum())
    for other in itertools.product(range(4), repeat=7):
        if sum(depths[c] for c in other) <= mean * 7 + 1e-9:
            assert float(scores[torch.arange(7), torch.tensor(other)].sum()) <= best + 1e-9
    # a batch within budget is routed as usual; the shallowest code is the lowest reachable budget
    assert torch.equal(budgeted_assignment(scores, depths, 11)[0], plain)
    assert set(budgeted_assignment(scores, depths, 4)[0].tolist()) == {0}
    with pytest.raises(LayerPruneError, match="below the shallowest code"):
        budgeted_assignment(scores, depths, 3.5)


def test_routed_pipeline_enforces_the_budget_on_a_batch(routed):
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline

    routing = _two_code_routing(routed)
    routing.record.codes[2].kept_layers = [0, 1, 2, 3, 4]
    wrapper = RoutedPixArtSigmaPipeline(routed.pipeline, routing)  # codes of 3, 4 and 5 blocks
    depth = {0: 3, 1: 4, 2: 5}
    plain = wrapper.route(PROMPTS)
    assert wrapper.route(PROMPTS, enforce_budget=5) == plain  # the deepest code: nothing to enforce
    for budget in (4.5, 3.5, 3.25, 3):
        codes = wrapper.route(PROMPTS, enforce_budget=budget)
        assert sum(depth[c] for c in codes) / len(codes) <= budget
    assert wrapper.route(PROMPTS, enforce_budget=0.5) == [0] * len(PROMPTS)  # a fraction of the 6 blocks: 3
    out = wrapper(PROMPTS[:4], enforce_budget=3, **_gen(routed.pipeline, [1, 2, 3, 4]))
    assert out.codes == [0, 0, 0, 0] and out.images.shape[0] == 4
    with pytest.raises(LayerPruneError, match="below the shallowest code"):
        wrapper.route(PROMPTS, enforce_budget=2)
    with pytest.raises(LayerPruneError, match="not both"):
        wrapper(PROMPTS[:2], code=1, enforce_budget=True, **_gen(routed.pipeline, [1, 2]))


def test_hard_gates_compute_what_skipping_computes(tiny_transformer, transformer_inputs):
    from diffusers_layerprune.blocks import skip_blocks
    from diffusers_layerprune.routing import gated_blocks

    mask = torch.tensor([[1.0, 0, 1, 1, 0, 1], [0.0, 1, 1, 1, 1, 1]])
    with torch.no_grad(), gated_blocks(tiny_transformer) as gates:
        gates.mask = mask
        gated = tiny_transformer(**transformer_inputs).sample
    for b, skipped in enumerate(([1, 4], [0])):
        one = {k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in transformer_inputs.items()}
        with torch.no_grad(), skip_blocks(tiny_transformer, skipped):
            alone = tiny_transformer(**one).sample
        assert torch.allclose(gated[b : b + 1], alone, atol=1e-5)


def test_budget_met_on_training_prompts(routed):
    record = routed.routing.record
    assert record.num_codes == 3 and record.num_layers == 6
    assert record.mean_blocks <= 4 + 1e-9
    codes = routed.route(PROMPTS, max_sequence_length=300)  # the length train_routed encodes with (the default)
    depths = [len(record.codes[c].kept_layers) for c in codes]
    assert sum(depths) / len(depths) == pytest.approx(record.mean_blocks)
    shares = [codes.count(k) / len(codes) for k in range(3)]
    assert shares == pytest.approx([c.share for c in record.codes])
    assert all(len(c.closest_prompts) >= 1 and set(c.closest_prompts) <= set(PROMPTS) for c in record.codes)


def _two_code_routing(routed):
    """The fitted routing with two codes of different depths (a tiny random model may fit equal ones)."""
    import copy

    routing = copy.deepcopy(routed.routing)
    routing.record.codes[0].kept_layers = [0, 2, 5]
    routing.record.codes[1].kept_layers = [1, 2, 3, 4]
    return routing


def test_grouped_generation_matches_per_prompt_and_keeps_order(routed):
    from diffusers_layerprune.blocks import skip_blocks
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline

    pipe = routed.pipeline
    codes = [0, 1, 0, 1, 1]
    prompts = PROMPTS[:5]
    wrapper = RoutedPixArtSigmaPipeline(pipe, _two_code_routing(routed))
    # the assignment is given: this test is about grouping and order (routing itself is tested above)
    wrapper.routing.route = lambda pooled: torch.tensor(codes[: len(pooled)])
    seeds = [11, 12, 13, 14, 15]
    out = wrapper(prompts, **_gen(pipe, seeds))
    assert out.codes == codes
    assert out.images.shape[0] == 5
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        alone = wrapper([prompt], code=codes[i], **_gen(pipe, [seed])).images[0]
        assert torch.allclose(out.images[i], alone, atol=1e-5), i
    # and a prompt alone is what the stock pipeline gives with the code's other blocks skipped
    with skip_blocks(pipe.transformer, wrapper.skipped_layers(1)):
        stock = pipe(prompts[1], **_gen(pipe, [seeds[1]])).images[0]
    assert torch.allclose(out.images[1], stock, atol=1e-5)
    # a forced code for all prompts runs that code's depth: different images than the routed ones for code 1 rows
    forced = wrapper(prompts, code=0, **_gen(pipe, seeds)).images
    assert torch.allclose(forced[0], out.images[0], atol=1e-5)
    assert not torch.allclose(forced[1], out.images[1], atol=1e-4)


def test_save_load_round_trip_and_stock_load(routed, tmp_path):
    from diffusers import DiffusionPipeline, PixArtSigmaPipeline

    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline

    folder = routed.save_pretrained(tmp_path / "routed")
    assert (folder / "routing.json").is_file() and (folder / "router.safetensors").is_file()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline" and index["transformer"][0] == "diffusers"

    loaded = RoutedPixArtSigmaPipeline.from_pretrained(folder)
    assert loaded.routing.record == routed.routing.record
    assert loaded.route(PROMPTS) == routed.route(PROMPTS)
    a = routed(PROMPTS[:3], **_gen(routed.pipeline, [1, 2, 3])).images
    b = loaded(PROMPTS[:3], **_gen(loaded.pipeline, [1, 2, 3])).images
    assert torch.equal(a, b)

    stock = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(stock, PixArtSigmaPipeline)
    assert len(stock.transformer.transformer_blocks) == 6  # the shared, full-depth weights
    for (name, x), (_, y) in zip(
        stock.transformer.state_dict().items(), routed.pipeline.transformer.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


def test_custom_pipeline_file_runs_the_routed_model_with_stock_diffusers(routed, tmp_path, monkeypatch):
    import sys

    import diffusers.utils.dynamic_modules_utils as dynamic
    from diffusers import DiffusionPipeline

    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline

    # diffusers copies the file into its modules cache and puts that on sys.path: keep both inside the test
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = RoutedPixArtSigmaPipeline(routed.pipeline, _two_code_routing(routed)).save_pretrained(tmp_path / "r")
    assert (folder / "pipeline_routed_pixart.py").is_file()
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers asks before running the file
        DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_routed_pixart")
    remote = DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_routed_pixart", trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    assert type(remote).__name__ == "PixArtSigmaRoutedPipeline"
    ours = RoutedPixArtSigmaPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    assert remote.route(*ours.encode(PROMPTS)) == ours.route(PROMPTS)
    a = ours(PROMPTS[:4], **_gen(ours.pipeline, [5, 6, 7, 8]))
    b = remote(PROMPTS[:4], **_gen(remote, [5, 6, 7, 8]))
    assert a.codes == b.codes and torch.allclose(a.images, b.images, atol=1e-6)
    for code in (0, 1):  # each code skips the same blocks in both
        a = ours(PROMPTS[:2], code=code, **_gen(ours.pipeline, [1, 2])).images
        b = remote(PROMPTS[:2], code=code, **_gen(remote, [1, 2])).images
        assert torch.allclose(a, b, atol=1e-6), code
    assert type(DiffusionPipeline.from_pretrained(folder)).__name__ == "PixArtSigmaPipeline"  # without the option


def test_router_from_another_model_is_refused(routed, tmp_path):
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline, load_routing
    from diffusers_layerprune.testing import save_tiny_pixart_pipeline

    folder = routed.save_pretrained(tmp_path / "routed")
    other = save_tiny_pixart_pipeline(tmp_path / "other", num_layers=6, seed=5)
    with pytest.raises(LayerPruneError, match="another model"):
        RoutedPixArtSigmaPipeline.from_pretrained(other, routing=folder)
    deeper = save_tiny_pixart_pipeline(tmp_path / "deeper", num_layers=8)
    from diffusers_layerprune.modeling import load_pipeline

    with pytest.raises(LayerPruneError, match="6-block model"):
        load_routing(folder, load_pipeline(deeper).transformer)


def test_finetune_trains_shared_weights_with_hard_routing():
    from diffusers_layerprune.routing import train_routed
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(6)
    pipe.set_progress_bar_config(disable=True)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    routed = train_routed(pipe, PROMPTS, model_name="tiny-random", **{**SETTINGS, "steps": 3}, finetune_steps=3)
    changed = [k for k, v in pipe.transformer.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "fine-tuning changed no weight"
    history = routed.routing.record.training["finetune_history"]
    assert history and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    # the record's fingerprint is that of the fine-tuned weights, so the routing loads with them
    from diffusers_layerprune.routing.record import transformer_fingerprint

    assert routed.routing.record.transformer_sha256 == transformer_fingerprint(pipe.transformer)
    # a second fine-tuning of the same weights (the benchmark fine-tunes one pipeline again and again) trains too,
    # and leaves the parameters' requires_grad as it found them
    from diffusers_layerprune.routing.train import RoutingSettings, finetune_shared_weights, teacher_latents

    flags = [p.requires_grad for p in pipe.transformer.parameters()]
    settings = RoutingSettings(**{**SETTINGS, "finetune_steps": 2})
    embeds, masks, latents = teacher_latents(pipe, PROMPTS, settings, {"max_sequence_length": 16, "guidance_scale": 1.0,
                                             "num_inference_steps": 2, "resolution": 16}, log=lambda *a: None)  # fmt: skip
    data = {"embeds": embeds, "masks": masks, "latents": latents}
    kept = [c.kept_layers for c in routed.routing.record.codes]
    assignment = torch.arange(len(PROMPTS)) % len(kept)
    again = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    finetune_shared_weights(pipe, kept, assignment, data, settings, log=lambda *a: None)
    assert any(not torch.equal(v, again[k]) for k, v in pipe.transformer.state_dict().items())
    assert [p.requires_grad for p in pipe.transformer.parameters()] == flags


# ---------------------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("route")
    shutil.copytree(tiny_pipeline_dir, root / "model")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


FAST = ["--steps", "3", "--batch-size", "4", "--num-prompts", "6"]


def test_cli_route_writes_routed_folder(ws, tmp_path, capsys):
    out = tmp_path / "routed"
    args = ["route", "--model", str(ws / "model"), "--num-codes", "2", "--budget", "0.5", "--prompts",
            str(ws / "prompts.txt"), *FAST, "--output", str(out)]  # fmt: skip
    assert cli(args) == 0
    text = capsys.readouterr().out
    assert "code 0:" in text and "code 1:" in text and "closest:" in text
    record = json.loads((out / "routing.json").read_text())
    assert record["budget"] == 3 and record["mean_blocks"] <= 3
    assert "/tmp" not in (out / "routing.json").read_text()  # public names only, no local paths
    # push publishes it with the routing section in the card
    assert cli(["push", str(out), "--repo-id", "me/routed", "--dry-run"]) == 0
    card = (out / "README.md").read_text()
    assert "## Prompt routing" in card and "RoutedPixArtSigmaPipeline" in card
    assert "A prompt-routed version of" in card and "## What was removed" not in card  # full-depth shared weights
    assert "routing.json" in capsys.readouterr().out


def test_routed_card_says_what_the_folder_is_and_push_publishes_it_without_local_paths(ws, tmp_path):
    import yaml

    from diffusers_layerprune.hub import push_pipeline
    from diffusers_layerprune.routing import read_routing_record
    from diffusers_layerprune.upload import upload_plan

    out = tmp_path / "routed"
    args = ["route", "--model", str(ws / "model"), "--num-codes", "2", "--budget", "4", "--prompts",
            str(ws / "prompts.txt"), *FAST, "--output", str(out)]  # fmt: skip
    assert cli(args) == 0
    result = push_pipeline(out, "me/routed", dry_run=True)
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---", 2)[1])
    assert {"prompt-routing", "dynamic-depth", "diffusers-layerprune"} <= set(meta["tags"])
    assert "pruned" not in meta["tags"] and "layer-pruning" not in meta["tags"]  # full-depth shared weights
    record = read_routing_record(out)
    assert f"**{record.mean_blocks:.2f} of 6**" in card and f"budget {record.budget:g}" in card
    for k, code in enumerate(record.codes):  # per code: blocks run, skipped blocks, share
        assert f"| {k} | {len(code.kept_layers)} | {record.skipped_layers(k)} | {code.share:.1%} |" in card
    # the three ways to load it: routed with the plugin, routed with custom_pipeline (and what to trust), full depth
    assert 'RoutedPixArtSigmaPipeline.from_pretrained("me/routed")' in card
    assert 'custom_pipeline="pipeline_routed_pixart", trust_remote_code=True' in card and "execute" in card
    assert 'DiffusionPipeline.from_pretrained("me/routed", dtype' in card and "all 6 blocks" in card
    assert "DiT-Pruner" not in card and "Not All Prompts Are Made Equal" in card
    sent = {path for path, _ in result["files"]}
    assert {"README.md", "routing.json", "router.safetensors", "pipeline_routed_pixart.py", "model_index.json"} <= sent
    for rel, _, _ in upload_plan(out):  # nothing uploaded names this machine's folders
        data = (out / rel).read_bytes()
        assert str(tmp_path).encode() not in data and str(ws).encode() not in data, rel
    with pytest.raises(LayerPruneError, match="without --transformer-only"):
        push_pipeline(out, "me/routed", dry_run=True, transformer_only=True)


def test_cli_route_on_pruned_model_counts_pruned_blocks(ws, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    assert cli(["prune", "--model", str(ws / "model"), "--drop", "1,4", "--output", str(pruned)]) == 0
    out = tmp_path / "routed"
    args = ["route", "--model", str(pruned), "--num-codes", "2", "--budget", "3", "--prompts",
            str(ws / "prompts.txt"), *FAST, "--output", str(out)]  # fmt: skip
    assert cli(args) == 0
    assert "budget counts blocks of the pruned model" in capsys.readouterr().out
    record = json.loads((out / "routing.json").read_text())
    assert record["num_layers"] == 4 and record["kept_layers"] == [0, 2, 3, 5] and record["source_num_layers"] == 6
    assert cli(["push", str(out), "--repo-id", "me/pruned-routed", "--dry-run"]) == 0
    card = (out / "README.md").read_text()
    head = card.split("---", 2)[1]
    assert "- prompt-routing" in head and "- pruned" in head  # both: routed over a pruned model
    assert "## What was removed" in card and "itself depth-pruned to 4 of 6 blocks" in card


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-codes", "0", "--budget", "3"], "--num-codes must be a whole number >= 1"),
        (["--num-codes", "2", "--budget", "0"], "must be positive"),
        (["--num-codes", "2", "--budget", "6"], "full depth or more"),
        (["--num-codes", "2", "--budget", "7.5"], "full depth or more"),
        (["--num-codes", "2", "--budget", "0.5", "--min-blocks", "4"], "below the smallest code"),
        (["--num-codes", "2", "--budget", "nan"], "finite"),
    ],
)
def test_cli_route_bad_input(ws, tmp_path, capsys, extra, message):
    from test_bad_input import cli_refused_leaving_unchanged

    args = ["route", "--model", str(ws / "model"), "--prompts", str(ws / "prompts.txt"), *extra,
            "--output", str(tmp_path / "out")]  # fmt: skip
    cli_refused_leaving_unchanged(capsys, args, message, ws, tmp_path)


def test_cli_push_refuses_router_from_another_model(ws, tmp_path, capsys):
    from test_bad_input import snapshot

    out = tmp_path / "routed"
    args = ["route", "--model", str(ws / "model"), "--num-codes", "2", "--budget", "4", "--prompts",
            str(ws / "prompts.txt"), *FAST, "--output", str(out)]  # fmt: skip
    assert cli(args) == 0
    from diffusers_layerprune.testing import save_tiny_pixart_pipeline

    other = save_tiny_pixart_pipeline(tmp_path / "other", num_layers=6, seed=7)
    for name in ("routing.json", "router.safetensors"):
        shutil.copy(out / name, other / name)
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert cli(["push", str(other), "--repo-id", "me/other", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another model" in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("marginals", ["budget", "none"])
def test_other_marginals_train_and_meet_the_budget(marginals):
    from diffusers_layerprune.routing import train_routed
    from diffusers_layerprune.testing import build_tiny_pixart_pipeline

    pipe = build_tiny_pixart_pipeline(6)
    pipe.set_progress_bar_config(disable=True)
    routed = train_routed(pipe, PROMPTS, model_name="tiny-random", **{**SETTINGS, "steps": 4}, marginals=marginals)
    record = routed.routing.record
    assert record.mean_blocks <= 4 + 1e-9
    assert record.training["settings"]["marginals"] == marginals
    assert sum(c.share for c in record.codes) == pytest.approx(1.0)


@pytest.mark.slow
def test_finetune_script_one_and_two_processes_train_alike(ws, tmp_path):
    """The accelerate entry point: one process in-process, then two gloo processes under accelerate launch; both
    start from the same weights and draw the same global batches, so their losses agree and the saved folders load
    as routed pipelines with their new weights' fingerprint."""
    import subprocess

    from diffusers_layerprune.launch import LaunchSettings, accelerate_command
    from diffusers_layerprune.routing import RoutedPixArtSigmaPipeline
    from diffusers_layerprune.routing.finetune import main as finetune

    routed = tmp_path / "routed"
    args = ["route", "--model", str(ws / "model"), "--num-codes", "2", "--budget", "4", "--prompts",
            str(ws / "prompts.txt"), *FAST, "--output", str(routed)]  # fmt: skip
    assert cli(args) == 0
    common = ["--routed", str(routed), "--prompts", str(ws / "prompts.txt"), "--num-prompts", "6", "--steps", "2",
              "--batch-size", "4"]  # fmt: skip
    assert finetune([*common, "--output", str(tmp_path / "one")]) == 0
    cmd, env = accelerate_command(
        "diffusers_layerprune.routing.finetune",
        [*common, "--output", str(tmp_path / "two")],
        LaunchSettings(num_processes=2),
    )
    import os

    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one = RoutedPixArtSigmaPipeline.from_pretrained(tmp_path / "one")
    two = RoutedPixArtSigmaPipeline.from_pretrained(tmp_path / "two")
    h1, h2 = (r.routing.record.training["finetune_history"] for r in (one, two))
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [0, 1]
    for a, b in zip(h1, h2, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert two.routing.record.training["finetune"]["num_processes"] == 2
    before = RoutedPixArtSigmaPipeline.from_pretrained(routed).pipeline.transformer.state_dict()
    after = one.pipeline.transformer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert one.routing.record.codes == two.routing.record.codes  # the router and codes are not changed


def test_cli_route_refuses_other_families(ws, tmp_path, capsys):
    args = ["route", "--model", "tiny-random-sana", "--num-codes", "2", "--budget", "0.5", "--prompts",
            str(ws / "prompts.txt"), *FAST, "--output", str(tmp_path / "out")]  # fmt: skip
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "supports PixArt-Sigma pipelines for now, not Sana" in err, err
    assert not (tmp_path / "out").exists()
