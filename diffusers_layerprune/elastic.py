"""Elastic depth: one distillation run that trains nested students of several depths, and extraction of any trained
depth as an ordinary pruned model.

Nesting. The student holds the blocks of the largest depth (a model pruned from the teacher, e.g. with
``layerprune prune --importance FILE --num-layers D``). Each smaller depth removes the student's blocks in importance
order, least important first, so every smaller depth keeps a subset of the blocks of every larger one. A block that
is the last one left in its stack (Flux: its double-stream or its single-stream blocks) is passed over: a pruned
model keeps at least one block of each stack. Indices are global across stacks (Flux: double blocks first).

Training. Each optimisation step runs the largest depth, the smallest and one middle depth drawn from
``(seed, step)``, uniformly or with ``middle_weights`` (the "sandwich rule" of Yu & Huang, *Universally Slimmable Networks and Improved Training
Techniques*, ICCV 2019; nested sub-networks sharing weights as in Cai et al., *Once-for-All*, ICLR 2020). A depth
runs the student with its other blocks skipped (:func:`~diffusers_layerprune.blocks.skip_blocks`: no copy), and is
distilled from the teacher: task loss and output KD at every depth; feature KD (each kept block against its teacher
block) at the largest depth only by default (``feature_kd="largest"``): with feature KD at every depth, the smaller
depths' larger feature errors pulled the shared blocks and cost the largest depth 8 points of accuracy on the toy
world (docs/elastic.md); ``"all"`` restores it. With ``inplace_distill`` the smaller depths also learn the largest
depth's prediction (Yu & Huang's inplace distillation). The teacher runs once per step; the depths' losses are summed
(``loss_balance="sum"``) or each divided by a detached value first: its own total (``"normalized"``: every depth's
gradient is that of its log-loss) or its output-level loss, the total less feature KD (``"normalized_output"``: the
loss every depth has) and back-propagated once, so the accelerate / DDP step is
the ordinary one (the largest depth uses every weight).

Output. The run's folder is an ordinary pruned pipeline of the largest depth (stock diffusers loads it) plus
``elastic.json`` (:class:`ElasticRecord`: the depths and each depth's kept blocks in the source's numbering).
:func:`extract_depth` (``layerprune extract``) turns any trained depth into an ordinary pruned folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LayerPruneError

RECORD_FILE = "elastic.json"
RECORD_FORMAT = "diffusers-layerprune/elastic-depths"
RECORD_FORMAT_VERSION = 1
SCHEDULE = "sandwich"
LOSS_BALANCES = ("sum", "normalized", "normalized_output")

__all__ = ["RECORD_FILE", "ElasticPlan", "ElasticRecord", "depth_list", "check_depths", "nested_kept_layers",
           "elastic_step_losses", "extract_depth", "read_elastic_record"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Depths and nesting
# ----------------------------------------------------------------------------------------------------------------


def depth_list(text: str) -> list[int]:
    """argparse type of ``--elastic_depths``: comma-separated block counts such as ``21,17,14``."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        depths = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block counts such as 21,17,14, got {text!r}") from None
    if not depths:
        raise argparse.ArgumentTypeError("expected at least two block counts such as 21,17,14")
    return depths


def check_depths(depths: Sequence[int], source_depth: int, *, min_depth: int = 1) -> list[int]:
    """Refuse depths a nested run cannot train: fewer than two, duplicated, not descending, or outside
    ``min_depth..source_depth - 1`` (``min_depth``: one block per stack)."""
    depths = list(depths)
    if len(depths) < 2:
        raise LayerPruneError(
            f"--elastic_depths needs two or more depths (got {depths}); to distil one depth leave --elastic_depths out"
        )
    duplicates = sorted({d for d in depths if depths.count(d) > 1}, reverse=True)
    if duplicates:
        raise LayerPruneError(f"--elastic_depths lists depth {duplicates[0]} more than once ({depths})")
    if any(b > a for a, b in zip(depths, depths[1:], strict=False)):
        raise LayerPruneError(
            f"--elastic_depths must be in descending order, largest first (got {depths}; e.g. "
            f"{','.join(map(str, sorted(depths, reverse=True)))})"
        )
    bad = [d for d in depths if not min_depth <= d < source_depth]
    if bad:
        raise LayerPruneError(
            f"--elastic_depths {bad} out of range: the source has {source_depth} blocks, so a pruned depth is "
            f"{min_depth}..{source_depth - 1}"
        )
    return depths


