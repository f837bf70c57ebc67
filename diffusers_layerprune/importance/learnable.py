"""``learnable`` (TinyFusion): learn which blocks to remove for the model that *recovers* best, not the one that is
best before fine-tuning.

TinyFusion (Fang et al., *TinyFusion: Diffusion Transformers Learned Shallow*, CVPR 2025) observes that the blocks
whose removal hurts least right away are not the ones whose removal is easiest to recover from by fine-tuning. It
learns the choice instead:

- the ``L`` blocks are split into ``L / M`` groups of ``M`` consecutive blocks; each group keeps ``N`` of its ``M``
  blocks (here ``N = M - r`` with ``r = k M / L`` so that ``k`` blocks go in all), and has a categorical distribution
  (learnable logits) over its ``C(M, N)`` possible keep-masks;
- each step samples one mask per group with the straight-through Gumbel-softmax (Jang et al., 2017): the forward pass
  uses a hard 0/1 mask, the gradient flows to the logits through the soft sample; the temperature is annealed
  (4 to 0.1, as in TinyFusion);
- a block with mask ``m`` computes ``x + m (block(x) - x)``: ``m = 0`` skips it exactly as pruning does;
- jointly, a LoRA on the blocks' attention and feed-forward projections is trained to *simulate recovery*: the
  masked student is distilled towards the full model (MSE between their noise predictions on the noised latents
  of the scan's probe), so the masks are judged by what the blocks left behind can learn to do;
- at the end each group's most probable mask is the selection. The LoRA is thrown away (it only simulates the
  distillation that ``train_distill.py`` then does for real).

The training runs on a copy of the transformer: the scan's model is left untouched. Its cost: one full-model
generation per prompt (the probe's ``x0``, as for ``block_influence``) plus ``steps`` forward+backward passes of the
student on one prompt batch at all its probe timesteps (``batch_size x num_timesteps`` samples).

Memory at real scale. A step's samples are split into micro-batches whose gradients are accumulated (the step is the
same as one pass over all samples, up to float rounding), and the student's blocks are recomputed in the backward
pass (gradient checkpointing) when its activations would not fit :data:`ACTIVATION_BUDGET`. Measured with autograd's
saved tensors on the meta device at PixArt-Sigma-XL's true sizes (``benchmarks/rehearse_learnable_memory.py``,
docs/criteria.md): one 1024 px sample stores ~15 GiB of activations in float32 without checkpointing (8 prompts x 4
timesteps: ~485 GiB, on no GPU), ~0.5 GiB with it (plus one block's ~0.5 GiB while it is recomputed). Tiny models
stay in one pass without checkpointing.

``values``: ``1 + P(keep)`` for the blocks the learned masks keep and ``P(keep)`` for those they remove (``P(keep)``:
the block's keep probability under the learned distributions), so ``least_important(k)`` is exactly the learned
selection and the probabilities still order the blocks within each side.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LayerPruneError
from ..families.base import to_device
from .base import Criterion, check_no_skipped
from .result import LayerImportance
from .runner import ImportanceScan

MAX_CANDIDATES = 4096
"""Most keep-masks a group may have (C(M, N)); a larger default group is refused in favour of a smaller one."""
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
ACTIVATION_BUDGET = 8 * 2**30
"""Bytes of stored activations one forward+backward pass of the student may use (float32)."""
ACTIVATION_BYTES = 200
"""Activation bytes autograd stores per token, per unit of block width, per block, in float32 without checkpointing:
at least the largest measured (benchmarks/rehearse_learnable_memory.py, meta device, true sizes: PixArt-Sigma-XL
123-126, Sana 1600M 195); attention matrices not included (fused attention kernels do not store them)."""


def pass_plan(samples: int, tokens: int, width: int, depth: int, micro_batch: int | None = None) -> tuple[int, bool]:
    """``(samples per pass, gradient checkpointing)`` for a step of ``samples`` samples of ``tokens`` image tokens
    through ``depth`` blocks of ``width``. ``micro_batch``: the user's choice of samples per pass (checkpointing then
    only if that pass would not fit the budget without it)."""
    full = ACTIVATION_BYTES * width * tokens * depth  # per sample, every block's activations kept
    checkpointed = 4 * width * tokens * depth + ACTIVATION_BYTES * width * tokens  # block inputs + one block
    if micro_batch is not None:
        size = min(micro_batch, samples)
        return size, size * full > ACTIVATION_BUDGET
    if samples * full <= ACTIVATION_BUDGET:
        return samples, False
    return max(1, min(samples, ACTIVATION_BUDGET // checkpointed)), True


def group_plan(depth: int, remove: int, group_size: int | None = None) -> tuple[int, int]:
    """``(group_size, removed_per_group)`` for removing ``remove`` of ``depth`` blocks.

    ``group_size=None`` takes the largest group (fewest constraints) with at most :data:`MAX_CANDIDATES` masks:
    the whole depth when that is small enough. Raises :class:`LayerPruneError` when the group size does not divide
    the depth or the removal count does not split evenly over the groups.
    """
    if not 0 < remove < depth:
        raise LayerPruneError(f"the number of blocks to remove must be between 1 and {depth - 1}, got {remove}")
    if group_size is not None:
        if not 1 < group_size <= depth or depth % group_size:
            divisors = [g for g in range(2, depth + 1) if depth % g == 0]
            raise LayerPruneError(
                f"--group-size {group_size} does not divide the depth ({depth} blocks); use one of "
                f"{', '.join(map(str, divisors))}"
            )
        groups = depth // group_size
        if remove % groups:
            raise LayerPruneError(
                f"removing {remove} blocks does not split evenly over {groups} groups of {group_size}; choose a group "
                f"size whose group count divides {remove}"
            )
        return group_size, remove // groups
    for size in sorted((g for g in range(2, depth + 1) if depth % g == 0), reverse=True):
        groups = depth // size
        if remove % groups == 0 and math.comb(size, remove // groups) <= MAX_CANDIDATES:
            return size, remove // groups
    raise LayerPruneError(f"no group size splits removing {remove} of {depth} blocks evenly; pass --group-size")


def _width(model) -> int:
    """The blocks' hidden width (attention heads x head size, as PixArt and Sana configure it)."""
    config = model.config
    heads, size = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    if heads and size:
        return int(heads) * int(size)
    return max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def candidate_masks(group_size: int, removed: int) -> torch.Tensor:
    """``[C(M, N), M]`` keep-masks (1 = keep) of one group, in a fixed order."""
    rows = []
    for gone in itertools.combinations(range(group_size), removed):
        rows.append([0.0 if i in gone else 1.0 for i in range(group_size)])
    return torch.tensor(rows)


