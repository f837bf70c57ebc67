#!/usr/bin/env python
"""Launcher for the distillation script, which ships inside the package (``diffusers_layerprune/train_distill.py``).

    accelerate launch training/train_distill.py --teacher_model toy --student_model runs/pruned --output_dir runs/kd
    accelerate launch -m diffusers_layerprune.train_distill ...      # the same, from any folder after pip install

``--help`` lists every flag.
"""

import runpy

if __name__ == "__main__":
    # as `python -m diffusers_layerprune.train_distill`: --help and argument mistakes answer before torch loads
    runpy.run_module("diffusers_layerprune.train_distill", run_name="__main__", alter_sys=True)