def nested_kept_layers(
    ranking: Sequence[int],
    student_kept: Sequence[int],
    depths: Sequence[int],
    stack_depths: Sequence[int] = (),
) -> dict[int, list[int]]:
    """Each depth's kept blocks (source numbering, sorted): ``student_kept`` for the largest depth, then blocks
    removed in ``ranking`` order (least important first), so each depth's blocks are a subset of the previous one's.

    ``stack_depths``: the source's depth per stack (Flux: ``[num_layers, num_single_layers]``); a block that is the
    last of its stack is not removed. ``depths`` are checked with :func:`check_depths` first.
    """
    kept = sorted(student_kept)
    if len(kept) != depths[0]:
        raise LayerPruneError(
            f"the student has {len(kept)} blocks but the largest --elastic_depths is {depths[0]}: the student holds "
            f"the largest depth (prune it with `layerprune prune --importance FILE --num-layers {depths[0]}`, or "
            f"start --elastic_depths with {len(kept)})"
        )
    stack_of = _stack_index(stack_depths)
    order = [i for i in ranking if i in set(kept)]
    current, result = list(kept), {depths[0]: list(kept)}
    for depth in depths[1:]:
        for block in list(order):
            if len(current) == depth:
                break
            same_stack = [b for b in current if stack_of(b) == stack_of(block)]
            if len(same_stack) == 1:
                continue  # the last block of its stack stays
            current.remove(block)
            order.remove(block)
        if len(current) != depth:
            raise LayerPruneError(
                f"depth {depth} would leave a stack without blocks; the smallest depth is {len(current)} "
                f"(one block per stack)"
            )
        result[depth] = sorted(current)
    return result


def _stack_index(stack_depths: Sequence[int]) -> Callable[[int], int]:
    bounds, start = [], 0
    for depth in stack_depths:
        start += depth
        bounds.append(start)

    def stack_of(block: int) -> int:
        return next((s for s, end in enumerate(bounds) if block < end), 0)

    return stack_of


@dataclass(frozen=True)
class ElasticPlan:
    """The nested depths of one run: ``kept[d]`` lists depth ``d``'s blocks in the source's numbering;
    ``student_kept`` the student's (= ``kept[depths[0]]``); ``middle_weights`` the relative probabilities of the
    middle depths (``depths[1:-1]``) a step draws, ``None``: uniform."""

    depths: tuple[int, ...]
    kept: Mapping[int, tuple[int, ...]]
    student_kept: tuple[int, ...]
    middle_weights: tuple[float, ...] | None = None

    def dropped(self, depth: int) -> list[int]:
        """Student block indices (global) that depth ``depth`` skips."""
        keep = set(self.kept[depth])
        return [i for i, source in enumerate(self.student_kept) if source not in keep]

    def local_kept(self, depth: int) -> list[int]:
        """Student block indices (global) that depth ``depth`` keeps."""
        keep = set(self.kept[depth])
        return [i for i, source in enumerate(self.student_kept) if source in keep]

    def step(self, args, step: int, autocast: Callable | None = None) -> Callable[..., dict]:
        """The loss function of optimisation step ``step`` of ``train_distill`` (``args``: its options), with
        :func:`~diffusers_layerprune.distill.kd_step_losses`'s signature: :func:`elastic_step_losses` bound to this
        plan. ``autocast`` returns a fresh mixed-precision context per forward (``accelerator.autocast``); the
        single context the caller passes is not entered."""

        factory = autocast

        def losses(
            student,
            teacher,
            noisy,
            cond,
            target,
            pairs,
            weights,
            *,
            student_blocks=None,
            autocast=None,
            sample_weights=None,
        ):
            return elastic_step_losses(
                student, teacher, noisy, cond, target, pairs, weights, self, seed=args.seed, step=step,
                inplace_distill=args.elastic_inplace_distill, student_blocks=student_blocks, autocast=factory,
                feature_kd=args.elastic_feature_kd, sample_weights=sample_weights,
                loss_balance=args.elastic_loss_balance,
            )  # fmt: skip

        return losses

    def depths_for_step(self, seed: int, step: int) -> list[int]:
        """The depths trained at optimisation step ``step``: largest, smallest and (with three or more depths) one
        middle depth drawn from ``(seed, step)`` (with ``middle_weights``' probabilities), so a resumed run draws what
        an uninterrupted one does."""
        chosen = [self.depths[0], self.depths[-1]]
        middle = list(self.depths[1:-1])
        if middle:
            rng = random.Random(seed * 1_000_003 + step)
            draw = rng.choice(middle) if self.middle_weights is None else rng.choices(middle, self.middle_weights)[0]
            chosen.insert(1, draw)
        return chosen


