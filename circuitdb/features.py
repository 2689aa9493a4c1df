"""Feature statistics: what each latent of a dictionary responds to and what it writes.

Two streaming, vectorized passes over stored activations (never the whole set in memory):
1. per latent: density (share of tokens active), mean and max activation, and the top exemplars
   (a running top-k merged chunk by chunk);
2. with each latent's max known: a 32-bin activation histogram over (0, max] and quantile
   exemplars — the range split into equal groups, a few tokens sampled uniformly in each (random
   priorities, top-k per group), so rare high activations and common low ones are both seen.
Position 0 (BOS) is excluded throughout, as in training.

Output logits: a latent's decoder row is read through the final norm's gain and the unembedding
(the norm's 1/rms is a positive per-token scale and cannot change which tokens rank first).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from circuitdb.dictionaries.data import ActivationSource
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.models import LoadedModel


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
    window_left: int = 12
    """Tokens of context shown before the exemplar's token."""
    window_right: int = 4
    """Tokens of context shown after it."""
    n_logits: int = 10
    """Top and bottom output logits per latent."""
    n_neighbours: int = 10
    """Decoder-cosine neighbours within the dictionary."""
    chunk_sequences: int = 16
    """Sequences encoded at a time."""
    seed: int = 0
    """Seed of the quantile sampling."""


@dataclass
class _Top:
    """A running top-k per latent: values [n, k] and global token indices [n, k] (-1 = empty)."""

    values: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def empty(cls, n: int, k: int) -> _Top:
        return cls(torch.full((n, k), float("-inf")), torch.full((n, k), -1, dtype=torch.long))

    def merge(self, values: torch.Tensor, tokens: torch.Tensor) -> None:
        """Fold in candidates values/tokens [n, m]."""
        all_values = torch.cat([self.values, values], dim=1)
        all_tokens = torch.cat([self.tokens, tokens], dim=1)
        best = all_values.topk(self.values.shape[1], dim=1)
        self.values, self.tokens = best.values, all_tokens.gather(1, best.indices)


def _chunks(source: ActivationSource, coder: SparseCoder, cfg: FeatureStatsConfig):
    """(latents [tokens, n] of positions ≥ 1, global token index seq·positions + pos of each row) per chunk."""
    for start in range(0, source.n_sequences, cfg.chunk_sequences):
        picked = torch.arange(start, min(start + cfg.chunk_sequences, source.n_sequences))
        inputs, _ = source.read(picked)
        n_seq, positions = inputs.shape[:2]
        latents = coder.encode(inputs[:, 1:, 0].float().flatten(0, 1))
        seq = picked.repeat_interleave(positions - 1)
        pos = torch.arange(1, positions).repeat(n_seq)
        yield latents, seq * positions + pos


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
    active = torch.zeros(n, dtype=torch.long)
    total = torch.zeros(n, dtype=torch.float64)
    tokens_seen = 0
    top = _Top.empty(n, cfg.n_top)
    for latents, token_index in _chunks(source, coder, cfg):
        fired = latents > 0
        active += fired.sum(0)
        total += latents.sum(0, dtype=torch.float64)
        tokens_seen += latents.shape[0]
        k = min(cfg.n_top, latents.shape[0])
        best = latents.T.topk(k, dim=1)
        top.merge(best.values, token_index[best.indices])
    max_act = top.values[:, 0].clamp_min(0)
    histogram = torch.zeros(n, cfg.bins, dtype=torch.long)
    samples = _Top.empty(n * cfg.n_groups, cfg.per_group)
    generator = torch.Generator().manual_seed(cfg.seed)
    width = (max_act / cfg.bins).clamp_min(1e-12)
    group_width = (max_act / cfg.n_groups).clamp_min(1e-12)
    for latents, token_index in _chunks(source, coder, cfg):
        fired = latents > 0
        bin_of = (latents / width).ceil().long().clamp(1, cfg.bins) - 1
        histogram.scatter_add_(1, bin_of.T * fired.T, fired.T.long())
        group_of = ((latents / group_width).ceil().long().clamp(1, cfg.n_groups) - 1).T  # [n, tokens]
        priority = torch.rand(latents.T.shape, generator=generator)
        for group in range(cfg.n_groups):
            keyed = torch.where(fired.T & (group_of == group), priority, torch.full_like(priority, float("-inf")))
            k = min(cfg.per_group, keyed.shape[1])
            best = keyed.topk(k, dim=1)
            candidates = torch.where(best.values > float("-inf"), token_index[best.indices], -1)
            view = _Top(samples.values[group :: cfg.n_groups], samples.tokens[group :: cfg.n_groups])
            view.merge(best.values, candidates)
            samples.values[group :: cfg.n_groups], samples.tokens[group :: cfg.n_groups] = view.values, view.tokens
    density = active.double() / max(1, tokens_seen)
    mean_act = (total / active.clamp_min(1)).float()
    top_ids, top_vals, bottom_ids, bottom_vals = _logits(coder, lm, cfg.n_logits)
    neighbours, cosines = _neighbours(coder, cfg.n_neighbours)
    decode = lm.tokenizer.convert_ids_to_tokens
    text = lambda token_id: lm.tokenizer.decode([token_id])  # noqa: E731
    flat_blocks = blocks.flatten()
    peak_tokens = torch.where(top.tokens[:, 0] >= 0, flat_blocks[top.tokens[:, 0].clamp_min(0)], -1)
    features = pl.DataFrame(
        {
            "feature_id": [f"{dictionary}/{layer}/{i}" for i in range(n)],
            "dictionary": dictionary,
            "layer": layer,
            "index": range(n),
            "density": density.numpy(),
            "max_act": max_act.numpy(),
            "mean_act": mean_act.numpy(),
            "dead": (active == 0).numpy(),
            "histogram": histogram.tolist(),
            "top_logits": [decode(row) for row in top_ids.tolist()],
            "top_logit_values": top_vals.tolist(),
            "bottom_logits": [decode(row) for row in bottom_ids.tolist()],
            "bottom_logit_values": bottom_vals.tolist(),
            "neighbours": [[f"{dictionary}/{layer}/{j}" for j in row] for row in neighbours.tolist()],
            "neighbour_cosines": cosines.tolist(),
            "label": [
                _label(
                    bool(active[i] == 0),
                    text(int(max(peak_tokens[i], 0))),
                    [text(t) for t in top_ids[i, :3].tolist()],
                )
                for i in range(n)
            ],
        }
    )
    exemplars = _exemplar_rows(dictionary, layer, top, samples, cfg, blocks, positions, coder, source, decode)
    return features, exemplars


