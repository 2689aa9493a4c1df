"""What a latent writes, read from its decoder row alone: its output logits (through the final norm's gain
and the unembedding; the norm's 1/rms is a positive per-token scale and cannot change which tokens rank
first) and its nearest latents by decoder cosine. Exact fp32 values picked from a bf16 shortlist
(circuitdb/dictionaries/shortlist.py)."""

from __future__ import annotations

import numpy as np
import torch

from circuitdb.dictionaries.shortlist import SHORTLIST, coarse_top_columns, exact_top, top_products
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.models import LoadedModel

_TOKEN_STRINGS: dict[int, np.ndarray] = {}


def vocabulary_strings(lm: LoadedModel) -> np.ndarray:
    """Every vocabulary entry decoded to text, once per tokenizer (49k decodes take ~1 s)."""
    key = id(lm.tokenizer)
    if key not in _TOKEN_STRINGS:
        _TOKEN_STRINGS[key] = np.array(lm.token_strings(range(len(lm.tokenizer))), dtype=object)
    return _TOKEN_STRINGS[key]


def output_logits(coder: SparseCoder, lm: LoadedModel, k: int):
    """Top/bottom-k vocabulary ids and exact values of each decoder row through final-norm gain and
    unembedding, best first; one bf16 product per 256 rows shortlists both ends (see dictionaries/shortlist.py)."""
    gain = lm.norm_gain(lm.model.get_submodule(lm.arch.final_norm)).detach().float()
    unembedding = lm.model.get_submodule(lm.arch.unembedding).weight.detach().float()
    coarse_unembedding = unembedding.bfloat16().T
    shortlist = min(SHORTLIST * k, len(unembedding))
    parts = []
    for directions in (coder.W_dec.detach().float() * gain).split(256):
        coarse = directions.bfloat16() @ coarse_unembedding
        top = exact_top(directions, unembedding, None, coarse_top_columns(coarse, shortlist), k)
        bottom = exact_top(-directions, unembedding, None, coarse_top_columns(coarse, shortlist, False), k)
        parts.append((*top, *bottom))
    top_values, top_ids, bottom_values, bottom_ids = (torch.cat(column) for column in zip(*parts, strict=True))
    top_values, order = top_values.sort(dim=1, descending=True)
    bottom_values, bottom_order = (-bottom_values).sort(dim=1)
    return top_ids.gather(1, order), top_values, bottom_ids.gather(1, bottom_order), bottom_values


def decoder_neighbours(coder: SparseCoder, k: int):
    """Each latent's k most decoder-cosine-similar latents (itself excluded), most similar first."""
    unit = torch.nn.functional.normalize(coder.W_dec.detach().float(), dim=1)
    k = min(k, len(unit) - 1)
    cosines, latents = top_products(unit, unit, k + 1)  # itself among them, unless k+1 others tie it at 1
    cosines[latents == torch.arange(len(unit)).unsqueeze(1)] = float("-inf")
    best = cosines.topk(k, dim=1)
    return latents.gather(1, best.indices), best.values
