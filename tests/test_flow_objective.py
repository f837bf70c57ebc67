"""The flow-matching objective of train_distill (issue 30, point 2): the diffusers examples' flags on SD3, Flux and
Sana (tiny pipelines), their noise levels and loss weights against diffusers' own schedulers, and the flags a family
does not train with refused in one line before the teacher is loaded."""

import json
from types import SimpleNamespace

import pytest
import torch

from diffusers_layerprune.checkpoints import CHECKPOINT_RECORD
from diffusers_layerprune.cli import main as cli
from diffusers_layerprune.distill import DistillConfig, empty_prompt_rows
from diffusers_layerprune.families import encode_text, get_family
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
TINY_LATENT = {"sana": 16, "sd3": 8, "flux": 8}  # latent side at the tiny pipelines' resolution
COMMON = ["--use_lora", "--rank", "2", "--lora_dropout", "0.1", "--optimizer", "prodigy", "--learning_rate", "1.0",
          "--prodigy_beta3", "0.9", "--prodigy_decouple", "false", "--prodigy_use_bias_correction", "false",
          "--prodigy_safeguard_warmup", "false"]  # fmt: skip


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_examples_flags_train_each_flow_family(work, family, monkeypatch):
    """Every flag of the examples on each flow family: the teacher and the student get the noise levels the
    objective draws (and Flux the guidance asked for), and the settings are recorded in each checkpoint (a resume must
    match them) and in distill_config.json."""
    import diffusers

    out = work / family / "flags"
    stock = getattr(diffusers, get_family(family).transformer_class)
    real, calls = stock.forward, []

    def spy(self, *args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("timestep", "guidance")})
        return real(self, *args, **kwargs)

    import diffusers_layerprune.distill as distill

    real_losses, weighted = distill.kd_losses, []

    def losses_spy(*args):
        weighted.append(args[7])  # the per-sample loss weights
        return real_losses(*args)

    monkeypatch.setattr(stock, "forward", spy)
    monkeypatch.setattr(distill, "kd_losses", losses_spy)
    run_train_distill(family_args(work, family, out) + FLAGS[family] + COMMON)
    monkeypatch.setattr(stock, "forward", real)
    # the levels the objective draws for step 0's batch of 2 (teacher and student forwards alike)
    values = {k: (float(v) if k not in ("weighting_scheme", "timestep_shift") else v) for k, v in zip(
        (f[2:] for f in FLAGS[family][::2]), FLAGS[family][1::2], strict=True)}  # fmt: skip
    values["precondition_outputs"] = int(values.get("precondition_outputs", RECORDED[family]["precondition_outputs"]))
    values["timestep_shift"] = RECORDED[family]["timestep_shift"]
    teacher = work / family / "teacher"
    config = json.loads((teacher / "transformer" / "config.json").read_text())
    flow = schedule(family, json.loads((teacher / "scheduler" / "scheduler_config.json").read_text()), config, **values)
    hw = TINY_LATENT[family]
    expected = flow.sigmas(0, 0, global_batch_size=2, offset=0, batch=2, hw=(hw, hw)) * 1000
    unit = 1000.0 if family == "flux" else 1.0  # Flux's transformer takes timestep / 1000
    trained = calls[-2:]  # teacher then student (earlier calls: the teacher generating the cached latents)
    assert all(torch.allclose(c["timestep"].float() * unit, expected) for c in trained), calls
    if family == "flux":
        assert all(torch.equal(c["guidance"], torch.full((2,), 5.0)) for c in trained)
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    (weights,) = weighted  # one step; the scheme's weights of the drawn levels reach the task and output losses
    scheme = RECORDED[family]["weighting_scheme"]
    torch.testing.assert_close(weights, compute_loss_weighting_for_sd3(scheme, expected / 1000).float())
    (logged,) = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(logged["loss"]))
    settings = json.loads((out / "checkpoint-1" / CHECKPOINT_RECORD).read_text())["settings"]
    recipe = DistillConfig.load(out)
    assert {k: settings[k] for k in RECORDED[family]} == RECORDED[family]
    assert {k: recipe.objective[k] for k in RECORDED[family]} == RECORDED[family]
    prodigy = {"prodigy_beta3": 0.9, "prodigy_decouple": False, "prodigy_use_bias_correction": False,
               "prodigy_safeguard_warmup": False}  # fmt: skip
    assert settings["optimizer"] == "prodigy" and {k: settings[k] for k in prodigy} == prodigy
    assert recipe.optimizer == {"name": "prodigy", **prodigy}
    assert settings["lora_dropout"] == recipe.lora_dropout == 0.1


