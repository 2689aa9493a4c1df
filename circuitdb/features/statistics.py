"""Feature statistics: what each latent of a dictionary responds to and what it writes.

One streaming pass encodes the stored activations chunk by chunk and keeps only the active
(token, latent, value) triples — k per token for a TopK dictionary, ~2 M for 64k tokens × k=32 —
and everything else is vectorized over those triples:
- density (share of tokens active), mean and max activation, a 32-bin histogram over (0, max];
- top exemplars: the highest activations of each latent;
- quantile exemplars: each latent's range split into equal groups and a few tokens sampled
  uniformly in each (random priorities), so rare high activations and common low ones are seen;
- for every exemplar, a fixed-width token window and the latent's activation on each token of it.
Position 0 (BOS) is excluded throughout, as in training.

Speed: the k winners per token are exact fp32 values picked from a bf16 shortlist
(circuitdb/dictionaries/shortlist.py); what remains is sorting and gathering over the triples. Output
logits and decoder neighbours come from `readouts`.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import polars.selectors as cs
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from circuitdb.corpus import TokenizedCorpus
from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.dictionaries.stored import stored_dictionary
from circuitdb.features.readouts import decoder_neighbours, output_logits, vocabulary_strings
from circuitdb.models import LoadedModel
from circuitdb.store import Store, feature_ids, layer_partition, write_partition
from circuitdb.store.finished import fingerprint, is_finished, record_finished, recorded_checksum


@dataclass
class FeatureStatsConfig:
    n_top: int = 20
    """Top exemplars per latent."""
    n_groups: int = 5
    """Quantile groups across each latent's activation range."""
    per_group: int = 5
    """Exemplars sampled per quantile group."""
    bins: int = 32
    """Histogram bins over (0, max]."""
    window: int = 16
    """Tokens in an exemplar's window (the peak sits 3/4 of the way in, or nearer an edge of the block)."""
    n_logits: int = 10
    """Top and bottom output logits per latent."""
    n_neighbours: int = 10
    """Decoder-cosine neighbours within the dictionary."""
    chunk_sequences: int = 16
    """Sequences encoded at a time."""
    seed: int = 0
    """Seed of the quantile sampling."""


@dataclass
class _Triples:
    """Active (token, latent, value) triples; token = sequence · positions + position."""

    token: torch.Tensor
    latent: torch.Tensor
    value: torch.Tensor

    span: int
    """Token ids are below this (sequences · positions), so latent · span + token orders by latent, then token."""

    @functools.cached_property
    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted keys latent · span + token, their values): each latent's activations in token order."""
        keys = self.latent * self.span + self.token
        order = keys.argsort()
        return keys[order], self.value[order]

    def first_per_group(self, group: torch.Tensor, score: torch.Tensor, keep: int) -> torch.Tensor:
        """Indices of the `keep` highest-`score` triples within each group id (scores ≥ 0, ties by position).

        One sort of an int64 key: the group in the high bits, then the score's float32 bit pattern
        (which orders non-negative floats like their values) inverted, so the best come first.
        """
        bits = score.float().contiguous().view(torch.int32).long()
        order = ((group.long() << 31) | (0x7FFFFFFF - bits)).argsort(stable=True)
        _, counts = torch.unique_consecutive(group[order], return_counts=True)
        starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return order[torch.arange(len(order)) - starts < keep]