# ----------------------------------------------------------------------------------------------------------------
# The record: elastic.json
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ElasticRecord:
    """``elastic.json`` of an elastic run's folder (no weights: those are the folder's largest-depth model).

    Attributes:
        source_model / source_num_layers: the teacher the depths are pruned from (public name) and its depth.
        depths: trained depths, largest first; ``kept_layers[str(d)]``: depth ``d``'s blocks, source numbering.
        importance: the importance file that ordered the removals (criterion, model, sha256 of the file).
        schedule / middle_weights / inplace_distill / loss_balance / steps: how the depths were trained.
    """

    source_model: str | None
    source_num_layers: int
    depths: list[int]
    kept_layers: dict[str, list[int]]
    importance: dict = field(default_factory=dict)
    schedule: str = SCHEDULE
    inplace_distill: bool = False
    steps: int | None = None
    loss_balance: str = "sum"
    middle_weights: list[float] | None = None

    @classmethod
    def from_plan(cls, plan: ElasticPlan, *, source_model, source_num_layers: int, importance: dict, **kw):
        kept = {str(d): list(plan.kept[d]) for d in plan.depths}
        return cls(source_model, source_num_layers, list(plan.depths), kept, importance, **kw)

    def to_dict(self) -> dict:
        return {
            "format": RECORD_FORMAT,
            "format_version": RECORD_FORMAT_VERSION,
            "source_model": self.source_model,
            "source_num_layers": self.source_num_layers,
            "depths": self.depths,
            "kept_layers": self.kept_layers,
            "importance": self.importance,
            "schedule": self.schedule,
            "middle_weights": self.middle_weights,
            "inplace_distill": self.inplace_distill,
            "loss_balance": self.loss_balance,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = RECORD_FILE) -> ElasticRecord:
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise LayerPruneError(
                f"{source} is not an elastic-depth record (written by train_distill --elastic_depths)"
            )
        if not isinstance(data.get("format_version"), int) or data["format_version"] > RECORD_FORMAT_VERSION:
            raise LayerPruneError(f"{source} was written by a newer diffusers-layerprune; upgrade the package")
        damaged = LayerPruneError(f"{source} is damaged or hand-edited; re-create it by training again")
        depths, kept, total = data.get("depths"), data.get("kept_layers"), data.get("source_num_layers")
        if not isinstance(total, int) or not isinstance(depths, list) or not isinstance(kept, dict):
            raise damaged
        try:
            check_depths(depths, total)
        except LayerPruneError as error:
            raise damaged from error
        previous = None
        for d in depths:
            blocks = kept.get(str(d))
            if not isinstance(blocks, list) or len(blocks) != d or sorted(set(blocks)) != blocks:
                raise damaged
            if any(not isinstance(b, int) or not 0 <= b < total for b in blocks):
                raise damaged
            if previous is not None and not set(blocks) <= set(previous):
                raise damaged  # not nested
            previous = blocks
        return cls(
            source_model=data.get("source_model"),
            source_num_layers=total,
            depths=list(depths),
            kept_layers={str(d): list(kept[str(d)]) for d in depths},
            importance=dict(data.get("importance") or {}),
            schedule=str(data.get("schedule", SCHEDULE)),
            inplace_distill=bool(data.get("inplace_distill", False)),
            steps=data.get("steps"),
            loss_balance=str(data.get("loss_balance", "sum")),
            middle_weights=data.get("middle_weights"),
        )

    def save(self, folder: str | os.PathLike) -> Path:
        from .outputs import atomic_output_file

        path = Path(folder) / RECORD_FILE
        with atomic_output_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def kept(self, depth: int) -> list[int]:
        return list(self.kept_layers[str(depth)])