def check_family(family) -> None:
    """The masked blocks mix a block's output with its input, one tensor each: families whose blocks also carry the
    text stream (SD3's joint blocks, Flux's double and single blocks) are refused with one line."""
    from ..families import all_families
    from ..families.base import first_tensor

    def supported(f) -> bool:
        return all(stack.hidden_from_output is first_tensor for stack in f.stacks)

    if not supported(family):
        names = ", ".join(f.name for f in all_families() if supported(f))
        raise LayerPruneError(
            f"learnable supports the families whose blocks return the image tokens alone ({names}), not "
            f"{family.name}; use another criterion (e.g. preference or block_influence)"
        )


class _MaskedBlocks:
    """Forward hooks that turn block ``l`` into ``x + m_l (block(x) - x)`` for the current masks ``m [L]``."""

    def __init__(self, blocks) -> None:
        self.masks: torch.Tensor | None = None
        self.handles = [block.register_forward_hook(self._hook(i), with_kwargs=True) for i, block in enumerate(blocks)]

    def _hook(self, index: int):
        def hook(_module, args, kwargs, output):
            if self.masks is None:
                return output
            x = args[0] if args else kwargs["hidden_states"]
            m = self.masks[index].to(output.dtype)
            return x + m * (output - x)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def learnable(
    scan: ImportanceScan,
    *,
    skipped=(),
    remove: int | None = None,
    group_size: int | None = None,
    steps: int = 200,
    lora_rank: int = 4,
    learning_rate: float = 1e-3,
    mask_learning_rate: float = 0.1,
    seed: int = 0,
    micro_batch: int | None = None,
) -> LayerImportance:
    """Learn per-group keep-masks (and a recovery LoRA) by distillation towards the full model; see the module
    docstring. ``remove`` defaults to 25% of the blocks."""
    from peft import LoraConfig, inject_adapter_in_model

    from ..blocks import get_blocks

    check_no_skipped("learnable", skipped)
    check_family(scan.family)
    depth = scan.num_layers
    k = remove if remove is not None else max(1, round(0.25 * depth))
    size, removed = group_plan(depth, k, group_size)
    if steps < 1:
        raise LayerPruneError(f"learnable steps must be at least 1, got {steps}")
    if micro_batch is not None and micro_batch < 1:
        raise LayerPruneError(f"the learnable micro-batch must be at least 1 sample, got {micro_batch}")
    groups = depth // size
    candidates = candidate_masks(size, removed)

    # Teacher targets: the full model's noise prediction on the probe of every prompt batch.
    # (Cloned: the scan computes them in inference mode, and autograd cannot save inference tensors.)
    data = []
    for b in range(len(scan.batches)):
        probe, target = scan.probe(b), scan.full_noise(b)
        text = {k: v.clone() for k, v in probe.text.items()}
        data.append((probe.latents.clone(), probe.timesteps.clone(), text, target.clone()))

    torch.manual_seed(seed)
    student = copy.deepcopy(scan.transformer).float().train()
    for p in student.parameters():
        p.requires_grad_(False)
    student = inject_adapter_in_model(
        LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS, lora_dropout=0.0), student
    )
    lora = [p for n, p in student.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    logits = torch.zeros(groups, len(candidates), requires_grad=True)
    optimiser = torch.optim.AdamW(
        [{"params": lora, "lr": learning_rate}, {"params": [logits], "lr": mask_learning_rate, "weight_decay": 0.0}]
    )
    hooks = _MaskedBlocks(get_blocks(student))
    generator = torch.Generator().manual_seed(seed)
    channels = scan.family.latent_channels(student.config)
    device = next(student.parameters()).device
    latents0 = data[0][0]  # [T, B, C, H, W]
    patch = int(getattr(student.config, "patch_size", None) or 1)
    tokens = latents0.shape[-1] * latents0.shape[-2] // (patch * patch)
    samples = latents0.shape[0] * latents0.shape[1]
    per_pass, checkpointing = pass_plan(samples, tokens, _width(student), depth, micro_batch)
    if checkpointing and getattr(student, "_supports_gradient_checkpointing", False):
        student.enable_gradient_checkpointing()
    else:
        checkpointing = False
    losses = []
    try:
        for step in range(steps):
            tau = 4.0 * (0.1 / 4.0) ** (step / max(1, steps - 1))  # 4 -> 0.1, geometric
            u = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-10)
            soft = F.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
            hard = F.one_hot(soft.argmax(-1), len(candidates)).to(soft.dtype)
            sample = hard - soft.detach() + soft  # straight-through: hard forward, soft gradient
            masks = (sample @ candidates).reshape(depth)
            # The passes share one mask sample: their gradients meet at a leaf, sent to the logits once per step.
            hooks.masks = masks.detach().to(device).requires_grad_(True)
            # One prompt batch at all its probe timesteps: [T * B] samples per step.
            latents, timesteps, text_batch, target = data[step % len(data)]
            repeat = latents.shape[0]
            text = to_device({k: v.repeat(repeat, *[1] * (v.dim() - 1)) for k, v in text_batch.items()}, device,
                             torch.float32)  # fmt: skip
            latents, timesteps = latents.flatten(0, 1).to(device), timesteps.flatten().to(device)
            target = target.flatten(0, 1).to(device)
            # Relative to the teacher's own output energy: the loss means the same at any scale.
            scale = target.pow(2).mean().clamp_min(1e-12) * target.numel()
            optimiser.zero_grad(set_to_none=True)
            total = 0.0
            for start in range(0, len(latents), per_pass):
                part = slice(start, start + per_pass)
                out = scan.family.forward(  # the family's forward arguments
                    student, latents[part], timesteps[part], {k: v[part] for k, v in text.items()}
                )
                loss = F.mse_loss(out[:, :channels].float(), target[part], reduction="sum") / scale
                loss.backward()
                total += float(loss.detach())
            masks.backward(hooks.masks.grad.to(masks.device))
            optimiser.step()
            losses.append(total)
    finally:
        hooks.remove()

    with torch.no_grad():
        probabilities = F.softmax(logits, dim=-1)  # [G, C]
        keep = (probabilities @ candidates).reshape(depth)  # marginal keep probability per block
        chosen = candidates[probabilities.argmax(-1)].reshape(depth)  # the most probable mask of each group
    removed_blocks = [i for i in range(depth) if chosen[i] == 0]
    values = [float(keep[i]) + (1.0 if chosen[i] == 1 else 0.0) for i in range(depth)]
    window = max(1, steps // 10)
    return LayerImportance(
        values=values,
        criterion="learnable",
        metadata=scan.metadata("learnable", skipped=[]),
        extra={
            "learnable": {
                "remove": k,
                "group_size": size,
                "removed_per_group": removed,
                "removed_blocks": removed_blocks,
                "keep_probability": [float(v) for v in keep],
                "group_mask_probability": [float(p.max()) for p in probabilities],
                "steps": steps,
                "lora_rank": lora_rank,
                "learning_rate": learning_rate,
                "mask_learning_rate": mask_learning_rate,
                "seed": seed,
                "loss_first": float(np.mean(losses[:window])),
                "loss_last": float(np.mean(losses[-window:])),
                "images": len(scan.prompts),
                "student_passes": steps * -(-samples // per_pass),
                "samples_per_step": samples,
                "micro_batch": per_pass,
                "gradient_checkpointing": checkpointing,
            }
        },
    )


CRITERION = Criterion(
    name="learnable",
    compute=learnable,
    summary="TinyFusion: per-group categorical keep-masks (Gumbel-softmax) learned jointly with a recovery LoRA by "
    "distillation towards the full model",
    options=("remove", "group_size", "steps", "micro_batch"),
)