def _label(dead: bool, peak: str, logits: list[str]) -> str:
    """A short automatic label: the token it fires hardest on and the tokens it promotes."""
    if dead:
        return "dead"
    return f"on {peak!r} → " + ", ".join(repr(token) for token in logits)


def _logits(coder: SparseCoder, lm: LoadedModel, k: int):
    """Top/bottom-k vocabulary ids and values of each decoder row through final-norm gain and unembedding."""
    gain = lm.model.get_submodule(lm.arch.final_norm).weight.detach().float()
    unembedding = lm.model.get_submodule(lm.arch.unembedding).weight.detach().float()
    logits = (coder.W_dec.detach().float() * gain) @ unembedding.T
    top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
    return top.indices, top.values, bottom.indices, bottom.values


def _neighbours(coder: SparseCoder, k: int):
    """Each latent's k most decoder-cosine-similar latents (itself excluded)."""
    unit = torch.nn.functional.normalize(coder.W_dec.detach().float(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))
    best = similarity.topk(min(k, unit.shape[0] - 1), dim=1)
    return best.indices, best.values


def _exemplar_rows(dictionary, layer, top, samples, cfg, blocks, positions, coder, source, decode) -> pl.DataFrame:
    """One row per exemplar: its token window and the latent's activation on every token of it."""
    n = top.values.shape[0]
    wanted = []  # (latent, kind, group, rank, global token index)
    for latent in range(n):
        for rank, token in enumerate(top.tokens[latent].tolist()):
            if token >= 0 and top.values[latent, rank] > 0:
                wanted.append((latent, "top", 0, rank, token))
        for group in range(cfg.n_groups):
            for rank, token in enumerate(samples.tokens[latent * cfg.n_groups + group].tolist()):
                if token >= 0:
                    wanted.append((latent, "quantile", group + 1, rank, token))
    if not wanted:
        return pl.DataFrame(schema={"feature_id": pl.String()})
    by_sequence: dict[int, list] = {}
    for item in wanted:
        by_sequence.setdefault(item[4] // positions, []).append(item)
    columns = ("feature_id", "kind", "group", "rank", "block", "position", "activation", "tokens", "values")
    rows = {key: [] for key in columns}
    sequences = sorted(by_sequence)
    for start in range(0, len(sequences), cfg.chunk_sequences):
        chunk = sequences[start : start + cfg.chunk_sequences]
        inputs, _ = source.read(torch.tensor(chunk))
        latents = coder.encode(inputs[:, :, 0].float().flatten(0, 1)).view(len(chunk), positions, -1)
        latents[:, 0] = 0  # position 0 is excluded everywhere
        for latent, kind, group, rank, token in (item for seq in chunk for item in by_sequence[seq]):
            seq, pos = divmod(token, positions)
            lo, hi = max(1, pos - cfg.window_left), min(positions, pos + cfg.window_right + 1)
            acts = latents[chunk.index(seq), :, latent]
            rows["feature_id"].append(f"{dictionary}/{layer}/{latent}")
            rows["kind"].append(kind)
            rows["group"].append(group)
            rows["rank"].append(rank)
            rows["block"].append(seq)
            rows["position"].append(pos)
            rows["activation"].append(float(acts[pos]))
            rows["tokens"].append(decode(blocks[seq, lo:hi].tolist()))
            rows["values"].append(acts[lo:hi].tolist())
    return pl.DataFrame(rows)
