"""A parent's ControlNet on its pruned model: ``layerprune adapt-controlnet``.

The contract: the stock ControlNet pipeline on the pruned folder with the rewritten ControlNet, in a fresh process that
never imports this package, gives the images of the parent + the original ControlNet with the removed blocks skipped
(every kept block receiving the residual its source block received in the parent): max abs difference <= 1e-4 on tiny
fp32 models, 2 steps. Where no exact remap exists the command refuses in one line, writing nothing.
"""

import hashlib
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffusers_layerprune.adapters.controlnet import plan_controlnet, residual_routing, residuals_as_in_parent
from diffusers_layerprune.blocks import skip_blocks
from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.errors import LayerPruneError
from diffusers_layerprune.families import get_family
from diffusers_layerprune.testing import tiny_controlnet_images

from helpers import run_stock

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# The planner, against a simulation of the stock arithmetic (no weights): many selections, every ControlNet depth
# ---------------------------------------------------------------------------------------------------------------


def _simulate(family, plans, kept_layers, depths, config):
    """What each kept block receives from the rewritten chain under the stock arithmetic on the pruned depth."""
    layout = family.controlnet
    kept = family.split(kept_layers, depths)
    received = []
    for s, plan in enumerate(plans):
        states, state = [], -1
        for source, identity in zip(plan.blocks, plan.identity, strict=True):
            if identity:
                assert source == max(state, 0)
            else:
                assert source == state + 1  # a copy of the next source block, run on its own input
                state = source
            states.append(state)
        got = []
        for i in range(len(kept[s])):
            q = None if plan.length == 0 else layout.sample_read(s, i, len(kept[s]), plan.length, config)
            if q is None or plan.projections[q] is None:
                got.append(None)
            else:
                assert plan.projections[q] == states[q]  # the projection of the block whose output it reads
                got.append(states[q])
        received.append(got)
        later = any(p.length for p in plans[s + 1 :])
        if later:
            assert states[-1] == int(config[layout.stacks[s].depth_key]) - 1  # the next stack starts where it did
    return received


# Families whose stock arithmetic reads every ControlNet position up to the last one it reads (no room to run a
# ControlNet block whose sample no kept block reads); SD3's int(i / (n / samples)) skips positions when samples > n.
READS_EVERY_POSITION = {"flux": True, "sana": True, "sd3": False}


def _exact_remap_exists(family, kept_layers, depths, config) -> bool:
    """The theory of docs/controlnet.md: a kept block the stock forward gives no residual at any ControlNet depth
    must have had none in the parent, and the samples the kept blocks read must start at 0 and, where the arithmetic
    reads every position, never skip one."""
    layout = family.controlnet
    for s, stack in enumerate(residual_routing(family, kept_layers, depths, config)):
        n = len(stack)
        for i, row in enumerate(stack):
            never = all(layout.sample_read(s, i, n, k, config) is None for k in range(1, 4 * n * n + 8))
            if row["parent"] is not None and never:
                return False
        reads = [row["parent"] for row in stack if row["parent"] is not None]
        if reads and reads[0] != 0:
            return False
        if READS_EVERY_POSITION[family.name] and any(b - a > 1 for a, b in zip(reads, reads[1:], strict=False)):
            return False
    return True


@pytest.mark.parametrize("family_name", ["flux", "sd3", "sana"])
def test_plans_feed_every_kept_block_its_parent_residual(family_name):
    family = get_family(family_name)
    rng = random.Random(0)
    planned = refused = 0
    for _ in range(400):
        depths = [rng.randint(1, 8), rng.randint(0, 12)] if family_name == "flux" else [rng.randint(2, 12)]
        total = sum(depths)
        kept = sorted(rng.sample(range(total), rng.randint(1, total - 1))) if total > 1 else [0]
        counts = [rng.randint(1, max(1, d)) for d in depths]
        if family_name == "flux" and depths[1] and rng.random() < 0.3:
            counts[1] = 0  # a ControlNet without single blocks (most published ones)
        config = {stack.depth_key: c for stack, c in zip(family.controlnet.stacks, counts, strict=True)}
        # XLabs layout: the pipeline repeats the double samples (i % samples), so the parent's reads wrap around;
        # the theory below is for the usual layout, the simulation checks both
        repeat = family_name == "flux" and rng.random() < 0.3
        if repeat:
            config["conditioning_embedding_channels"] = 16
        parent = [[row["parent"] for row in stack] for stack in residual_routing(family, kept, depths, config)]
        try:
            plans = plan_controlnet(family, kept, depths, config)
        except LayerPruneError as error:
            assert "\n" not in str(error)
            if not repeat:
                assert not _exact_remap_exists(family, kept, depths, config), (kept, depths, config, str(error))
            refused += 1
            continue
        assert repeat or _exact_remap_exists(family, kept, depths, config)
        assert _simulate(family, plans, kept, depths, config) == parent
        planned += 1
    assert planned > 100 and refused > 10  # both branches really exercised


