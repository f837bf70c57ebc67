"""Prompt-routed depth on the toy world (the entry point, which states the questions, is benchmarks/routing_toy.py):

- :mod:`routing_study.claims`: aggregation of the finished cells and the verdicts' rules (pure functions);
- :mod:`routing_study.report`: docs/routing.md and its plot from the result JSON;
- :mod:`routing_study.run`: the cells (routed, fine-tuned, teacher, budget, throughput), resumable cell by cell.
"""
