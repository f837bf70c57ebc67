"""Fine-tune the shared weights of a routed pipeline with hard routing, started the way training is started:

    accelerate launch -m diffusers_layerprune.routing.finetune --routed runs/routed --output runs/routed-ft
    python -m diffusers_layerprune.routing.finetune --routed runs/routed --output runs/routed-ft   # one process

Reads top to bottom: parse arguments, check the output, load the routed pipeline, make the teacher latents of the
routing's training prompts, route them, train (:func:`~diffusers_layerprune.routing.train.finetune_shared_weights`:
train_distill's losses, hard routing, every process its share of each global batch), save. The saved folder is a
routed folder again (the router and codes unchanged, the fingerprint of the new weights recorded).
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from ..validation import OneLineArgumentParser, any_int, positive_float, positive_int

    p = OneLineArgumentParser(prog="routing.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--routed", required=True, help="a folder written by layerprune route")
    p.add_argument("--output", required=True, help="folder to write the fine-tuned routed pipeline to")
    p.add_argument("--prompts", default=None, help="training prompts (default: those the routing was fitted on)")
    p.add_argument("--num-prompts", type=positive_int, default=None)
    p.add_argument("--steps", type=positive_int, default=400)
    p.add_argument("--batch-size", type=positive_int, default=16, help="global batch, split over the processes")
    p.add_argument("--learning-rate", type=positive_float, default=2e-4)
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch
    from accelerate import Accelerator

    from ..data import load_prompts
    from ..errors import LayerPruneError
    from ..outputs import check_output_dir
    from ..provenance import local_inputs
    from .pipeline import RoutedPixArtSigmaPipeline
    from .record import read_routing_record, transformer_fingerprint
    from .train import RoutingSettings, finetune_shared_weights, teacher_latents

    args = parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    try:
        inputs = local_inputs(args.routed)
        check_output_dir(args.output, overwrite=args.overwrite, inputs=inputs)
        record = read_routing_record(args.routed)
        if args.batch_size < accelerator.num_processes:
            raise LayerPruneError(
                f"--batch-size {args.batch_size} is smaller than the {accelerator.num_processes} processes"
            )
        source = args.prompts or record.training.get("prompts", {}).get("source")
        if not source:
            raise LayerPruneError("the routing does not record its training prompts; pass --prompts")
        prompts = load_prompts(source, limit=args.num_prompts).prompts
    except LayerPruneError as error:
        if accelerator.is_main_process:
            print(f"routing.finetune: error: {error}", file=sys.stderr)
        return 2
    routed = RoutedPixArtSigmaPipeline.from_pretrained(args.routed, device=str(accelerator.device))
    routed.set_progress_bar_config(disable=True)
    pipe, record = routed.pipeline, routed.routing.record
    teacher = record.training.get("teacher") or {}
    settings = RoutingSettings(
        finetune_steps=args.steps,
        finetune_batch_size=args.batch_size,
        finetune_learning_rate=args.learning_rate,
        seed=args.seed,
        teacher_steps=teacher.get("num_inference_steps"),
        guidance_scale=teacher.get("guidance_scale"),
    )
    defaults = {
        "max_sequence_length": teacher.get("max_sequence_length", 300),
        "num_inference_steps": teacher.get("num_inference_steps", 20),
        "guidance_scale": teacher.get("guidance_scale", 4.5),
        "resolution": teacher.get("resolution", pipe.transformer.config.sample_size * pipe.vae_scale_factor),
    }
    log = print if accelerator.is_main_process else (lambda *a: None)
    embeds, masks, latents = teacher_latents(pipe, prompts, settings, defaults, log)
    assignment = torch.tensor(routed.route(prompt_embeds=embeds, prompt_attention_mask=masks))
    kept = [c.kept_layers for c in record.codes]
    data = {"embeds": embeds, "masks": masks, "latents": latents}
    history = finetune_shared_weights(pipe, kept, assignment, data, settings, log, accelerator=accelerator)
    record.transformer_sha256 = transformer_fingerprint(pipe.transformer)
    record.training["finetune"] = {
        "steps": args.steps,
        "global_batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "num_processes": accelerator.num_processes,
        "seed": args.seed,
        "final_loss": history[-1]["loss"] if history else None,
    }
    record.training["finetune_history"] = history
    if accelerator.is_main_process:
        routed.save_pretrained(args.output, overwrite=args.overwrite, inputs=inputs)
        print(f"saved: {args.output} (fine-tuned shared weights, {accelerator.num_processes} process(es))")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