def test_resume_refuses_a_changed_objective(work, capsys):
    """A checkpoint trained with one weighting scheme does not continue under another (the resume settings)."""
    out = work / "sd3" / "resume"
    run_train_distill(family_args(work, "sd3", out))
    recipe = DistillConfig.load(out)  # the defaults: SD3's example objective, AdamW
    assert recipe.optimizer == {"name": "adamw"} and recipe.lora_dropout is None
    assert recipe.objective == {"weighting_scheme": "logit_normal", "precondition_outputs": 1,
                                "timestep_shift": "scheduler", "logit_mean": 0.0, "logit_std": 1.0}  # fmt: skip
    before = sorted(p.name for p in out.rglob("*"))
    train_refused(
        capsys,
        family_args(work, "sd3", out, steps=2) + ["--resume_from_checkpoint", "latest", "--weighting_scheme", "none"],
        "--weighting_scheme logit_normal, this run has none",
    )
    assert sorted(p.name for p in out.rglob("*")) == before


def test_resuming_an_earlier_versions_sd3_checkpoint_under_the_new_default_is_refused(work, capsys):
    """SD3's default objective changed; a checkpoint of an earlier version (no objective in its settings) was trained
    uniform: continuing it under logit_normal is refused naming the flags, and continues with them."""
    out = work / "sd3" / "earlier"
    legacy = ["--weighting_scheme", "none", "--precondition_outputs", "0", "--timestep_shift", "none"]
    run_train_distill(family_args(work, "sd3", out) + legacy)
    record_file = out / "checkpoint-1" / CHECKPOINT_RECORD
    record = json.loads(record_file.read_text())
    for key in ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "precondition_outputs",
                "timestep_shift", "guidance_scale", "optimizer", "prodigy_beta3", "prodigy_decouple",
                "prodigy_use_bias_correction", "prodigy_safeguard_warmup", "lora_dropout"):  # fmt: skip
        del record["settings"][key]  # what an earlier version wrote
    record_file.write_text(json.dumps(record))
    resume = family_args(work, "sd3", out, steps=2) + ["--resume_from_checkpoint", "latest"]
    train_refused(
        capsys, resume, "was saved by an earlier version, which trained with --weighting_scheme none "
        "--precondition_outputs 0 --timestep_shift none; this run has --weighting_scheme logit_normal",
    )  # fmt: skip
    run_train_distill(resume + legacy)
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


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


# ----------------------------------------------------------------------------------------------------------------
# Caption dropout (--proportion_empty_prompts; its helpers: test_caption_dropout.py)
# ----------------------------------------------------------------------------------------------------------------

