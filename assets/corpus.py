"""Corpus stage: text → token blocks with a train/eval split, stored as `corpora` + `corpus_blocks`."""

import dagster as dg

from assets.resources import ProjectParam, publishes
from circuitdb.corpus import store_corpus, tokenize_corpus


@dg.asset(group_name="corpus", kinds={"parquet"})
@publishes
def corpus_tokens(project: ProjectParam) -> dg.MaterializeResult:
    """The configured corpus cut into fixed-length blocks (BOS first) with a deterministic eval split:
    the `corpora` table (one row) and `corpus_blocks` (one row per block, its token ids)."""
    config, lm = project.config, project.model
    corpus = tokenize_corpus(lm, config.corpus)
    counts = store_corpus(project.store, corpus, lm.name, config.corpus.seed)
    return dg.MaterializeResult(
        metadata={
            "corpus": corpus.name,
            "source": corpus.source,
            "documents": corpus.n_documents,
            "blocks": counts["blocks"],
            "eval_blocks": counts["eval_blocks"],
            "tokens": counts["tokens"],
            "dagster/row_count": counts["blocks"],
        }
    )