def read_elastic_record(folder: str | os.PathLike) -> ElasticRecord | None:
    """The folder's :class:`ElasticRecord`, or ``None`` when it holds no ``elastic.json``."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerPruneError(f"{path} is damaged ({error}); re-create it by training again") from error
    return ElasticRecord.from_dict(data, str(path))


# ----------------------------------------------------------------------------------------------------------------
# The training script's part: flags, checks, settings, the step
# ----------------------------------------------------------------------------------------------------------------


def add_elastic_args(parser: argparse.ArgumentParser) -> None:
    """``train_distill``'s elastic-depth flags."""
    from .validation import weight_list

    g = parser.add_argument_group("elastic depth (one run trains nested students of several depths)")
    g.add_argument(
        "--elastic_depths",
        type=depth_list,
        default=None,
        metavar="D1,D2,...",
        help="train nested depths at once, largest first (the student's depth), e.g. 21,17,14; each step trains the "
        "largest, the smallest and one random middle depth (sandwich rule); `layerprune extract` saves any of them",
    )
    g.add_argument(
        "--importance",
        default=None,
        metavar="FILE",
        help="with --elastic_depths: the teacher's importance file (layerprune score); smaller depths drop the "
        "student's least important blocks first",
    )
    g.add_argument(
        "--elastic_feature_kd",
        default="largest",
        choices=["largest", "all"],
        help="with --elastic_depths: which depths learn the teacher's block features: the largest only (default; the "
        "smaller depths learn the teacher's output, so their feature errors do not pull the shared blocks: on the toy "
        "world, feature KD at every depth cost the largest depth 8 points, docs/elastic.md) or all",
    )
    g.add_argument(
        "--elastic_inplace_distill",
        action="store_true",
        help="with --elastic_depths: the smaller depths also learn the largest depth's prediction",
    )
    g.add_argument(
        "--elastic_middle_weights",
        type=weight_list,
        default=None,
        metavar="W1,W2,...",
        help="with --elastic_depths: one weight per middle depth (all but the largest and the smallest), largest "
        "first: the relative probability that a step draws it (default: uniform), e.g. 2,1,1",
    )
    g.add_argument(
        "--elastic_loss_balance",
        default="sum",
        choices=list(LOSS_BALANCES),
        help="with --elastic_depths: how the step's depths' losses are combined: summed (default), normalized (each "
        "depth's total divided by its own detached value: the same relative weight for every depth) or "
        "normalized_output (divided by its detached output-level loss, the total less feature KD); docs/elastic.md",
    )