SHARE = 0.5
BATCH = 4


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_teacher_and_student_get_the_empty_prompt_on_the_dropped_rows(work, family, monkeypatch):
    import diffusers
    from diffusers import DiffusionPipeline

    from diffusers_layerprune.testing import TINY_RESOLUTION

    rows = empty_prompt_rows(0, 0, SHARE, global_batch_size=BATCH, offset=0, batch=BATCH)
    assert rows.any() and not rows.all()  # the step tested drops some rows and keeps others
    stock = getattr(diffusers, get_family(family).transformer_class)
    real, calls = stock.forward, []

    def spy(self, *args, **kwargs):
        calls.append({k: v for k, v in kwargs.items() if k in ("encoder_hidden_states", "pooled_projections")})
        return real(self, *args, **kwargs)

    out = work / family / "dropout"
    args = distill_args(work / family, out, steps=1, checkpointing_steps=1)
    args = [*args, "--resolution", TINY_RESOLUTION[family], "--report_to", "none", "--train_batch_size", BATCH]
    monkeypatch.setattr(stock, "forward", spy)
    run_train_distill([*args, "--proportion_empty_prompts", SHARE])
    monkeypatch.setattr(stock, "forward", real)
    empty = encode_text(DiffusionPipeline.from_pretrained(work / family / "teacher"), [""], max_sequence_length=16)
    n = int(empty["prompt_attention_mask"][0].sum()) if "prompt_attention_mask" in empty else None
    trained = calls[-2:]  # teacher then student (earlier calls: the teacher generating the cached latents)
    for call in trained:
        states = call["encoder_hidden_states"]
        dropped, kept = states[rows], states[~rows]
        expected = empty["prompt_embeds"][0, :n] if n else empty["prompt_embeds"][0]
        assert all(torch.allclose(d[: len(expected)], expected, atol=1e-6) for d in dropped)
        assert not any(torch.allclose(k[: len(expected)], expected, atol=1e-6) for k in kept)
        if family == "flux":
            assert all(torch.allclose(p, empty["pooled_prompt_embeds"][0]) for p in call["pooled_projections"][rows])
    settings = json.loads((out / "checkpoint-1" / CHECKPOINT_RECORD).read_text())["settings"]
    assert settings["proportion_empty_prompts"] == DistillConfig.load(out).proportion_empty_prompts == SHARE


# ----------------------------------------------------------------------------------------------------------------
# Image-caption data for every family (issue 30, point 3)
# ----------------------------------------------------------------------------------------------------------------


