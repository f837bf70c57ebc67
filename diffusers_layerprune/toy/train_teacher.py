"""Train the toy teacher: a 12-block ``PixArtTransformer2DModel`` on the world's training captions, by denoising.

The pipeline is the real ``PixArtSigmaPipeline``: a word-level T5 tokenizer over the world's vocabulary, a tiny
``T5EncoderModel`` kept at its seeded random initialisation (frozen: a random encoder already gives each word its
own direction, and freezing it lets the caption embeddings be computed once), the VAE from ``train_vae.py``, and a
``DPMSolverMultistepScheduler``. Training data: renders of the 360 training captions, VAE-encoded once.

Parametrisation: the first 4 of the 8 output channels predict the clean latent x0 (``prediction_type="sample"`` in
the scheduler config; ``--prediction_type epsilon`` is available). With 16 tokens of 64 latent values each and
width 64, an epsilon model spends its capacity copying the noise through 12 blocks and had learnt no text
dependence after 2000 steps; the x0 model learns colour and position within a few thousand steps. PixArt-Sigma's
variance channels are left untrained (the pipeline discards them and DPM-Solver does not use them).
Loss: min-SNR-5 weighted MSE, 10% caption dropout to the empty-prompt embedding for classifier-free guidance, and
an EMA of the weights, which is what gets saved.

``--family flux`` trains the ``toy-flux`` teacher instead (``assets/pipeline_flux``, :mod:`.teacher_flux`): a
``FluxPipeline`` with 4 double-stream + 8 single-stream blocks on the same world, VAE and T5 encoder, trained with
the rectified-flow objective (``x_t = (1 - t) x0 + t noise``, target ``noise - x0``). The loop, data, EMA and
schedule are shared; only the model, the text encoding and the loss differ by family.

    python -m diffusers_layerprune.toy.train_teacher                    # writes assets/pipeline
    python -m diffusers_layerprune.toy.train_teacher --family flux      # writes assets/pipeline_flux
    python -m diffusers_layerprune.toy.train_teacher --smoke --output_dir /tmp/teacher --vae /tmp/vae

A long run can be trained in pieces: ``--stop_at_step N`` saves the whole training state (weights, EMA, optimiser,
schedule, random generator, the encoded renders) to ``OUTPUT/resume_state.pt`` at step N and exits; the same command
with ``--resume`` continues it there, and the finished run equals one uninterrupted run (tests/test_toy.py).

    python -m diffusers_layerprune.toy.train_teacher --num_layers 9 --output_dir runs/d9 --resume --stop_at_step 2000
    python -m diffusers_layerprune.toy.train_teacher --num_layers 9 --output_dir runs/d9 --resume  # steps 2000-6000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import DEFAULT_GUIDANCE_SCALE, world
from .paths import assets_dir

MAX_SEQUENCE_LENGTH = 16
"""Token length every toy caption is padded to (the longest caption has 13 tokens with ``</s>``)."""


def build_text_encoder(seed: int = 0):
    """Word-level T5 tokenizer over the world's vocabulary and a tiny seeded-random ``T5EncoderModel``."""
    from ..testing import build_t5_tokenizer, build_tiny_t5_encoder

    tokenizer = build_t5_tokenizer(world.vocabulary())
    tokenizer.model_max_length = MAX_SEQUENCE_LENGTH
    torch.manual_seed(seed)
    return tokenizer, build_tiny_t5_encoder(len(tokenizer), d_model=64)


