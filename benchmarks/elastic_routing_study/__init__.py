"""The pieces of benchmarks/elastic_routing_toy.py: the runs per seed (:mod:`.run`) and the report from their cells
(:mod:`.report`)."""