def image_folder(folder, *, size=20):
    """Four captioned images: RGB at the wrong size, RGBA, greyscale, and one palette image."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
    images = [
        Image.fromarray(pixels),
        Image.fromarray(np.concatenate([pixels, np.full((size, size + 4, 1), 128, np.uint8)], axis=2), "RGBA"),
        Image.fromarray(pixels[..., 0], "L"),
        Image.fromarray(pixels).convert("P"),
    ]
    rows = []
    for i, (image, caption) in enumerate(zip(images, PROMPTS.splitlines(), strict=True)):
        image.save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def image_args(work, family, out, data, steps=1):
    args = family_args(work, family, out, steps=steps)
    for flag in ("--prompts", "--teacher_inference_steps", "--teacher_guidance_scale"):  # prompt-only settings
        i = args.index(flag)
        del args[i : i + 2]
    return [*args, "--train_data_dir", data]


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_image_caption_data_trains_every_flow_family(work, family, caplog):
    """--train_data_dir trains Sana (DC-AE), SD3 and Flux (AutoencoderKL with shift and scale): each image is
    encoded once into the cache the way the family's pipeline decodes it back (latents / scaling + shift), with the
    family's text conditioning; images of another mode or size are converted and a warning says so; a resume
    reuses the cache."""
    from datasets import load_from_disk
    from diffusers import DiffusionPipeline

    from diffusers_layerprune.data import decode_cached, with_cache_format
    from diffusers_layerprune.testing import TINY_RESOLUTION

    data = image_folder(work / family / "images")
    out, cache = work / family / "images-out", work / family / "cache"
    with caplog.at_level("WARNING", logger="diffusers_layerprune.image_data"):
        run_train_distill(image_args(work, family, out, data))
    assert "4 of 4 training images were not 32x32" in caplog.text or family != "sana"
    assert "3 of 4 training images were not RGB (converted to RGB)" in caplog.text
    recipe = DistillConfig.load(out)
    assert recipe.train_samples == 4 and recipe.data == "images"
    (folder,) = cache.glob("image-latents-*")
    rows = with_cache_format(load_from_disk(str(folder)))
    pipe = DiffusionPipeline.from_pretrained(work / family / "teacher")
    size = TINY_RESOLUTION[family]
    latents = torch.stack([decode_cached(r["latents"]) for r in rows]).float()
    assert latents.shape == (4, 4, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    # the pipeline's decoding step inverts the cached latents to the VAE's own latent of the image
    from PIL import Image

    from diffusers_layerprune.image_data import _image_to_tensor

    image = _image_to_tensor(Image.open(data / "0.png"), size)[None]
    with torch.no_grad():
        encoded = pipe.vae.encode(image)
        own = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latent
    config = pipe.vae.config
    back = latents[:1] / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    torch.testing.assert_close(back, own, atol=0.02, rtol=0.02)  # bfloat16 cache
    pooled = "pooled_prompt_embeds" in get_family(family).text_keys
    assert ("pooled_prompt_embeds" in rows.column_names) == pooled
    assert list(rows["prompt"]) == PROMPTS.splitlines()
    # a resume continues on the cached latents (nothing re-encoded)
    stamp = (folder / "data-00000-of-00001.arrow").stat().st_mtime_ns
    run_train_distill(image_args(work, family, out, data, steps=2) + ["--resume_from_checkpoint", "latest"])
    log = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2] and (folder / "data-00000-of-00001.arrow").stat().st_mtime_ns == stamp


BAD_FOLDERS = {
    "no_row": ("3.png", "has no caption (no row in metadata)"),
    "empty_caption": ("1.png", "has no caption (an empty 'text')"),
    "unreadable": ("2.png", "cannot be read"),
    "listed_missing": ("9.png", "is listed in the metadata but does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_image_folder_is_refused_naming_the_first_bad_file(work, case, capsys):
    data = image_folder(work / "flux" / f"bad-{case}")
    rows = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    if case == "no_row":
        rows = rows[:3]
    elif case == "empty_caption":
        rows[1]["text"] = " "
    elif case == "unreadable":
        (data / "2.png").write_bytes(b"not an image")
    else:
        rows.append({"file_name": "9.png", "text": "a ghost"})
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    name, message = BAD_FOLDERS[case]
    out = work / "flux" / f"bad-out-{case}"
    before = sorted((work / "flux").rglob("*"))
    err = train_refused(capsys, image_args(work, "flux", out, data), message)
    assert str(data / name) in err
    assert sorted((work / "flux").rglob("*")) == before and not out.exists()


def test_hub_style_image_dataset_trains_sd3(work):
    """--dataset_name (a datasets folder with an Image column, as a Hub dataset loads) goes through the same
    encoding: SD3's latents and pooled text conditioning are cached and trained on."""
    from datasets import Dataset, Features, Image, Value, load_from_disk

    folder = image_folder(work / "sd3" / "hub-images")
    captions = PROMPTS.splitlines()
    ds = Dataset.from_dict(
        {"image": [str(folder / f"{i}.png") for i in range(4)], "caption": captions},
        features=Features({"image": Image(), "caption": Value("string")}),
    )
    ds.save_to_disk(str(work / "sd3" / "hub-dataset"))
    out = work / "sd3" / "hub-out"
    args = image_args(work, "sd3", out, folder)
    i = args.index("--train_data_dir")
    args[i : i + 2] = ["--dataset_name", work / "sd3" / "hub-dataset", "--caption_column", "caption"]
    run_train_distill(args + ["--cache_dir", work / "sd3" / "hub-cache"])
    (cache,) = (work / "sd3" / "hub-cache").glob("image-latents-*")
    rows = load_from_disk(str(cache))
    assert list(rows["prompt"]) == captions and "pooled_prompt_embeds" in rows.column_names
    assert DistillConfig.load(out).train_samples == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora_dropout", "0.1"], "--lora_dropout applies only with --use_lora"),
        (["--init_lora", "l.safetensors", "--lora_dropout", "0.1"], "--lora_dropout applies to a new adapter"),
    ],
)
def test_lora_dropout_needs_a_new_adapter(extra, message, capsys, tmp_path):
    from diffusers_layerprune.train_distill import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--student_model", "s", "--output_dir", str(tmp_path / "o"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