def check_elastic_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line refusals of flags that need each other (before anything loads)."""
    if args.elastic_depths is None:
        for flag in ("importance", "elastic_inplace_distill", "elastic_feature_kd", "elastic_loss_balance",
                     "elastic_middle_weights"):  # fmt: skip
            if getattr(args, flag) != parser.get_default(flag):
                parser.error(f"--{flag} applies only with --elastic_depths: add --elastic_depths or leave it out")
    elif not args.importance:
        parser.error("--elastic_depths needs --importance FILE (the order in which smaller depths drop blocks)")
    elif args.elastic_middle_weights is not None and len(args.elastic_middle_weights) != len(args.elastic_depths) - 2:
        parser.error(f"--elastic_middle_weights needs one weight per middle depth {args.elastic_depths[1:-1]}")


def _file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def elastic_settings(args: argparse.Namespace) -> dict:
    """What a checkpoint records of the elastic options, so that a resume with other depths, another importance
    file (by content), another inplace setting or loss balance is refused. Recorded (as ``None``) also when off."""
    from .provenance import full_local

    settings = {"elastic_depths": args.elastic_depths, "elastic_inplace_distill": bool(args.elastic_inplace_distill)}
    settings["elastic_feature_kd"] = args.elastic_feature_kd
    settings["elastic_loss_balance"] = args.elastic_loss_balance
    settings["elastic_middle_weights"] = args.elastic_middle_weights
    settings["importance"] = full_local(args.importance) if args.importance else None
    if args.importance and Path(args.importance).expanduser().is_file():
        settings["importance content"] = _file_digest(args.importance)[:16]
    return settings


def plan_from_args(args: argparse.Namespace, student_config: Mapping, family) -> ElasticPlan | None:
    """The run's :class:`ElasticPlan` (``None`` without ``--elastic_depths``), every check made before anything is
    loaded: the importance file is the teacher's (model, family, depth) and the depths fit the student."""
    if args.elastic_depths is None:
        return None
    from .importance.result import LayerImportance, check_importance_matches

    source_depth = student_config.get("source_num_layers") or family.depth(student_config)
    stack_depths = student_config.get("source_stack_depths") or (
        [source_depth] if len(family.stacks) == 1 else family.stack_depths(student_config)
    )
    depths = check_depths(args.elastic_depths, source_depth, min_depth=len(family.stacks))
    importance = LayerImportance.load(args.importance)
    check_importance_matches(importance, source_depth, str(args.teacher_model), family.name)
    kept = nested_kept_layers(importance.ranking(), student_config["kept_layers"], depths, stack_depths)
    args.importance_record = {
        "criterion": importance.criterion,
        "model": importance.model,
        "sha256": _file_digest(args.importance),
    }
    weights = tuple(args.elastic_middle_weights) if args.elastic_middle_weights is not None else None
    return ElasticPlan(tuple(depths), {d: tuple(v) for d, v in kept.items()}, tuple(kept[depths[0]]), weights)


def elastic_step_losses(
    student,
    teacher,
    noisy,
    cond,
    target,
    pairs: Sequence[tuple[int, int]],
    weights,
    plan: ElasticPlan,
    *,
    seed: int,
    step: int,
    inplace_distill: bool = False,
    feature_kd: str = "largest",
    loss_balance: str = "sum",
    student_blocks=None,
    autocast=None,
    sample_weights=None,
) -> dict:
    """One elastic step's losses: the teacher once, then each depth of :meth:`ElasticPlan.depths_for_step` (largest
    first) with its dropped blocks skipped, each scored by :func:`~diffusers_layerprune.distill.kd_losses` on its own
    block pairs. Returns the summed terms, ``loss_largest`` / ``loss_middle`` / ``loss_smallest`` (each depth's own
    total) and ``loss``, what is back-propagated: the depths' totals summed, or each divided first by its detached
    value (``loss_balance="normalized"``: ``loss`` is then the number of depths) or by its detached output-level loss
    (``"normalized_output"``: the total less the weighted feature KD); ``loss_sum`` then holds the plain sum. The arguments are those of
    :func:`~diffusers_layerprune.distill.kd_step_losses`, except ``autocast``: a function returning a fresh context
    per forward (``accelerator.autocast``), since one context cannot be entered twice. ``sample_weights``: the flow
    objective's per-sample loss weights (``flow_objective``), applied at every depth as in a one-depth run."""
    from contextlib import nullcontext

    import torch
    import torch.nn.functional as F

    from .blocks import capture_block_features, skip_blocks
    from .distill import kd_losses

    def run(model):
        return cond(model, noisy) if callable(cond) else model(noisy, **cond).sample

    watched = student if student_blocks is None else student_blocks
    with torch.no_grad(), capture_block_features(teacher, [t for _, t in pairs], inputs=False) as t_feat:
        teacher_out = run(teacher)
    depths = plan.depths_for_step(seed, step)
    roles = ["largest", "middle", "smallest"] if len(depths) == 3 else ["largest", "smallest"]
    totals: dict = {}
    largest_pred = None
    c = target.shape[1]
    for depth, role in zip(depths, roles, strict=True):
        dropped = plan.dropped(depth)
        kept = set(plan.local_kept(depth))
        depth_pairs = [(s, t) for s, t in pairs if s in kept]
        if feature_kd == "largest" and role != "largest":
            depth_pairs = []
        # The largest depth runs through the wrapper (DDP's forward); the others through the same module's blocks.
        model = student if not dropped else watched
        with capture_block_features(watched, [s for s, _ in depth_pairs], inputs=False, detach=False) as s_feat:
            with skip_blocks(watched, dropped) if dropped else nullcontext():
                with autocast() if autocast is not None else nullcontext():
                    out = run(model)
        parts = kd_losses(
            out, teacher_out, target, s_feat.outputs, t_feat.outputs, depth_pairs, weights, sample_weights
        )
        if largest_pred is None:
            largest_pred = out[:, :c].detach().float()
        elif inplace_distill:
            parts["inplace"] = F.mse_loss(out[:, :c].float(), largest_pred)
            parts["loss"] = parts["loss"] + weights.output * parts["inplace"]
        total = parts["loss"]
        if loss_balance != "sum":  # normalized: the gradient of log(total), the same relative weight for every depth
            scale = total.detach()
            if loss_balance == "normalized_output":  # the output-level loss: what every depth is scored on
                scale = scale - weights.feature * parts.get("feature", torch.zeros(())).detach()
            parts["loss"] = total / scale.clamp_min(1e-12)
            parts["loss_sum"] = total.detach()
        for name, value in parts.items():
            totals[name] = totals[name] + value if name in totals else value
        totals[f"loss_{role}"] = total.detach()
    return totals


