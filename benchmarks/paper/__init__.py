"""The DiT-Pruner experiment on the bundled toy world, in three parts (the entry point is
benchmarks/reproduce_paper.py):

- :mod:`paper.cells`: the append-only store of judged cells (shared with the other toy-world benchmarks);
- :mod:`paper.run`: the experiment (scoring, pruning, distillation, judging), resumable cell by cell;
- :mod:`paper.claims`: aggregation over seeds and the paper's claims as checks (pure functions);
- :mod:`paper.report`: docs/results.md from ``results.md.in`` and the plot.
"""
