"""The one-command GPU check (the entry point, which states what it measures, is benchmarks/gpu_check.py):

- :mod:`gpu_study.common`: settings, machine description, section files and progress, models, timing and memory;
- :mod:`gpu_study.depth`, :mod:`gpu_study.kd`, :mod:`gpu_study.sparsity`, :mod:`gpu_study.stacking`: sections a-e;
- :mod:`gpu_study.running`: selecting, running, resuming and merging the sections;
- :mod:`gpu_study.report`: the docs' GPU sections from the section JSONs.
"""
