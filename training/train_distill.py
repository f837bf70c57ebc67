#!/usr/bin/env python
"""Launcher for the distillation script, which ships inside the package (``diffusers_layerprune/train_distill.py``).

    accelerate launch training/train_distill.py --teacher_model toy --student_model runs/pruned --output_dir runs/kd
    accelerate launch -m diffusers_layerprune.train_distill ...      # the same, from any folder after pip install

``--help`` lists every flag.
"""

from diffusers_layerprune.train_distill import cli

if __name__ == "__main__":
    cli()
