"""The flow-matching objective of train_distill (issue 30, point 2): the diffusers examples' flags on SD3, Flux and
Sana (tiny pipelines), their noise levels and loss weights against diffusers' own schedulers, and the flags a family
does not train with refused in one line before the teacher is loaded."""

import json
from types import SimpleNamespace

import pytest
import torch

from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.distill import CHECKPOINT_RECORD, DistillConfig
from diffusers_layerprune.families import get_family
from diffusers_layerprune.flow_objective import FlowSchedule, resolve_objective

from helpers import distill_args, run_train_distill, train_refused

FLOW_FAMILIES = ["sana", "sd3", "flux"]
PROMPTS = "a small red circle\na large blue square\na white cross\na black star\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Per family: teacher/, student/ (blocks 1 and 4 dropped) under one folder; plus PixArt; shared prompts."""
    from diffusers_layerprune.testing import TINY_BUILDERS

    root = tmp_path_factory.mktemp("flow")
    for family in [*FLOW_FAMILIES, "pixart"]:
        folder = root / family
        TINY_BUILDERS[family]().save_pretrained(folder / "teacher")
        argv = ["prune", "--model", str(folder / "teacher"), "--drop", "1,4", "--output", str(folder / "student")]
        assert cli(argv) == 0
        (folder / "prompts.txt").write_text(PROMPTS)
    return root


def family_args(work, family, out, steps=1):
    from diffusers_layerprune.testing import TINY_RESOLUTION

    args = distill_args(work / family, out, steps=steps, checkpointing_steps=1)
    return [*args, "--resolution", TINY_RESOLUTION[family], "--report_to", "none"]


def objective_args(**values):
    base = dict.fromkeys(
        ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "precondition_outputs", "timestep_shift")
    )
    return SimpleNamespace(**{**base, "guidance_scale": None, "student_model": "s", **values})


# ----------------------------------------------------------------------------------------------------------------
# Noise levels and weights, against diffusers
# ----------------------------------------------------------------------------------------------------------------


def schedule(family="sd3", scheduler_config=None, transformer_config=None, **values):
    args = objective_args(**values)
    resolve_objective(args, get_family(family), transformer_config or {})
    return FlowSchedule.from_args(
        args, get_family(family), scheduler_config or {"shift": 3.0}, transformer_config or {"patch_size": 2}
    )


def test_family_defaults_are_their_examples():
    """SD3's example trains logit-normal, preconditioned, on its scheduler's shifted table; Flux's and Sana's uniform
    and unshifted (so earlier runs train exactly as before)."""
    sd3 = schedule("sd3")
    assert (sd3.weighting_scheme, sd3.precondition_outputs, sd3.shift) == ("logit_normal", True, 3.0)
    assert (sd3.logit_mean, sd3.logit_std) == (0.0, 1.0) and not sd3.legacy
    for family in ("flux", "sana"):
        assert schedule(family).legacy


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none", "sigma_sqrt", "cosmap"])
def test_noise_levels_are_the_examples_table_entries(scheme):
    """u from diffusers' compute_density_for_timestep_sampling picks entry int(u * T) of FlowMatchEulerDiscrete-
    Scheduler's (shifted) sigmas, as train_dreambooth_lora_sd3.py does; a split of the global batch draws the same."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from diffusers_layerprune.flow_objective import _sigma_generator

    flow = schedule(
        weighting_scheme=scheme, timestep_shift="scheduler", logit_mean=0.3 if scheme == "logit_normal" else None
    )
    sigmas = flow.sigmas(5, 7, global_batch_size=64, offset=0, batch=64, hw=(8, 8))
    u = compute_density_for_timestep_sampling(
        scheme, 64, logit_mean=flow.logit_mean, logit_std=flow.logit_std, mode_scale=flow.mode_scale,
        generator=_sigma_generator(5, 7),
    )  # fmt: skip
    table = FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas
    torch.testing.assert_close(sigmas, table[(u * 1000).long()], rtol=1e-6, atol=1e-7)
    half = flow.sigmas(5, 7, global_batch_size=64, offset=32, batch=32, hw=(8, 8))
    assert torch.equal(half, sigmas[32:])
    assert sigmas.min() > 0 and sigmas.max() <= 1


def test_logit_normal_moves_noise_levels_as_its_mean_says():
    """The examples' orientation: u near 1 picks the table's low-noise end, so a positive logit mean trains on less
    noise; the scheduler's shift of 3 moves levels up."""
    plain = schedule(weighting_scheme="logit_normal", timestep_shift="none")
    draw = dict(global_batch_size=512, offset=0, batch=512, hw=(8, 8))
    high = schedule(weighting_scheme="logit_normal", timestep_shift="none", logit_mean=1.0)
    shifted = schedule(weighting_scheme="logit_normal", timestep_shift="scheduler")
    base = plain.sigmas(0, 0, **draw).mean()
    assert high.sigmas(0, 0, **draw).mean() < base - 0.1
    assert shifted.sigmas(0, 0, **draw).mean() > base + 0.1
    assert schedule(weighting_scheme="none", timestep_shift="2.5").shift == 2.5


