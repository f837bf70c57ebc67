"""Elastic depth on the toy world (the entry point, which states the question, is benchmarks/elastic_toy.py):

- :mod:`elastic_study.claims`: the noise seeds and the paired comparison of two models' judged cells (pure
  functions; benchmarks/elastic_routing_toy.py uses them too);
- :mod:`elastic_study.report`: the printed report and the table docs/elastic.md shows;
- :mod:`elastic_study.run`: the grid (importance, separate and elastic students, judged cells, training cost) and
  its report, resumable cell by cell.
"""
