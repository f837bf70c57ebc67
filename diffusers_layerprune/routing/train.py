"""Fit a prompt router and ``K`` block codes to a pipeline under a mean-depth budget (stage 1, the shared weights
frozen), optionally fine-tune the shared weights with hard routing (stage 2), and save the routed pipeline.

Stage 1 loss, per batch of training prompts (teacher = the same transformer with every block):

- ``output``: MSE between the gated student's and the teacher's transformer outputs (all channels);
- ``feature``: mean over blocks of the normalised MSE between the hidden states after each block (a skipped block
  passes its input through, so it is compared with what the teacher's block made of it);
- ``budget``: ``((E[blocks run] - B) / L)^2`` with the expectation over the router's softmax and the codes' gate
  probabilities;
- ``contrastive``: cross-entropy between the router's code distribution and a target assignment: the Sinkhorn
  plan of the router's scores with uniform or budget-weighted code marginals (APTP's optimal-transport-balanced
  prompt/architecture contrast), or, with ``marginals="none"``, the router's own argmax (no balancing).

Prompts are assigned with a straight-through Gumbel-softmax and codes gated with a straight-through
Gumbel-sigmoid, so forward passes are hard and gradients reach both. At the end the codes are thresholded and, if
the routed mean depth on the training prompts exceeds the budget, the most used code loses its least likely block
until it does not: the saved routing meets the budget on its training prompts by construction.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..elastic import RECORD_FILE as ELASTIC_RECORD
from ..errors import LayerPruneError
from . import MARGINALS
from .codes import FixedCodes, RoutingCodes, straight_through_one_hot
from .gating import gated_blocks
from .record import CodeStats, Routing, RoutingRecord, budget_blocks, transformer_fingerprint
from .router import PromptRouter, pooled_text_embedding
from .transport import budgeted_assignment, code_marginals, sinkhorn


@dataclass(frozen=True)
class RoutingSettings:
    """Settings of :func:`train_routed` (defaults fit the toy world on a CPU in about a minute).

    Attributes:
        num_codes: ``K``, the number of architecture codes.
        budget: mean blocks run per prompt: a fraction of the depth in (0, 1), or a block count in [1, depth).
        min_blocks: every code runs at least this many blocks.
        steps / batch_size / learning_rate: stage 1 (router and codes; the transformer's weights are frozen).
        marginals: ``uniform``, ``budget`` or ``none`` (no optimal transport), see :mod:`.transport`.
        output_weight / feature_weight / budget_weight / contrastive_weight: loss weights.
        gate_temperature / router_temperature: ``(start, end)`` of the geometric annealing of the two relaxations.
        sinkhorn_epsilon: entropic regularisation of the transport plan (in units of the router's logits).
        finetune_steps / finetune_batch_size / finetune_learning_rate: stage 2 (hard routing, shared weights trained
            with train_distill's losses: task + output + variance + feature KD); 0 steps skips it.
        teacher_steps / guidance_scale: sampler of the teacher latents the training noise is added to.
        num_closest: prompts reported per code.
        seed: every random draw (initialisation, batches, noise, relaxations).
        fixed_codes: the codes as given, not learned: the blocks each code runs (e.g. an elastic run's nested
            depths, :func:`elastic_codes`); only the router is trained, and the routing meets the budget on the
            training prompts through a depth penalty (``RoutingRecord.depth_penalty``) instead of trimming codes.
            ``num_codes`` must then be their number.
    """

    num_codes: int | None = 4
    budget: float = 0.75
    min_blocks: int = 1
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-2
    marginals: str = "uniform"
    output_weight: float = 1.0
    feature_weight: float = 1.0
    budget_weight: float = 20.0
    contrastive_weight: float = 1.0
    gate_temperature: tuple[float, float] = (1.0, 0.2)
    router_temperature: tuple[float, float] = (1.0, 0.3)
    sinkhorn_epsilon: float = 0.05
    finetune_steps: int = 0
    finetune_batch_size: int = 16
    finetune_learning_rate: float = 2e-4
    teacher_steps: int | None = None
    guidance_scale: float | None = None
    num_closest: int = 3
    seed: int = 0
    fixed_codes: tuple[tuple[int, ...], ...] | None = None


def check_settings(settings: RoutingSettings, num_layers: int) -> float:
    """Check ``settings`` against a depth; return the budget in blocks. Raises :class:`LayerPruneError`."""
    k = settings.num_codes
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LayerPruneError(f"--num-codes must be a whole number >= 1, got {k!r}")
    if not isinstance(settings.min_blocks, int) or not 1 <= settings.min_blocks <= num_layers:
        raise LayerPruneError(f"--min-blocks must be in 1..{num_layers}, got {settings.min_blocks!r}")
    budget = budget_blocks(settings.budget, num_layers)
    if settings.fixed_codes is not None:
        _check_fixed_codes(settings.fixed_codes, k, num_layers, budget)
    elif budget < settings.min_blocks:
        raise LayerPruneError(
            f"--budget {budget:g} blocks is below the smallest code ({settings.min_blocks} block"
            f"{'s' if settings.min_blocks > 1 else ''}, --min-blocks): no routing can meet it; raise the budget"
        )
    if settings.marginals not in MARGINALS:
        raise LayerPruneError(f"unknown --marginals {settings.marginals!r}; choose one of {', '.join(MARGINALS)}")
    for name in ("steps", "batch_size", "finetune_batch_size", "num_closest"):
        if getattr(settings, name) < 1:
            raise LayerPruneError(f"{name} must be >= 1, got {getattr(settings, name)}")
    if settings.finetune_steps < 0:
        raise LayerPruneError(f"finetune_steps must be >= 0, got {settings.finetune_steps}")
    return budget


def _check_fixed_codes(codes, num_codes: int, num_layers: int, budget: float) -> None:
    if len(codes) != num_codes:
        raise LayerPruneError(f"--num-codes {num_codes} but {len(codes)} codes are given: leave --num-codes out")
    for k, blocks in enumerate(codes):
        if not blocks or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in blocks):
            raise LayerPruneError(f"code {k} must list blocks in 0..{num_layers - 1}, got {list(blocks)}")
    shallowest = min(len(set(blocks)) for blocks in codes)
    if budget < shallowest:
        raise LayerPruneError(
            f"--budget {budget:g} blocks is below the shallowest code ({shallowest} blocks): no routing can meet it; "
            f"give a budget of at least {shallowest}"
        )


def elastic_codes(folder: str | os.PathLike) -> tuple[tuple[tuple[int, ...], ...], dict]:
    """The codes of a router over the trained depths of an elastic run's ``folder`` (``train_distill
    --elastic_depths``): one code per depth, largest first, each the blocks of the folder's (largest-depth) model
    that the depth keeps; since the depths are nested, every code is a subset of the largest. Also the record's
    ``elastic`` entry (depths and each depth's blocks in the source's numbering). Loads no weights."""
    from ..elastic import check_elastic_folder

    record, _ = check_elastic_folder(folder)
    largest = record.kept(record.depths[0])
    codes = []
    for depth in record.depths:
        keep = set(record.kept(depth))
        codes.append(tuple(i for i, source in enumerate(largest) if source in keep))
    return tuple(codes), {"depths": list(record.depths), "kept_layers": dict(record.kept_layers)}


def _anneal(pair: tuple[float, float], step: int, total: int) -> float:
    start, end = pair
    return start * (end / start) ** (step / max(total - 1, 1))


def teacher_latents(pipe, prompts, settings: RoutingSettings, defaults: dict, log=print):
    """``(prompt_embeds [N, L, D], masks [N, L], clean latents [N, C, h, w])``: the full model's generations of
    ``prompts`` (seed ``100003 * settings.seed + i``), the data both stages add noise to. ``defaults``:
    :func:`~diffusers_layerprune.modeling.generation_defaults`. Pass the result as ``teacher_data`` to reuse it."""
    from ..data import encode_prompts
    from ..modeling import generate_from_embeddings

    msl = defaults["max_sequence_length"]
    embeds, masks = encode_prompts(pipe, prompts, max_sequence_length=msl)
    guidance = defaults["guidance_scale"] if settings.guidance_scale is None else settings.guidance_scale
    negative = encode_prompts(pipe, [""], max_sequence_length=msl) if guidance > 1 else None
    started = time.perf_counter()
    latents = generate_from_embeddings(
        pipe,
        embeds,
        masks,
        negative,
        seeds=[settings.seed * 100_003 + i for i in range(len(prompts))],
        num_inference_steps=settings.teacher_steps or defaults["num_inference_steps"],
        guidance_scale=guidance,
        resolution=defaults["resolution"],
        max_sequence_length=msl,
        batch_size=32,
        output_type="latent",
    )
    log(f"teacher latents of {len(prompts)} prompts in {time.perf_counter() - started:.1f}s")
    return embeds, masks, latents


def _noisy_batch(pipe, latents, index, generator):
    scheduler = pipe.scheduler
    x0 = latents[index]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
    return scheduler.add_noise(x0, noise, t), noise, t, x0


def _cond(embeds, masks, t, device, dtype):
    return dict(
        encoder_hidden_states=embeds.to(device, dtype),
        encoder_attention_mask=masks.to(device),
        timestep=t.to(device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def _normalised_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    teacher = teacher.detach().float()
    return F.mse_loss(student.float(), teacher) / teacher.pow(2).mean().clamp_min(1e-12)


def fit_router_and_codes(
    transformer,
    router: PromptRouter,
    codes: RoutingCodes,
    data: dict,
    settings: RoutingSettings,
    budget: float,
    pipe,
    log: Callable = print,
) -> list[dict]:
    """Stage 1: train ``router`` and ``codes`` in place on ``data`` (``embeds``, ``masks``, ``latents``,
    ``pooled``), the transformer frozen. Returns the loss log (one dict every 10 steps and at the end)."""
    from ..blocks import capture_block_features

    device, dtype = transformer.device, transformer.dtype
    generator = torch.Generator().manual_seed(settings.seed)
    params = [p for p in transformer.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([*router.parameters(), *codes.parameters()], lr=settings.learning_rate)
    n, num_layers = len(data["pooled"]), codes.num_layers
    history = []
    try:
        with gated_blocks(transformer) as gates:
            for step in range(settings.steps):
                index = torch.randperm(n, generator=generator)[: settings.batch_size]
                noisy, _, t, _ = _noisy_batch(pipe, data["latents"], index, generator)
                cond = _cond(data["embeds"][index], data["masks"][index], t, device, dtype)
                noisy = noisy.to(device, dtype)
                gates.mask = None
                with torch.no_grad(), capture_block_features(transformer, inputs=False) as t_feat:
                    teacher_out = transformer(noisy, **cond).sample
                scores = router(data["pooled"][index].to(device))
                assign = straight_through_one_hot(
                    scores, _anneal(settings.router_temperature, step, settings.steps), generator=generator
                )
                gate_values = codes.sample(
                    _anneal(settings.gate_temperature, step, settings.steps), generator=generator
                )
                gates.mask = assign @ gate_values.to(assign)
                with capture_block_features(transformer, inputs=False, detach=False) as s_feat:
                    student_out = transformer(noisy, **cond).sample
                gates.mask = None
                output = F.mse_loss(student_out.float(), teacher_out.float())
                feature = torch.stack(
                    [_normalised_mse(s_feat.outputs[i], t_feat.outputs[i]) for i in range(num_layers)]
                ).mean()
                probs = torch.softmax(scores, dim=-1)
                depths = codes.expected_depths().to(probs)
                expected = (probs @ depths).mean()
                budget_term = ((expected - budget) / num_layers) ** 2
                columns = code_marginals(settings.marginals, codes.num_codes, depths, budget)
                if columns is None:
                    target = F.one_hot(scores.argmax(-1), codes.num_codes).to(probs)
                else:
                    rows = torch.full((len(index),), 1.0 / len(index))
                    plan = sinkhorn(scores.detach().cpu(), rows, columns.cpu(), epsilon=settings.sinkhorn_epsilon)
                    target = (plan * len(index)).to(probs)
                contrastive = -(target * torch.log_softmax(scores, dim=-1)).sum(-1).mean()
                loss = (
                    settings.output_weight * output
                    + settings.feature_weight * feature
                    + settings.budget_weight * budget_term
                    + settings.contrastive_weight * contrastive
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step % 10 == 0 or step == settings.steps - 1:
                    record = {
                        "step": step,
                        "loss": float(loss.detach()),
                        "output": float(output.detach()),
                        "feature": float(feature.detach()),
                        "budget": float(budget_term.detach()),
                        "contrastive": float(contrastive.detach()),
                        "expected_blocks": float(expected.detach()),
                    }
                    history.append(record)
                    if step % 50 == 0 or step == settings.steps - 1:
                        log(
                            f"step {step}: loss {record['loss']:.4f} (output {record['output']:.4f}, feature "
                            f"{record['feature']:.4f}), expected blocks {record['expected_blocks']:.2f}"
                        )
    finally:
        for p, flag in zip(params, was, strict=True):
            p.requires_grad_(flag)
    return history


def binarize(
    codes: RoutingCodes, assignment: torch.Tensor, budget: float, min_blocks: int
) -> tuple[list[list[int]], float]:
    """Threshold the codes, then trim the most used code's least likely block while the routed mean depth over
    ``assignment`` (code per prompt ``[N]``) exceeds ``budget``. Returns kept blocks per code and the mean depth."""
    kept = codes.binary(min_blocks)
    logits = codes.logits.detach()
    counts = torch.bincount(assignment, minlength=codes.num_codes).double()
    shares = counts / counts.sum()

    def mean_depth() -> float:
        return float(sum(shares[k] * len(kept[k]) for k in range(codes.num_codes)))

    while mean_depth() > budget + 1e-9:
        candidates = [k for k in range(codes.num_codes) if shares[k] > 0 and len(kept[k]) > min_blocks]
        if not candidates:  # cannot happen when budget >= min_blocks (checked); kept as a guard
            raise LayerPruneError(f"cannot meet the budget of {budget:g} blocks with --min-blocks {min_blocks}")
        k = max(candidates, key=lambda c: (float(shares[c]), len(kept[c])))
        drop = min(kept[k], key=lambda i: float(logits[k, i]))
        kept[k] = [i for i in kept[k] if i != drop]
    return kept, mean_depth()


def finetune_shared_weights(
    pipe,
    routing_kept: list[list[int]],
    assignment: torch.Tensor,
    data: dict,
    settings: RoutingSettings,
    log=print,
    *,
    accelerator=None,
) -> list[dict]:
    """Stage 2: train the shared transformer weights with hard routing against a frozen copy of themselves (the
    full-depth teacher), with train_distill's losses (:func:`~diffusers_layerprune.distill.kd_losses`, weights
    1.0, feature MSE on every block a code runs) and its optimiser (AdamW, weight decay 1e-2, gradient clipping
    1.0). Each batch is split by code; every group runs with its code's blocks skipped.

    ``accelerator`` (an ``accelerate.Accelerator`` of a run started with ``accelerate launch``): every process
    draws the same global batch and noise, takes every ``num_processes``-th sample, and the gradients (normalised
    by the global batch) are summed over processes before the step, so N processes train like one (up to float
    summation order). Groups differ between processes, so gradients are all-reduced by hand rather than by DDP."""
    from ..blocks import capture_block_features, get_blocks, num_blocks, skip_blocks
    from ..distill import KDWeights, kd_losses, task_target

    student = pipe.transformer
    flags = [p.requires_grad for p in student.parameters()]
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    student.requires_grad_(True)
    device, dtype = student.device, student.dtype
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.finetune_learning_rate, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    weights = KDWeights()
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    n = len(assignment)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    history = []
    for step in range(settings.finetune_steps):
        index = torch.randperm(n, generator=generator)[: settings.finetune_batch_size]
        noisy, noise, t, x0 = _noisy_batch(pipe, data["latents"], index, generator)
        target = task_target(prediction_type, x0, noise, pipe.scheduler, t)
        optimizer.zero_grad(set_to_none=True)
        total = {}
        mine = torch.zeros(len(index), dtype=torch.bool)
        mine[rank::world] = True
        for k in sorted(set(assignment[index][mine].tolist())):
            rows = index[(assignment[index] == k) & mine]
            pos = ((assignment[index] == k) & mine).nonzero().flatten()
            kept = routing_kept[k]
            cond = _cond(data["embeds"][rows], data["masks"][rows], t[pos], device, dtype)
            with torch.no_grad(), capture_block_features(teacher, kept, inputs=False) as t_feat:
                teacher_out = teacher(noisy[pos].to(device, dtype), **cond).sample
            skipped = [i for i in range(num_blocks(student)) if i not in set(kept)]
            with capture_block_features(student, kept, inputs=False, detach=False) as s_feat:
                with skip_blocks(student, skipped):
                    student_out = student(noisy[pos].to(device, dtype), **cond).sample
            parts = kd_losses(
                student_out,
                teacher_out,
                target[pos].to(device),
                s_feat.outputs,
                t_feat.outputs,
                [(i, i) for i in kept],
                weights,
            )
            share = len(rows) / len(index)
            (parts["loss"] * share).backward()
            for name, value in parts.items():
                total[name] = total.get(name, 0.0) + share * float(value.detach())
        if world > 1:
            for param in student.parameters():
                if param.grad is None:  # a block no code of this process's samples ran
                    param.grad = torch.zeros_like(param)
                torch.distributed.all_reduce(param.grad)
            # blocks no sample of the global batch ran keep no gradient, as in one process (AdamW skips them)
            ran = set().union(*(routing_kept[k] for k in set(assignment[index].tolist())))
            for i, block in enumerate(get_blocks(student)):
                if i not in ran:
                    for param in block.parameters():
                        param.grad = None
            for name in list(total):
                total[name] = float(accelerator.reduce(torch.tensor(total[name], device=device), "sum"))
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == settings.finetune_steps - 1:
            history.append({"step": step, **total})
            if step % 100 == 0 or step == settings.finetune_steps - 1:
                log(f"fine-tune step {step}: loss {total['loss']:.4f}")
    student.eval()
    for p, flag in zip(student.parameters(), flags, strict=True):
        p.requires_grad_(flag)
    return history


def train_routed(
    pipe,
    prompts: Sequence[str],
    settings: RoutingSettings | None = None,
    *,
    model_name: str | None = None,
    teacher_data: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    log: Callable | None = None,
    **overrides,
):
    """Fit a router and ``K`` codes to ``pipe`` (a PixArt pipeline, possibly already pruned) on ``prompts`` and
    return a :class:`~diffusers_layerprune.routing.RoutedPixArtSigmaPipeline` sharing ``pipe``'s components.

    ``teacher_data``: the output of :func:`teacher_latents` for the same pipeline and prompts, to reuse it.
    ``settings`` (:class:`RoutingSettings`) or keyword ``overrides`` of its fields; the budget counts blocks of
    ``pipe``'s transformer (for a pruned model: of the pruned depth). With ``finetune_steps > 0`` the shared weights
    are then fine-tuned in place with hard routing. ``model_name`` is the model's name as given (for defaults and
    the record). The result's ``routing.record`` says per code its blocks, share of ``prompts`` and the prompts
    closest to its centre, and ``record.mean_blocks <= budget`` on ``prompts``.
    """
    from ..blocks import num_blocks
    from ..families import all_families, family_of
    from ..modeling import generation_defaults
    from ..provenance import public_name
    from .pipeline import RoutedPixArtSigmaPipeline

    log = log or (lambda *a: None)
    settings = RoutingSettings(**{**asdict(settings or RoutingSettings()), **overrides})
    transformer = pipe.transformer
    family = family_of(transformer)
    if not family.routing:
        supported = " and ".join(f.title for f in all_families() if f.routing)
        raise LayerPruneError(
            f"prompt routing supports {supported} pipelines for now, not {family.title} "
            f"({family.transformer_class}): its router reads {supported}'s text embeddings and its forward"
        )
    num_layers = num_blocks(transformer)
    budget = check_settings(settings, num_layers)
    prompts = [str(p) for p in prompts]
    if len(prompts) < settings.num_codes:
        raise LayerPruneError(f"{len(prompts)} prompts for {settings.num_codes} codes: give at least one per code")
    model_name = model_name or pipe.name_or_path or "model"
    defaults = generation_defaults(model_name, pipe)
    if teacher_data is None:
        teacher_data = teacher_latents(pipe, prompts, settings, defaults, log)
    embeds, masks, latents = teacher_data
    pooled = pooled_text_embedding(embeds, masks)
    data = {"embeds": embeds, "masks": masks, "latents": latents, "pooled": pooled}
    torch.manual_seed(settings.seed)  # the router's initialisation
    router = PromptRouter(pooled.shape[-1], settings.num_codes)
    init = torch.Generator().manual_seed(settings.seed)
    if settings.fixed_codes is not None:
        codes = FixedCodes([list(c) for c in settings.fixed_codes], num_layers)
    else:
        codes = RoutingCodes(settings.num_codes, num_layers, budget, generator=init)
    router.to(transformer.device)
    codes.to(transformer.device)
    started = time.perf_counter()
    history = fit_router_and_codes(transformer, router, codes, data, settings, budget, pipe, log)
    fit_seconds = time.perf_counter() - started
    router.eval()
    depth_penalty = 0.0
    if settings.fixed_codes is not None:
        # the codes cannot lose blocks (their weights were trained for exactly these sets): meet the budget by
        # moving the prompts the router is least sure about to shallower codes, a penalty per block the router keeps
        with torch.no_grad():
            scores = router(pooled.to(transformer.device)).cpu()
        depths = codes.expected_depths().cpu()
        assignment, depth_penalty = budgeted_assignment(scores, depths, budget)
        kept = codes.binary()
        mean_blocks = float(depths[assignment].mean())
    else:
        assignment = router.route(pooled.to(transformer.device)).cpu()
        kept, mean_blocks = binarize(codes, assignment, budget, settings.min_blocks)
    finetune_history, finetune_seconds = [], 0.0
    if settings.finetune_steps:
        started = time.perf_counter()
        finetune_history = finetune_shared_weights(pipe, kept, assignment, data, settings, log)
        finetune_seconds = time.perf_counter() - started
    counts = torch.bincount(assignment, minlength=settings.num_codes)
    with torch.no_grad():
        points = router.embed(pooled.to(transformer.device)).cpu()
        centres = F.normalize(router.centres.detach().cpu(), dim=-1)
    stats = []
    for k in range(settings.num_codes):
        members = (assignment == k).nonzero().flatten()
        pool = members if len(members) else torch.arange(len(prompts))
        similarity = points[pool] @ centres[k]
        order = pool[similarity.argsort(descending=True)][: settings.num_closest]
        stats.append(
            CodeStats(
                kept_layers=kept[k],
                share=float(counts[k]) / len(prompts),
                closest_prompts=[prompts[i] for i in order.tolist()],
            )
        )
    config = transformer.config
    record = RoutingRecord(
        num_layers=num_layers,
        budget=budget,
        codes=stats,
        router=router.config(),
        transformer_sha256=transformer_fingerprint(transformer),
        mean_blocks=mean_blocks,
        source_model=public_name(config.get("source_model") or model_name),
        source_num_layers=config.get("source_num_layers"),
        kept_layers=list(config["kept_layers"]) if config.get("kept_layers") else None,
        depth_penalty=float(depth_penalty),
        training={
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
            "teacher": {
                "max_sequence_length": defaults["max_sequence_length"],
                "num_inference_steps": settings.teacher_steps or defaults["num_inference_steps"],
                "guidance_scale": defaults["guidance_scale"]
                if settings.guidance_scale is None
                else settings.guidance_scale,
                "resolution": defaults["resolution"],
            },
            "num_prompts": len(prompts),
            "fit_seconds": round(fit_seconds, 2),
            "finetune_seconds": round(finetune_seconds, 2),
            "history": history,
            "finetune_history": finetune_history,
        },
    )
    return RoutedPixArtSigmaPipeline(pipe, Routing(record, router))


def route_to_folder(
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    prompts: str | None = None,
    prompt_column: str | None = None,
    num_prompts: int | None = None,
    settings: RoutingSettings | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    revision: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    log: Callable | None = None,
    **overrides,
):
    """``layerprune route``: check everything before loading weights, load ``model``, :func:`train_routed` on the
    prompts of ``prompts`` (a ``--prompts`` spec; default: the model's training prompts), and save the routed
    pipeline to ``output_dir`` (complete or not at all). Returns the routed pipeline.

    ``model`` may be an elastic run's folder (``train_distill --elastic_depths``): the codes are then its trained
    depths (:func:`elastic_codes`; ``settings.num_codes`` ``None`` or their number), the router alone is trained,
    and the routed pipeline is the run's largest-depth model whose blocks each prompt's depth skips."""
    from ..data import load_prompts
    from ..modeling import check_device, generation_defaults, load_pipeline, read_transformer_config, resolve_dtype
    from ..outputs import check_output_dir
    from ..provenance import local_inputs

    log = log or (lambda *a: None)
    settings = RoutingSettings(**{**asdict(settings or RoutingSettings()), **overrides})
    inputs = local_inputs(model, base_model)
    elastic = None
    if (Path(model).expanduser() / ELASTIC_RECORD).is_file():
        if base_model or revision:
            flag = "--base-model" if base_model else "--revision"
            raise LayerPruneError(f"{flag} does not apply to an elastic run's folder (a local pipeline): leave it out")
        codes, elastic = elastic_codes(model)
        if settings.fixed_codes is not None:
            raise LayerPruneError("an elastic run's folder brings its own codes (its depths): give no other codes")
        settings = replace(settings, fixed_codes=codes, num_codes=settings.num_codes or len(codes))
        log(f"{model} is an elastic run: routing among its trained depths {elastic['depths']} (one code each)")
    elif settings.num_codes is None:
        raise LayerPruneError(
            "--num-codes K is required (only an elastic run's folder brings its own codes, one per trained depth)"
        )
    check_output_dir(output_dir, overwrite=overwrite, inputs=inputs)
    config = read_transformer_config(model, revision=revision)
    if config is not None:
        check_settings(settings, int(config["num_layers"]))
        if config.get("kept_layers"):
            log(
                f"{model} is already pruned ({config['num_layers']} of {config.get('source_num_layers', '?')} blocks):"
                f" the budget counts blocks of the pruned model"
            )
    if num_prompts is not None and num_prompts < 1:
        raise LayerPruneError(f"--num-prompts must be at least 1, got {num_prompts}")
    torch_dtype = resolve_dtype(dtype, model)
    check_device(device, torch_dtype)
    pipe = load_pipeline(model, torch_dtype=torch_dtype, revision=revision, base_model=base_model, device=device)
    pipe.set_progress_bar_config(disable=True)
    if config is None:
        check_settings(settings, len(pipe.transformer.transformer_blocks))
    spec = prompts or generation_defaults(model, pipe)["train_prompts"]
    prompt_set = load_prompts(spec, column=prompt_column, limit=num_prompts)
    routed = train_routed(pipe, prompt_set.prompts, settings, model_name=str(model), log=log)
    from ..provenance import public_name

    prompt_record = prompt_set.record()
    prompt_record["source"] = public_name(prompt_record.get("source"))
    routed.routing.record.training["prompts"] = prompt_record
    routed.routing.record.elastic = elastic
    routed.save_pretrained(output_dir, overwrite=overwrite, inputs=inputs)
    return routed