def test_dynamic_shift_is_fluxpipelines_for_the_image_sequence_length():
    """With use_dynamic_shifting the levels are moved by FluxPipeline's mu for the packed sequence length (h/2 *
    w/2 tokens): the same sigma the scheduler gives when the pipeline sets its timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = dict(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        shift=3.0,
    )  # fmt: skip
    flow = schedule("flux", config, {"guidance_embeds": True}, timestep_shift="scheduler", weighting_scheme="none")
    for hw in ((64, 64), (128, 128)):  # 512 px and 1024 px Flux latents
        draw = dict(global_batch_size=4, offset=0, batch=4, hw=hw)
        unshifted = schedule("flux", config, {}, timestep_shift="none", weighting_scheme="none").sigmas(1, 2, **draw)
        sigmas = flow.sigmas(1, 2, **draw)
        scheduler = FlowMatchEulerDiscreteScheduler(**config)
        mu = calculate_shift(hw[0] // 2 * hw[1] // 2, 256, 4096, 0.5, 1.15)
        scheduler.set_timesteps(sigmas=unshifted.numpy(), mu=mu)
        torch.testing.assert_close(sigmas, scheduler.sigmas[:4].float(), rtol=1e-5, atol=1e-6)
    assert not flow.legacy


def test_loss_weights_and_preconditioning():
    """sigma_sqrt / cosmap weights are diffusers' compute_loss_weighting_for_sd3, applied per sample to the task and
    output losses (not to the feature loss); preconditioning compares x_t - sigma v with x0."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    from diffusers_layerprune.distill import KDWeights, kd_losses

    flow = schedule(weighting_scheme="sigma_sqrt", precondition_outputs=1, timestep_shift="none")
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    noisy, target, timesteps, weights, precondition = flow.batch(latents, noise, 0, 3, global_batch_size=4, offset=0)
    sigma = timesteps / 1000
    torch.testing.assert_close(weights, compute_loss_weighting_for_sd3("sigma_sqrt", sigma))
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - s) * latents + s * noise)
    assert torch.equal(target, latents)
    exact = noise - latents  # a perfect velocity reconstructs x0 exactly after preconditioning
    torch.testing.assert_close(precondition(exact), latents, atol=1e-5, rtol=1e-5)
    student, teacher = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    parts = kd_losses(student, teacher, target, {}, {}, [], KDWeights(), weights)
    per_sample = (student - teacher).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(parts["output"], (weights * per_sample).mean())
    assert not torch.allclose(parts["output"], per_sample.mean())


def test_guidance_scale_reaches_the_flux_guidance_embedding():
    from diffusers_layerprune.testing import build_tiny_flux_pipeline

    transformer = build_tiny_flux_pipeline().transformer
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    text = {
        "prompt_embeds": torch.randn(1, 5, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(1, 16, generator=g),
    }
    forward = get_family("flux").forward
    with torch.no_grad():
        default, same, other = (forward(transformer, latents, torch.tensor([500.0]), text, **kw) for kw in (
            {}, {"guidance": 3.5}, {"guidance": 6.0}))  # fmt: skip
    assert torch.equal(default, same) and not torch.allclose(default, other)


# ----------------------------------------------------------------------------------------------------------------
# End to end on each flow family
# ----------------------------------------------------------------------------------------------------------------

FLAGS = {
    "sana": ["--weighting_scheme", "mode", "--mode_scale", "0.5", "--timestep_shift", "scheduler"],
    "sd3": ["--weighting_scheme", "cosmap", "--precondition_outputs", "0", "--timestep_shift", "2"],
    "flux": ["--weighting_scheme", "logit_normal", "--logit_mean", "0.5", "--logit_std", "0.8", "--precondition_outputs",
             "1", "--timestep_shift", "scheduler", "--guidance_scale", "5.0"],
}  # fmt: skip
# what the runs record (the family's defaults filled in)
RECORDED = {
    "sana": {"weighting_scheme": "mode", "mode_scale": 0.5, "timestep_shift": "scheduler", "precondition_outputs": 0},
    "sd3": {"weighting_scheme": "cosmap", "precondition_outputs": 0, "timestep_shift": "2.0"},
    "flux": {"weighting_scheme": "logit_normal", "logit_mean": 0.5, "logit_std": 0.8, "precondition_outputs": 1,
             "timestep_shift": "scheduler", "guidance_scale": 5.0},
}  # fmt: skip
COMMON = ["--use_lora", "--rank", "2", "--lora_dropout", "0.1", "--optimizer", "prodigy", "--learning_rate", "1.0",
          "--prodigy_beta3", "0.9", "--prodigy_decouple", "false", "--prodigy_use_bias_correction", "false",
          "--prodigy_safeguard_warmup", "false"]  # fmt: skip


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_examples_flags_train_each_flow_family(work, family):
    """Every flag of the examples on each flow family: the run trains with them (its losses differ from the
    family's default objective at the same step, on the same data) and records them in each checkpoint's settings
    (a resume must match them) and in distill_config.json."""
    out, default = work / family / "flags", work / family / "default"
    run_train_distill(family_args(work, family, out) + FLAGS[family] + COMMON)
    run_train_distill(family_args(work, family, default) + ["--use_lora", "--rank", "2"])
    (flagged,), (plain,) = ([json.loads(x) for x in (o / "train_log.jsonl").read_text().splitlines()] for o in (
        out, default))  # fmt: skip
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in (flagged, plain))
    assert flagged["output"] != plain["output"]
    settings = json.loads((out / "checkpoint-1" / CHECKPOINT_RECORD).read_text())["settings"]
    recipe = DistillConfig.load(out)
    assert {k: settings[k] for k in RECORDED[family]} == RECORDED[family]
    assert {k: recipe.objective[k] for k in RECORDED[family]} == RECORDED[family]
    prodigy = {"prodigy_beta3": 0.9, "prodigy_decouple": False, "prodigy_use_bias_correction": False,
               "prodigy_safeguard_warmup": False}  # fmt: skip
    assert settings["optimizer"] == "prodigy" and {k: settings[k] for k in prodigy} == prodigy
    assert recipe.optimizer == {"name": "prodigy", **prodigy}
    assert settings["lora_dropout"] == recipe.lora_dropout == 0.1
    plain_recipe = DistillConfig.load(default)
    assert plain_recipe.optimizer == {"name": "adamw"} and plain_recipe.lora_dropout == 0.0