# ---------------------------------------------------------------------------------------------------------------
# Exactness with the stock pipeline in a fresh process
# ---------------------------------------------------------------------------------------------------------------

CASES = {
    # family: (pipeline builder args, ControlNet depths, ControlNet config, removed blocks)
    "flux": (dict(num_layers=4, num_single_layers=8), (2, 3), {}, [1, 8, 11]),
    "sd3": (dict(num_layers=6, dual_attention_layers=(0, 1, 2)), (3,), {"dual_attention_layers": (0, 1)}, [1]),
    "sana": (dict(num_layers=6), (3,), {}, [3, 5]),  # blocks 1-3 read samples 0-2; block 3 removed: the tail
}

# Generation settings of the tiny pipelines: (pixel size, extra call arguments).
CALLS = {
    "flux": (16, {}),
    "sd3": (16, {}),
    "sana": (32, {"use_resolution_binning": False, "clean_caption": False}),
}

FRESH = textwrap.dedent(
    """
    import json, sys, torch, diffusers
    pruned, adapted, out, model_class, pipeline_class, size, extra = sys.argv[1:8]
    controlnet = getattr(diffusers, model_class).from_pretrained(adapted)
    pipe = getattr(diffusers, pipeline_class).from_pretrained(pruned, controlnet=controlnet)
    size = int(size)
    control = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    images = pipe("a red circle", control_image=control, num_inference_steps=2, height=size, width=size,
                  max_sequence_length=16, output_type="pt", generator=torch.Generator().manual_seed(0),
                  **json.loads(extra)).images
    assert not any(name.startswith("diffusers_layerprune") for name in sys.modules)
    torch.save(images, out)
    """
)


@pytest.fixture(scope="module", params=sorted(CASES))
def world(request, tmp_path_factory):
    """A saved tiny parent pipeline, its ControlNet and the pruned folder `layerprune prune` wrote."""
    from diffusers_layerprune import testing

    name = request.param
    args, depths, config, removed = CASES[name]
    root = tmp_path_factory.mktemp(f"controlnet-{name}")
    parent = testing.TINY_BUILDERS[name](**args)
    controlnet = testing.build_tiny_controlnet(parent.transformer, *depths, **config)
    parent.save_pretrained(root / "parent")
    controlnet.save_pretrained(root / "controlnet")
    drop = ",".join(map(str, removed))
    assert cli(["prune", "--model", str(root / "parent"), "--drop", drop, "--output", str(root / "pruned")]) == 0
    return dict(name=name, root=root, parent=parent, controlnet=controlnet, removed=removed)


