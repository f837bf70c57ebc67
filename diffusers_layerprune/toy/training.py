"""What the toy world's small training scripts share (``train_judge``, ``train_scorer``, ``train_vae``): their
command-line options (where to write, how long, how fast, the ``--smoke`` run the tests use) and the optimiser step
with its progress line."""

from __future__ import annotations

import argparse
import time


def training_parser(
    doc: str | None, *, output_dir: str, max_steps: int, batch_size: int, learning_rate: float = 2e-3
) -> argparse.ArgumentParser:
    """A script's parser with ``--output_dir``, ``--max_steps``, ``--batch_size`` and ``--learning_rate`` (these
    defaults); the script adds its own options, then calls :func:`parse_training_args`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--max_steps", type=int, default=max_steps)
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--learning_rate", type=float, default=learning_rate)
    return parser


def parse_training_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, *, smoke: tuple[int, int]
) -> argparse.Namespace:
    """Add ``--seed``, ``--num_threads`` and ``--smoke`` (after the script's own options), parse ``argv`` and set
    torch's CPU threads; ``--smoke`` runs ``smoke = (max_steps, batch_size)``, a few steps for tests."""
    import torch

    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="a few steps, for tests")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    if args.smoke:
        args.max_steps, args.batch_size = smoke
    return args


def optimizer_step(loss, optimizer, schedule, losses: list[float], step: int, max_steps: int, start: float) -> None:
    """Back-propagate ``loss``, step ``optimizer`` and ``schedule``, record the loss in ``losses``; print the mean of
    the last 100 losses every 100 steps and at the last step (``start``: the run's ``time.time()``)."""
    import numpy as np

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    if step % 100 == 0 or step == max_steps - 1:
        print(f"step {step} loss {np.mean(losses[-100:]):.4f} {time.time() - start:.0f}s", flush=True)
