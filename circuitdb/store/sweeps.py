"""Summaries of the `sweeps` table: per k, the mean and a 95% interval over seeds (Student's t), as
comparisons of dictionaries at equal L0 need. Apart from the training code, so that readers of a built
store (the viewer, the CLI) need neither torch nor the model."""

from __future__ import annotations

import polars as pl

from circuitdb.intervals import interval

METRICS = ("fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce", "kl")
"""What each sweep point records from its held-out evaluation, and the summary averages."""
SCORES = ("detection_acc", "fuzzing_acc")
"""What a point records when its features were explained (null otherwise): averaged over the seeds that have it."""


def summary(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (skip, k): the number of seeds and each metric's (and explanation score's) mean and 95%
    half-width, by increasing k (transcoders without a skip connection first). A metric `rows` lack (or
    have only nulls of) is summarized as null."""
    out = []
    for skip, k in sorted(set(zip(rows["skip"].to_list(), rows["k"].to_list(), strict=True))):
        at_k = rows.filter((pl.col("skip") == skip) & (pl.col("k") == k))
        entry = {"skip": skip, "k": k, "seeds": at_k.height}
        for metric in METRICS + SCORES:
            measured = at_k[metric].drop_nulls().to_list() if metric in at_k.columns else []
            mean, half = interval(measured)
            entry |= {metric: mean, f"{metric}_ci95": half}
        out.append(entry)
    return pl.DataFrame(out, schema_overrides={f"{s}{end}": pl.Float64 for s in SCORES for end in ("", "_ci95")})


def mean_and_interval(entry: dict, metric: str) -> str:
    """'mean ± half-width' of one summary entry's metric, or '–' where nothing was measured (a point whose
    features were not explained)."""
    if entry[metric] is None:
        return "–"
    return f"{entry[metric]:.4f} ± {entry[metric + '_ci95']:.4f}"