def _triples(source: ActivationSource, coder: SparseCoder, chunk_sequences: int, desc: str) -> _Triples:
    """Encode every sequence of `source` (positions ≥ 1) and keep only the active entries."""
    tokens, latents, values, positions = [], [], [], 0
    for start in tqdm(range(0, source.n_sequences, chunk_sequences), desc=desc, unit="chunk", leave=False):
        picked = torch.arange(start, min(start + chunk_sequences, source.n_sequences))
        inputs, _ = source.read(picked)
        positions = inputs.shape[1]
        row, latent, value = coder.active_latents(inputs[:, 1:, 0].float().flatten(0, 1))
        sequence = picked[row // (positions - 1)]
        tokens.append(sequence * positions + row % (positions - 1) + 1)
        latents.append(latent)
        values.append(value)
    return _Triples(torch.cat(tokens), torch.cat(latents), torch.cat(values), source.n_sequences * positions)


@torch.no_grad()
def feature_statistics(
    coder: SparseCoder,
    source: ActivationSource,
    blocks: torch.Tensor,
    lm: LoadedModel,
    dictionary: str,
    layer: int,
    cfg: FeatureStatsConfig | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`features` and `exemplars` rows for every latent of `coder` over the sequences of `source`.

    `blocks` [sequences, positions] are the token ids of the source's sequences, in order.
    """
    cfg = cfg or FeatureStatsConfig()
    coder = coder.cpu().eval()
    n = coder.cfg.n_latents
    positions = blocks.shape[1]
    t = _triples(source, coder, cfg.chunk_sequences, f"features {dictionary}/{layer}")
    tokens_seen = source.n_sequences * (positions - 1)
    active = torch.bincount(t.latent, minlength=n)
    total = torch.bincount(t.latent, weights=t.value.double(), minlength=n)
    max_act = torch.zeros(n).scatter_reduce(0, t.latent, t.value, reduce="amax", include_self=True)
    bin_of = (t.value / (max_act[t.latent] / cfg.bins).clamp_min(1e-12)).ceil().long().clamp(1, cfg.bins) - 1
    histogram = torch.bincount(t.latent * cfg.bins + bin_of, minlength=n * cfg.bins).view(n, cfg.bins)

    top = t.first_per_group(t.latent, t.value, cfg.n_top)
    group = (t.value / (max_act[t.latent] / cfg.n_groups).clamp_min(1e-12)).ceil().long().clamp(1, cfg.n_groups)
    priority = torch.rand(len(t.value), generator=torch.Generator().manual_seed(cfg.seed))
    sampled = t.first_per_group(t.latent * cfg.n_groups + group - 1, priority, cfg.per_group)

    top_ids, top_vals, bottom_ids, bottom_vals = output_logits(coder, lm, cfg.n_logits)
    neighbours, cosines = decoder_neighbours(coder, cfg.n_neighbours)
    strings = vocabulary_strings(lm)
    peak = torch.full((n,), -1, dtype=torch.long)
    first = top[torch.searchsorted(t.latent[top], torch.arange(n)).clamp_max(len(top) - 1)]
    has_peak = t.latent[first] == torch.arange(n)
    peak[has_peak] = blocks.flatten()[t.token[first[has_peak]]].long()
    vocabulary = pl.Series(strings, dtype=pl.String)
    ids = lambda rows: vocabulary.gather(rows.flatten().numpy()).reshape(tuple(rows.shape))  # noqa: E731
    neighbour_ids = pl.Series(feature_ids(dictionary, layer, list(range(n)))).gather(neighbours.flatten().numpy())
    features = pl.DataFrame(
        {
            "feature_id": feature_ids(dictionary, layer, list(range(n))),
            "dictionary": dictionary,
            "layer": layer,
            "index": np.arange(n),
            "density": (active.double() / max(1, tokens_seen)).numpy(),
            "max_act": max_act.numpy(),
            "mean_act": (total / active.clamp_min(1)).float().numpy(),
            "dead": (active == 0).numpy(),
            "histogram": histogram.numpy(),
            "top_logits": ids(top_ids),
            "top_logit_values": top_vals.numpy(),
            "bottom_logits": ids(bottom_ids),
            "bottom_logit_values": bottom_vals.numpy(),
            "neighbours": neighbour_ids.reshape(tuple(neighbours.shape)),
            "neighbour_cosines": cosines.numpy(),
            "label": [
                "dead" if a == 0 else f"on {strings[p]!r} → " + ", ".join(repr(s) for s in strings[row[:3]])
                for a, p, row in zip(active.tolist(), peak.tolist(), top_ids.numpy(), strict=True)
            ],
        }
    ).with_columns(cs.by_dtype(pl.Array).arr.to_list())
    exemplars = pl.concat(
        [
            _windows(t, top, "top", torch.zeros(len(top), dtype=torch.long), blocks, strings, cfg, dictionary, layer),
            _windows(t, sampled, "quantile", group[sampled], blocks, strings, cfg, dictionary, layer),
        ]
    )
    return features, exemplars


def _windows(t: _Triples, chosen, kind, groups, blocks, strings, cfg, dictionary, layer) -> pl.DataFrame:
    """Exemplar rows for the `chosen` triples: token window, per-token activations of the latent, rank.

    The latent's activations from the window's first token on are found with one binary search per
    exemplar in the triples sorted by (latent, token); the next `width` of them hold every activation
    inside the window, placed by their token distance from its start.
    """
    positions = blocks.shape[1]
    width = min(cfg.window, positions - 1)
    token, latent, value = t.token[chosen], t.latent[chosen], t.value[chosen]
    sequence, position = token // positions, token % positions
    start = (position - width * 3 // 4).clamp(1, positions - width)
    window = sequence[:, None] * positions + start[:, None] + torch.arange(width)  # [exemplars, width]
    keys, values = t.by_latent
    first = latent * t.span + window[:, 0]
    following = (torch.searchsorted(keys, first)[:, None] + torch.arange(width)).clamp_max(len(keys) - 1)
    offset = keys[following] - first[:, None]  # another latent's keys lie ≥ span - window start ≥ width away
    inside = (offset >= 0) & (offset < width)
    exemplar = torch.arange(len(chosen)).unsqueeze(1).expand(-1, width)
    activations = torch.zeros(len(chosen), width)
    activations[exemplar[inside], offset[inside]] = values[following][inside]
    # rank within each (latent, group), in the order `chosen` lists them (best first)
    group_key = latent * (cfg.n_groups + 1) + groups
    starts = torch.searchsorted(group_key, group_key, side="left")
    rank = torch.arange(len(chosen)) - starts
    return pl.DataFrame(
        {
            "feature_id": feature_ids(dictionary, layer, latent.tolist()),
            "kind": kind,
            "group": groups.numpy(),
            "rank": rank.numpy(),
            "block": sequence.numpy(),
            "position": position.numpy(),
            "activation": value.numpy(),
            "peak_offset": (position - start).numpy(),
            "tokens": pl.Series(strings).gather(blocks.flatten()[window].flatten().numpy()).reshape(window.shape),
            "values": activations.numpy(),
        }
    ).with_columns(pl.col("values", "tokens").arr.to_list())


def build_layer_features(
    store: Store, lm: LoadedModel, corpus: TokenizedCorpus, name: str, layer: int, cfg: FeatureStatsConfig | None = None
) -> tuple[int, int]:
    """Statistics and exemplars of the stored dictionary `name` at `layer`, over the train split; written
    as one `features` and one `exemplars` partition. Returns (features, exemplars) row counts."""
    coder, meta = stored_dictionary(store, name, layer)
    source = ActivationSource(store.activation_run(f"{corpus.name}-train"), [meta["input_hook"]], [])
    partition = layer_partition(name, layer)
    weights = store.dictionary_dir(name, layer) / "weights.safetensors"
    inputs = fingerprint(
        recorded_checksum(weights), asdict(cfg or FeatureStatsConfig()), lm.name, source.shard_checksums
    )
    outputs = [store.table_file("exemplars", partition), store.table_file("features", partition)]
    if is_finished(store, "feature_stats", partition, inputs):
        return pq.read_metadata(outputs[1]).num_rows, pq.read_metadata(outputs[0]).num_rows
    features, exemplars = feature_statistics(coder, source, corpus.split("train"), lm, name, layer, cfg)
    write_partition(store, "exemplars", partition, exemplars)
    write_partition(store, "features", partition, features)
    record_finished(store, "feature_stats", partition, inputs, outputs)
    return features.height, exemplars.height