@pytest.mark.slow  # a fresh stock process per family
def test_stock_pipeline_with_adapted_controlnet_matches_parent(world, capsys):
    import diffusers

    root, family = world["root"], get_family(world["name"])
    layout = family.controlnet
    pipe_class = getattr(diffusers, layout.pipeline_class)
    parent, controlnet = world["parent"], world["controlnet"]
    depths = family.stack_depths(parent.transformer.config)
    kept = [i for i in range(sum(depths)) if i not in world["removed"]]

    out = root / "adapted"
    assert (
        cli(["adapt-controlnet", str(root / "controlnet"), "--pruned", str(root / "pruned"), "--output", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "another residual than in the parent" in printed and f"{layout.model_class}.from_pretrained" in printed
    record = json.loads((out / "controlnet_adaptation.json").read_text())  # what it came from, beside the output
    assert record["kept_layers"] == kept and record["source_controlnet"] == str(root / "controlnet")
    assert list(record["source_sha256"]) == ["diffusion_pytorch_model.safetensors"]

    with torch.no_grad():
        reference_pipe = pipe_class(**parent.components, controlnet=controlnet)
        with skip_blocks(reference_pipe.transformer, world["removed"]):
            with residuals_as_in_parent(controlnet, family, kept, depths):
                reference = tiny_controlnet_images(reference_pipe)
            stock = tiny_controlnet_images(pipe_class(**parent.components, controlnet=controlnet))  # today's misrouting
    assert (stock - reference).abs().max() > 1e-2  # the bug being fixed is there

    images = root / "images.pt"
    done = run_stock(
        FRESH, args=[root / "pruned", out, images, layout.model_class, layout.pipeline_class,
                     CALLS[world["name"]][0], json.dumps(CALLS[world["name"]][1])],
        cwd=root, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    adapted = torch.load(images, weights_only=True)
    assert adapted.shape == reference.shape
    assert (adapted - reference).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------------------


def _tree(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def flux_inputs(tmp_path_factory):
    """A tiny Flux parent, its pruned folder, and ControlNets that do not fit it."""
    from diffusers_layerprune import testing

    root = tmp_path_factory.mktemp("controlnet-bad")
    parent = testing.build_tiny_flux_pipeline(4, 8)
    parent.save_pretrained(root / "parent")
    testing.build_tiny_controlnet(parent.transformer, 2, 3).save_pretrained(root / "controlnet")
    testing.build_tiny_controlnet(parent.transformer, 2, 3, num_attention_heads=4).save_pretrained(root / "wide")
    sd3 = testing.build_tiny_sd3_pipeline(6)
    testing.build_tiny_controlnet(sd3.transformer, 3).save_pretrained(root / "sd3_controlnet")
    assert cli(["prune", "--model", str(root / "parent"), "--drop", "1,8", "--output", str(root / "pruned")]) == 0
    assert cli(["prune", "--model", str(root / "parent"), "--drop", "0,1", "--output", str(root / "no_first")]) == 0
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("mine")
    return root


@pytest.mark.parametrize(
    "controlnet, pruned, output, words",
    [
        ("sd3_controlnet", "pruned", "out", "SD3ControlNetModel"),  # a ControlNet of another family
        ("wide", "pruned", "out", "num_attention_heads=4"),  # of another width
        ("controlnet", "parent", "out", "no kept-block record"),  # not a pruned folder
        ("controlnet", "pruned", "taken", "taken"),  # the output exists
        ("controlnet", "pruned", "pruned/out", "inside"),  # the output lies inside an input
        ("controlnet", "no_first", "out", "no exact ControlNet remap"),  # a pruning no ControlNet can follow
        ("missing", "pruned", "out", "missing"),  # no such ControlNet
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(flux_inputs, capsys, controlnet, pruned, output, words):
    root = flux_inputs
    before = _tree(root)
    args = ["adapt-controlnet", str(root / controlnet), "--pruned", str(root / pruned), "--output", str(root / output)]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert _tree(root) == before


def test_help_and_mistyped_paths_answer_before_torch_loads(tmp_path):
    """`adapt-controlnet --help` and mistyped paths end before torch or diffusers load (an instant answer)."""
    (tmp_path / "pruned").mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        from diffusers_layerprune.cli import main
        missing, folder, out = {str(tmp_path / "missing")!r}, {str(tmp_path / "pruned")!r}, {str(tmp_path / "out")!r}
        codes = [
            main(["adapt-controlnet", "--help"]),
            main(["adapt-controlnet", missing, "--pruned", folder, "--output", out]),
            main(["adapt-controlnet", folder, "--pruned", missing, "--output", out]),
        ]
        print(codes, sorted(m for m in ("torch", "diffusers") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 2, 2] []"
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert "ControlNet" in errors[0] and "does not exist" in errors[0] and "is not a folder" in errors[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
