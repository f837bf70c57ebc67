"""The full-size rehearsal of benchmarks/rehearse_full_size.py: measurements (:mod:`.measure`), the stages run as
users run them (:mod:`.run`) and docs/scale.md with its projection to the paper's settings (:mod:`.report`)."""
