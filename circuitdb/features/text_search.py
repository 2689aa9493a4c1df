"""Search by text: every latent active when the model reads a text, per token, and their ranking."""

from __future__ import annotations

import polars as pl
import torch

from circuitdb.dictionaries.formats import DictionarySet
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel, capture, resolve_hooks
from circuitdb.store import Store, feature_ids, read_table


def _token_ids(lm: LoadedModel, text: str) -> list[int]:
    if not text.strip():
        raise CircuitDBError("empty text: give some words to search with")
    ids = lm.encode(text)
    if len(ids) > lm.max_context:
        raise CircuitDBError(f"text is {len(ids)} tokens, longer than the model's context of {lm.max_context}")
    return ids


@torch.no_grad()
def feature_on_text(lm: LoadedModel, coder: SparseCoder, hook: str, index: int, text: str) -> pl.DataFrame:
    """One latent's activation on every token of `text` (BOS added and shown at 0, as training leaves it out)."""
    ids = _token_ids(lm, text)
    if not 0 <= index < coder.cfg.n_latents:
        raise CircuitDBError(f"latent {index} out of range: the dictionary has {coder.cfg.n_latents}")
    acts = capture(lm, torch.tensor([ids]), resolve_hooks(lm, [hook]))
    values = coder.to(lm.device).encode(acts[hook][0])[:, index].float().cpu()
    values[0] = 0.0
    return pl.DataFrame({"token": lm.token_strings(ids), "activation": values.numpy()})


@torch.no_grad()
def active_features(lm: LoadedModel, dictionaries: DictionarySet, text: str) -> pl.DataFrame:
    """Every (feature, position) active when the model reads `text` (BOS added, position 0 left out)."""
    ids = _token_ids(lm, text)
    if dictionaries.clt is not None:
        raise CircuitDBError(f"{dictionaries.name} is a cross-layer transcoder; text search reads per-layer sets")
    hooks = {layer: f"{dictionaries.input_kind}.{layer}" for layer in dictionaries.layers}
    acts = capture(lm, torch.tensor([ids]), resolve_hooks(lm, hooks.values()))
    tokens = lm.token_strings(ids)
    frames, name = [], dictionaries.name
    for layer, coder in sorted(dictionaries.coders.items()):
        latents = coder.to(lm.device).encode(acts[hooks[layer]][0])[1:].cpu()
        position, index = latents.nonzero(as_tuple=True)
        frames.append(
            pl.DataFrame(
                {
                    "feature_id": feature_ids(name, layer, index.tolist()),
                    "layer": layer,
                    "index": index.numpy(),
                    "position": (position + 1).numpy(),
                    "token": [tokens[p + 1] for p in position.tolist()],
                    "activation": latents[position, index].numpy(),
                }
            )
        )
    return pl.concat(frames)


def ranked_text_matches(
    store: Store, lm: LoadedModel, dictionaries: DictionarySet, text: str, k: int, per_token: bool
) -> pl.DataFrame:
    """The features most active on `text`, ranked by activation relative to each one's maximum over the
    corpus (features without statistics last, by raw activation): the top k over the whole text (each
    feature once, at its strongest token), or the top k of every token."""
    found = active_features(lm, dictionaries, text)
    columns = ["feature_id", "max_act", "label"]
    known = read_table(store, "features", [*columns, "dictionary"]).filter(pl.col("dictionary") == dictionaries.name)
    found = found.join(known.select(columns), on="feature_id", how="left")
    found = found.with_columns(relative=pl.col("activation") / pl.col("max_act"))
    ranked = found.sort("relative", "activation", descending=True, nulls_last=True)
    if per_token:
        ranked = ranked.group_by("position", maintain_order=True).head(k).sort("position")
    else:
        ranked = ranked.unique("feature_id", keep="first", maintain_order=True).head(k)
    return ranked.select("position", "token", "feature_id", "activation", "relative", "label")
