"""Reading stored circuits: a pruned graph's influence towards one logit, its strongest paths, the scores of
a subgraph. NumPy only, so the viewer and the CLI answer these without torch or the model."""