def distill_record(plan: ElasticPlan | None, args) -> dict | None:
    """The ``elastic`` entry of the run's ``distill_config.json`` (``None`` for a one-depth run)."""
    if plan is None:
        return None
    return {
        "depths": list(plan.depths),
        "kept_layers": {str(d): list(plan.kept[d]) for d in plan.depths},
        "schedule": SCHEDULE,
        "middle_weights": args.elastic_middle_weights,
        "inplace_distill": bool(args.elastic_inplace_distill),
        "feature_kd": args.elastic_feature_kd,
        "loss_balance": args.elastic_loss_balance,
        "importance_criterion": getattr(args, "importance_record", {}).get("criterion"),
    }


def save_elastic_record(
    folder: str | os.PathLike, plan: ElasticPlan, final_config: Mapping, *, args, steps: int
) -> Path:
    """Write the run's ``elastic.json`` next to its saved largest-depth model."""
    from .provenance import public_name

    record = ElasticRecord.from_plan(
        plan,
        source_model=public_name(final_config.get("source_model")),
        source_num_layers=int(final_config["source_num_layers"]),
        importance={**getattr(args, "importance_record", {}), "file": public_name(args.importance)},
        inplace_distill=bool(args.elastic_inplace_distill),
        steps=steps,
        loss_balance=args.elastic_loss_balance,
        middle_weights=args.elastic_middle_weights,
    )
    return record.save(folder)


# ----------------------------------------------------------------------------------------------------------------
# Extraction: `layerprune extract`
# ----------------------------------------------------------------------------------------------------------------


