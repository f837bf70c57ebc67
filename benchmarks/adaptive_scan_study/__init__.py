"""Adaptive vs exhaustive preference scan on the toy world (the entry point, which states the question, is
benchmarks/bench_adaptive_scan.py):

- :mod:`adaptive_scan_study.claims`: how a configuration is judged (paired differences, noise, the exhaustive
  choice's spread): pure functions of the judged rows;
- :mod:`adaptive_scan_study.report`: the generated section of docs/criteria.md from the result JSON;
- :mod:`adaptive_scan_study.run`: the scans, the judged cells and the result, reusing what ``--output`` holds.
"""