def build_transformer(
    num_layers: int = 12,
    width: int = 64,
    heads: int = 4,
    caption_channels: int = 64,
    seed: int = 0,
    sample_size: int = world.IMAGE_SIZE // 2,
    patch_size: int = 4,
):
    """The teacher's architecture: 16x16x4 latents, patch 4 (16 tokens), ``width``-wide blocks, 8 output channels."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=patch_size,
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=width,
        caption_channels=caption_channels,
        norm_num_groups=1,
    )


def build_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DPMSolverMultistepScheduler

    # PixArt's training schedule (linear betas 1e-4..0.02 over 1000 steps); DPM-Solver++ 2M for sampling.
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction_type,
    )


@torch.no_grad()
def encode_captions(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings exactly as the pipeline computes them: ``([N, 16, 64], mask [N, 16])``."""
    embeds, mask, _, _ = pipe.encode_prompt(
        texts,
        do_classifier_free_guidance=False,
        num_images_per_prompt=1,
        device="cpu",
        clean_caption=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return embeds, mask


@torch.no_grad()
def encode_renders(vae, attrs: list, seeds: list[int], batch_size: int = 256) -> torch.Tensor:
    """Scaled VAE latents (posterior mode) of renders: ``[N, 4, 16, 16]``."""
    out = []
    for start in range(0, len(attrs), batch_size):
        images = world.render_batch(attrs[start : start + batch_size], seeds[start : start + batch_size])
        out.append(vae.encode(images * 2 - 1).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(out)


def quick_judge(pipe, transformer) -> dict:
    """Judge accuracy of ``transformer`` in ``pipe`` on 36 held-out captions (seed 0, default sampling)."""
    from .evaluate import generate
    from .judge import judge

    pairs = world.evaluation_set(1)[::6]
    trained = pipe.transformer
    pipe.register_modules(transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    try:
        images = generate(pipe, pairs)
    finally:
        pipe.register_modules(transformer=trained)
    return {k: round(v, 3) for k, v in judge(images, [a for a, _ in pairs]).accuracy.items()}


class PixArtRecipe:
    """The ``toy`` teacher: ``PixArtSigmaPipeline``, DDPM-trained, x0 (or epsilon) prediction, min-SNR weighting."""

    output_dir = "pipeline"
    defaults = dict(
        num_layers=12, num_single_layers=0, max_steps=6000, batch_size=48, learning_rate=1e-3, num_renders=12000
    )

    def __init__(self, args):
        self.args = args

    def build(self, tokenizer, text_encoder, vae):
        from diffusers import PixArtSigmaPipeline

        args = self.args
        latent_size = world.IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)
        transformer = build_transformer(
            args.num_layers,
            args.width,
            args.heads,
            text_encoder.config.d_model,
            args.seed + 1,
            latent_size,
            args.patch_size,
        )
        scheduler = build_scheduler(args.prediction_type)
        alphas_cumprod = scheduler.alphas_cumprod.float()
        snr = alphas_cumprod / (1 - alphas_cumprod)
        # min-SNR-gamma: the same objective for either parametrisation (an x0 error is an epsilon error times sqrt(snr)).
        self.loss_weight = torch.clamp(snr, max=args.min_snr_gamma)
        if args.prediction_type == "epsilon":
            self.loss_weight = self.loss_weight / snr
        self.alphas_cumprod = alphas_cumprod
        return PixArtSigmaPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )

    def encode(self, pipe, texts: list[str]) -> dict[str, torch.Tensor]:
        embeds, mask = encode_captions(pipe, texts)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def loss(self, transformer, x0, text, generator) -> torch.Tensor:
        batch = len(x0)
        t = torch.randint(0, len(self.alphas_cumprod), (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        added = {"resolution": None, "aspect_ratio": None}
        pred = transformer(noisy, timestep=t, added_cond_kwargs=added, **text).sample[:, :4]
        target = noise if self.args.prediction_type == "epsilon" else x0
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * self.loss_weight[t]).mean()


class FluxRecipe:
    """The ``toy-flux`` teacher: ``FluxPipeline`` with both stacks, rectified flow (velocity ``noise - x0``).

    Text: the toy T5 encoder (the same seeded weights as ``toy``) for the tokens and a seeded-random character-level
    ``CLIPTextModel`` for the pooled vector, as Flux.1 uses them. VAE: the toy VAE with ``shift_factor = 0`` (Flux
    pipelines read one). No guidance embedding (``guidance_embeds=False``, the FLUX.1-schnell layout): the caption
    dropout trains the unconditional model too, and it is sampled with FluxPipeline's true classifier-free guidance
    (``true_cfg_scale`` 4.5 with ``negative_prompt=""``: ``families.flux.true_cfg``); ``guidance_scale`` alone does
    not change its images. Timesteps: logit-normal (SD3's default sampling, mean 0, std 1)."""

    output_dir = "pipeline_flux"
    # The shipped toy-flux's first stage; the later ones continue it (--init_from, docs/toy_world.md).
    defaults = dict(
        num_layers=4, num_single_layers=8, max_steps=800, batch_size=32, learning_rate=2e-3, num_renders=6000
    )

    def __init__(self, args):
        self.args = args

    def build(self, tokenizer, text_encoder, vae):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        from ..testing import build_clip_tokenizer, build_tiny_clip_text_encoder

        args = self.args
        vae.register_to_config(shift_factor=0.0)
        clip_tokenizer = build_clip_tokenizer()
        torch.manual_seed(args.seed + 2)
        clip = build_tiny_clip_text_encoder(len(clip_tokenizer), text_encoder.config.d_model)
        head_dim = args.width // args.heads
        rope = (head_dim - 2 * (3 * head_dim // 8), 3 * head_dim // 8, 3 * head_dim // 8)  # 16 -> (4, 6, 6)
        torch.manual_seed(args.seed + 1)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * vae.config.latent_channels,  # latents packed 2x2 by the pipeline
            num_layers=args.num_layers,
            num_single_layers=args.num_single_layers,
            attention_head_dim=head_dim,
            num_attention_heads=args.heads,
            joint_attention_dim=text_encoder.config.d_model,
            pooled_projection_dim=clip.config.hidden_size,
            guidance_embeds=False,
            axes_dims_rope=rope,
        )
        # trained with caption dropout: guided by true CFG at the toy's scale (families.flux.TRUE_CFG_KEY)
        transformer.register_to_config(_layerprune_true_cfg=DEFAULT_GUIDANCE_SCALE)
        # FLUX.1-dev's scheduler config (resolution-dependent shift).
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        return FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=clip,
            tokenizer=clip_tokenizer,
            text_encoder_2=text_encoder,
            tokenizer_2=tokenizer,
            transformer=transformer,
        )

    def encode(self, pipe, texts: list[str]) -> dict[str, torch.Tensor]:
        from ..families.flux import encode

        with torch.no_grad():
            return encode(pipe, texts, MAX_SEQUENCE_LENGTH, "cpu")

    def loss(self, transformer, x0, text, generator) -> torch.Tensor:
        from ..families.flux import forward

        t = torch.sigmoid(torch.randn(len(x0), generator=generator))
        noise = torch.randn(x0.shape, generator=generator)
        sigma = t.view(-1, 1, 1, 1)
        noisy = (1 - sigma) * x0 + sigma * noise
        pred = forward(transformer, noisy, t * 1000, text)
        return F.mse_loss(pred, noise - x0)


RECIPES = {"pixart": PixArtRecipe, "flux": FluxRecipe}
"""Teacher recipes by family: ``toy`` is ``pixart``, ``toy-flux`` is ``flux``."""

RESUME_STATE = "resume_state.pt"
"""File in ``--output_dir`` holding a stopped run's training state (``--stop_at_step``, ``--resume``)."""

# Settings a resumed run must share with the run it continues (the others, e.g. threads or eval_every, may change).
RESUME_SETTINGS = (
    "family", "vae", "num_layers", "num_single_layers", "width", "patch_size", "heads", "max_steps", "batch_size",
    "learning_rate", "warmup_steps", "ema_decay", "prediction_type", "min_snr_gamma", "caption_dropout",
    "partial_captions", "num_renders", "seed", "init_from",
)  # fmt: skip


def load_resume_state(folder: Path, args) -> dict | None:
    """The stopped run's state in ``folder`` (``None`` when there is none); refused when its settings differ."""
    from ..errors import LayerPruneError

    path = folder / RESUME_STATE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    changed = [k for k in RESUME_SETTINGS if state["settings"].get(k) != getattr(args, k)]
    if changed:
        was = ", ".join(f"--{k} {state['settings'].get(k)}" for k in changed)
        raise LayerPruneError(
            f"{path} was written by a run with {was}: resume with the same settings, or use another --output_dir"
        )
    return state


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(RECIPES), default="pixart", help="pixart: toy; flux: toy-flux")
    parser.add_argument("--output_dir", default=None, help="default: assets/pipeline (pixart), assets/pipeline_flux")
    parser.add_argument("--vae", default=str(assets_dir() / "pipeline" / "vae"), help="folder from train_vae.py")
    parser.add_argument("--num_layers", type=int, default=None, help="pixart 12; flux 4 (double-stream)")
    parser.add_argument("--num_single_layers", type=int, default=None, help="flux only: single-stream blocks (8)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=4, help="pixart only (Flux packs 2x2)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max_steps", type=int, default=None, help="pixart 6000; flux 800")
    parser.add_argument("--batch_size", type=int, default=None, help="pixart 48; flux 32")
    parser.add_argument("--learning_rate", type=float, default=None, help="pixart 1e-3; flux 2e-3")
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--ema_decay", type=float, default=0.998)
    parser.add_argument(
        "--prediction_type",
        choices=["epsilon", "sample"],
        default="sample",
        help="pixart only: what the first 4 output channels predict (written to the scheduler config); epsilon "
        "learned far slower at this size (docs/toy_world.md)",
    )
    parser.add_argument("--min_snr_gamma", type=float, default=5.0, help="pixart only")
    parser.add_argument("--caption_dropout", type=float, default=0.1)
    parser.add_argument(
        "--partial_captions",
        type=float,
        default=0.0,
        help="share of training samples whose caption leaves out a random non-empty subset of size, colour and "
        "position (still true of the render), so that each word, the shape's above all, must work on its own",
    )
    parser.add_argument(
        "--num_renders", type=int, default=None, help="training images, VAE-encoded once (pixart 12000; flux 6000)"
    )
    parser.add_argument("--eval_every", type=int, default=0, help="judge the EMA on 36 held-out captions every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init_from",
        default=None,
        help="a pipeline folder this script wrote: continue training its transformer (--seed then only picks the "
        "new run's data and noise)",
    )
    parser.add_argument(
        "--num_threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared 2-core box)"
    )
    parser.add_argument(
        "--stop_at_step",
        type=int,
        default=None,
        help=f"save the training state to OUTPUT/{RESUME_STATE} at this step and exit (continue with --resume)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the stopped run in --output_dir from its {RESUME_STATE} (start one when there is none)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few steps on a few renders, for tests (explicit sizes still win)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.partial_captions <= 1:
        parser.error(f"--partial_captions is a share of samples in [0, 1], not {args.partial_captions}")
    recipe = RECIPES[args.family](args)
    if args.smoke:
        for key, value in dict(max_steps=2, batch_size=4, num_renders=8).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        args.warmup_steps = 1
    for key, value in recipe.defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output_dir is None:
        args.output_dir = str(assets_dir() / recipe.output_dir)
    out = Path(args.output_dir)
    resumed = load_resume_state(out, args) if args.resume else None
    torch.set_num_threads(args.num_threads)
    start = time.time()

    from diffusers import AutoencoderKL

    tokenizer, text_encoder = build_text_encoder(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    pipe = recipe.build(tokenizer, text_encoder, vae)
    transformer = pipe.transformer
    if args.init_from:  # continue that run: its transformer and its (frozen) text encoders and VAE
        pipe = type(pipe).from_pretrained(args.init_from, local_files_only=True)
        transformer, vae = pipe.transformer, pipe.vae

    train_attrs = world.split_attributes("train")
    # Row 0 of each caption's variants is the caption itself; rows 1.. leave out a non-empty subset of attributes.
    variants = [(), *world.omissions()]
    if args.partial_captions:
        texts = recipe.encode(pipe, [a.caption(o) for a in train_attrs for o in variants])
    else:
        texts = recipe.encode(pipe, [a.caption() for a in train_attrs])
    null_text = recipe.encode(pipe, [""])
    if resumed is not None:  # the renders were encoded by the first piece; encoding them is most of the set-up
        latents, caption_index = resumed["latents"], resumed["caption_index"]
    else:
        rng = np.random.default_rng(args.seed)
        picks = rng.integers(0, len(train_attrs), size=args.num_renders)
        seeds = rng.integers(0, 2**31 - 1, size=args.num_renders)
        latents = encode_renders(vae, [train_attrs[int(i)] for i in picks], [int(s) for s in seeds])
        caption_index = torch.from_numpy(picks).long()
    print(f"encoded {len(latents)} renders in {time.time() - start:.0f}s; latent std {latents.std():.3f}", flush=True)

    transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.learning_rate, weight_decay=0.01)

    def lr_lambda(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    generator = torch.Generator().manual_seed(args.seed)
    losses, first_step, earlier_seconds, earlier_cpu = [], 0, 0.0, 0.0
    if resumed is not None:
        transformer.load_state_dict(resumed["transformer"])
        ema.load_state_dict(resumed["ema"])
        optimizer.load_state_dict(resumed["optimizer"])
        lr_schedule.load_state_dict(resumed["lr_schedule"])
        generator.set_state(resumed["generator"])
        losses, first_step = [float(x) for x in resumed["losses"]], int(resumed["step"])
        earlier_seconds, earlier_cpu = float(resumed["train_seconds"]), float(resumed["train_cpu_seconds"])
        print(f"resumed {out / RESUME_STATE} at step {first_step}", flush=True)
    last_step = args.max_steps if args.stop_at_step is None else min(args.stop_at_step, args.max_steps)
    train_start, cpu_start = time.time(), time.process_time()
    for step in range(first_step, last_step):
        index = torch.randint(0, len(latents), (args.batch_size,), generator=generator)
        cap = caption_index[index]
        if args.partial_captions:  # the row of each caption's variant: the caption itself or a partial one
            partial = torch.rand(args.batch_size, generator=generator) < args.partial_captions
            pick = torch.randint(1, len(variants), (args.batch_size,), generator=generator)
            cap = cap * len(variants) + torch.where(partial, pick, torch.zeros_like(pick))
        drop = torch.rand(args.batch_size, generator=generator) < args.caption_dropout
        # Caption dropout to the empty prompt's encoding, for classifier-free guidance.
        text = {
            key: torch.where(drop.view(-1, *[1] * (value.dim() - 1)), null_text[key], value[cap])
            for key, value in texts.items()
        }
        loss = recipe.loss(transformer, latents[index], text, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), transformer.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == args.max_steps - 1:
            elapsed = time.time() - train_start
            print(
                f"step {step} loss {np.mean(losses[-100:]):.4f} lr {lr_schedule.get_last_lr()[0]:.2e} "
                f"{elapsed:.0f}s ({(step + 1 - first_step) / elapsed:.2f} steps/s)",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0:
            print(f"step {step + 1} judge {quick_judge(pipe, ema)}", flush=True)

    train_seconds = earlier_seconds + time.time() - train_start
    # CPU seconds of the training loop, summed over pieces: on a shared machine wall time says little about cost
    train_cpu_seconds = earlier_cpu + time.process_time() - cpu_start
    if last_step < args.max_steps:  # a piece of a longer run: keep everything the next piece needs
        out.mkdir(parents=True, exist_ok=True)
        state = {
            "settings": {k: getattr(args, k) for k in RESUME_SETTINGS},
            "step": last_step,
            "transformer": transformer.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            "generator": generator.get_state(),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu_seconds,
            "latents": latents,
            "caption_index": caption_index,
        }
        partial = out / (RESUME_STATE + ".partial")
        torch.save(state, partial)
        partial.replace(out / RESUME_STATE)  # a killed save leaves the previous state readable
        print(f"stopped at step {last_step}: {out / RESUME_STATE}", flush=True)
        return {"stopped_at": last_step, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds}

    pipe.register_modules(transformer=ema)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / RESUME_STATE).unlink(missing_ok=True)
    result = {
        "steps": args.max_steps,
        "final_loss": float(np.mean(losses[-100:])),
        "seconds": time.time() - start,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "parameters": sum(p.numel() for p in ema.parameters()),
        "losses": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
    }
    (out / "training_log.json").write_text(json.dumps({**vars(args), **result}, indent=1) + "\n")
    print({k: v for k, v in result.items() if k != "losses"})
    return result


if __name__ == "__main__":
    main()