def check_elastic_folder(folder: str | os.PathLike) -> tuple[ElasticRecord, dict]:
    """The record and transformer config of an elastic run's folder, checked against each other (the record must
    describe this folder's model: same source, source depth and largest-depth blocks). Loads no weights."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise LayerPruneError(f"{folder} does not exist or is not a folder")
    record = read_elastic_record(path)
    if record is None:
        raise LayerPruneError(
            f"{folder} is not an elastic run (no {RECORD_FILE}); extract applies to the output of "
            "train_distill --elastic_depths (an ordinary pruned folder already is one depth)"
        )
    from .modeling import read_transformer_config

    config = read_transformer_config(str(path))
    if config is None or config.get("kept_layers") is None:
        raise LayerPruneError(f"{folder} holds no pruned transformer (no kept_layers record)")
    from .provenance import public_name

    mismatch = []
    if config.get("source_num_layers") != record.source_num_layers:
        mismatch.append(f"a {config.get('source_num_layers')}-block source, the record {record.source_num_layers}")
    if list(config["kept_layers"]) != record.kept(record.depths[0]):
        mismatch.append(f"blocks {config['kept_layers']}, the record {record.kept(record.depths[0])}")
    recorded, actual = public_name(record.source_model), public_name(config.get("source_model"))
    if recorded and actual and recorded != actual:
        mismatch.append(f"source {actual}, the record {recorded}")
    if mismatch:
        raise LayerPruneError(
            f"{RECORD_FILE} of {folder} belongs to a model of another source (its model has {mismatch[0]}); "
            "extract from the folder train_distill --elastic_depths wrote, unchanged"
        )
    return record, config


def extract_depth(
    folder: str | os.PathLike, num_layers: int, output: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Save depth ``num_layers`` of an elastic run's ``folder`` as an ordinary pruned folder at ``output`` (a
    pipeline, or a transformer alone when the run saved only its transformer), in the folder's dtype. Its weights
    are those of the run's blocks of that depth, so it computes what the elastic student computes at that depth;
    its ``distill_config.json`` records the run and the depth it was extracted at. Everything is checked before
    anything is loaded or written."""
    from .outputs import check_output_dir

    record, config = check_elastic_folder(folder)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers not in record.depths:
        raise LayerPruneError(
            f"depth {num_layers} was not trained in {folder}; its trained depths are "
            f"{', '.join(map(str, record.depths))}"
        )
    check_output_dir(output, overwrite=overwrite, inputs=[folder])

    import torch

    from .distill import DISTILL_CONFIG, DistillConfig
    from .families import family_of
    from .modeling import (
        load_pipeline,
        load_transformer,
        save_pruned_pipeline,
        save_pruned_transformer,
        with_transformer,
    )
    from .validation import is_transformer_folder

    path = Path(folder).expanduser()
    transformer_only = is_transformer_folder(path)
    dtype = _saved_dtype(path / ("" if transformer_only else "transformer"))
    largest = record.kept(record.depths[0])
    keep = set(record.kept(num_layers))
    local = [i for i, source in enumerate(largest) if source in keep]
    if transformer_only:
        pipe, transformer = None, load_transformer(str(path), torch_dtype=dtype)
    else:
        pipe = load_pipeline(str(path), torch_dtype=dtype)
        transformer = pipe.transformer
    if len(local) < len(largest):
        transformer = family_of(transformer).pruned_class().from_transformer(transformer, kept_layers=local)
    extra = {}
    if (path / DISTILL_CONFIG).is_file():
        distill = DistillConfig.load(path)
        distill.kept_layers = list(transformer.config.kept_layers)
        distill.elastic = {
            **(distill.elastic or {}),
            "extracted_depth": num_layers,
            "depths": record.depths,
            "kept_layers": record.kept_layers,
        }
        extra[DISTILL_CONFIG] = json.dumps(distill.to_dict(), indent=2) + "\n"
    with torch.no_grad():
        if transformer_only:
            save_pruned_transformer(transformer, output, overwrite=overwrite, inputs=[folder], extra_files=extra)
        else:
            save_pruned_pipeline(
                with_transformer(pipe, transformer), output, overwrite=overwrite, inputs=[folder], extra_files=extra
            )
    return Path(output)


def _saved_dtype(folder: Path):
    """The dtype of the weights saved in a transformer folder (a save keeps what training saved)."""
    import torch
    from safetensors import safe_open

    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                return names.get(f.get_slice(key).get_dtype(), torch.float32)
    return None


# ----------------------------------------------------------------------------------------------------------------
# CLI: layerprune extract
# ----------------------------------------------------------------------------------------------------------------


def add_extract_parser(subparsers) -> None:
    """``layerprune extract FOLDER --num-layers N --output OUT``."""
    from .arguments import add_output_args
    from .validation import positive_int

    p = subparsers.add_parser(
        "extract",
        help="save one trained depth of an elastic run (train_distill --elastic_depths) as an ordinary pruned model",
        description="Save depth N of an elastic run's folder as an ordinary pruned pipeline (or transformer) that "
        "stock diffusers loads; it computes what the elastic student computes at that depth.",
    )
    p.add_argument("folder", help="the output folder of train_distill --elastic_depths")
    p.add_argument("--num-layers", type=positive_int, required=True, help="the depth to extract (one trained)")
    add_output_args(p, "the new pruned folder")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    extract_depth(args.folder, args.num_layers, args.output, overwrite=args.overwrite)
    record = read_elastic_record(args.folder)
    print(f"extracted depth {args.num_layers} of {args.folder} (trained depths {record.depths}): {args.output}")
    print(f"kept blocks: {record.kept(args.num_layers)}")
    return 0
