"""Summaries of the `sweeps` table: per k, the mean and a 95% interval over seeds (Student's t), as
comparisons of dictionaries at equal L0 need. Apart from the training code, so that readers of a built
store (the viewer, the CLI) need neither torch nor the model."""

from __future__ import annotations

import math
import statistics

import polars as pl

METRICS = ("fvu", "fvu_excl_pos0", "l0", "dead_frac", "delta_ce", "kl")
"""What each sweep point records from its held-out evaluation, and the summary averages."""
SCORES = ("detection_acc", "fuzzing_acc")
"""What a point records when its features were explained (null otherwise): averaged over the seeds that have it."""
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Student's t at 97.5% by degrees of freedom (a two-sided 95% interval); 1.96 past 9."""


def interval(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of the two-sided 95% interval) of independent runs; 0 width for a single run,
    neither for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    t = _T_975.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


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
