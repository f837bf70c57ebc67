"""Post-training weight sparsity on the toy world (the entry point, which states the questions, is
benchmarks/sparsity_toy.py):

- :mod:`sparsity_study.claims`: aggregation of the judged cells and the claims' rules (pure functions);
- :mod:`sparsity_study.report`: docs/sparsity.md and its plot from the result JSON;
- :mod:`sparsity_study.run`: the cells (curves, depth + sparsity, folder sizes), resumable cell by cell.
"""
