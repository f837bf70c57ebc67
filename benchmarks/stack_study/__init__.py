"""Depth x cache x weights (x steps) on the toy world (the entry point, which states the question and the limits,
is benchmarks/stack_toy.py):

- :mod:`stack_study.claims`: the models and axes, the plan choice, the teacher-relative columns and the verdict
  (pure functions of the cells);
- :mod:`stack_study.report`: the generated section of docs/stacking.md and docs/stacking.png from the result JSONs;
- :mod:`stack_study.run`: measuring the cells (FLOP counter, caches, int8), kept one file each so a run resumes.
"""
