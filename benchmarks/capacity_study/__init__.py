"""benchmarks/capacity_toy.py's report (the page section it writes)."""