def test_resume_refuses_a_changed_objective(work, capsys):
    """A checkpoint trained with one weighting scheme does not continue under another (the resume settings)."""
    out = work / "sd3" / "resume"
    run_train_distill(family_args(work, "sd3", out))
    before = sorted(p.name for p in out.rglob("*"))
    train_refused(
        capsys,
        family_args(work, "sd3", out, steps=2) + ["--resume_from_checkpoint", "latest", "--weighting_scheme", "none"],
        "--weighting_scheme logit_normal, this run has none",
    )
    assert sorted(p.name for p in out.rglob("*")) == before


REFUSED = [
    # (family, extra arguments, what the one line says)
    ("pixart", ["--weighting_scheme", "logit_normal"], "--weighting_scheme applies to flow-matching models"),
    ("pixart", ["--timestep_shift", "scheduler"], "--timestep_shift applies to flow-matching models"),
    ("pixart", ["--precondition_outputs", "1"], "is a PixArt-Sigma model, trained on its DDPM schedule"),
    ("pixart", ["--guidance_scale", "3.5"], "--guidance_scale applies to guidance-distilled models"),
    ("sd3", ["--guidance_scale", "3.5"], "(Stable Diffusion 3 / 3.5) has none"),
    ("sana", ["--guidance_scale", "3.5"], "(Sana) has none"),
    ("sd3", ["--weighting_scheme", "none", "--logit_mean", "0.5"], "--logit_mean applies only with --weighting_scheme logit_normal (this run: none)"),
    ("flux", ["--mode_scale", "0.5"], "--mode_scale applies only with --weighting_scheme mode (this run: none)"),
    ("sana", ["--prodigy_beta3", "0.9"], "--prodigy_beta3 applies only with --optimizer prodigy"),
    ("flux", ["--optimizer", "prodigy", "--use_8bit_adam"], "does not go with --optimizer prodigy"),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(REFUSED)), ids=[f"{f}-{a[0][2:]}" for f, a, _ in REFUSED])
def test_flags_that_do_not_apply_are_refused_before_loading(work, case, capsys):
    family, extra, message = REFUSED[case]
    out = work / family / f"refused-{case}"
    train_refused(capsys, family_args(work, family, out) + extra, message)
    assert not out.exists()


def test_prodigy_without_its_package_names_the_extra(work, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prodigyopt" else real(name, *a))
    out = work / "sd3" / "no-prodigy"
    train_refused(
        capsys, family_args(work, "sd3", out) + ["--optimizer", "prodigy"], "pip install 'diffusers-layerprune[train]'"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--weighting_scheme", "uniform", "invalid choice: 'uniform'"),
        ("--optimizer", "sgd", "invalid choice: 'sgd'"),
        ("--logit_std", "0", "must be greater than 0"),
        ("--mode_scale", "2", "must be in [-1, 1.7519]"),
        ("--precondition_outputs", "2", "invalid choice: 2"),
        ("--timestep_shift", "-1", "must be none, scheduler or a number > 0"),
        ("--guidance_scale", "-1", "must be 0 or more"),
        ("--prodigy_beta3", "1", "must be in [0, 1)"),
        ("--prodigy_decouple", "maybe", "must be true or false"),
        ("--lora_dropout", "1", "must be in [0, 1)"),
    ],
)
def test_out_of_range_values_are_refused_by_the_parser(flag, value, message, capsys, tmp_path):
    from diffusers_layerprune.train_distill import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--student_model", "s", "--output_dir", str(tmp_path / "o"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
