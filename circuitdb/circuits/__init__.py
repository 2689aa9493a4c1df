"""Circuits beyond one graph's build: reading a stored graph (influence towards one logit, paths, subgraph
scores: NumPy only, so the viewer answers without torch), its circuit-tracer JSON from the rows, and prompt sets
(defined, built back to back, aggregated, ablated)."""
