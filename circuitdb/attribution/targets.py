"""What a graph explains: its targets, the nodes every edge path ends at.

As circuit-tracer's `AttributionTargets` (and Llamascopium's feature targets), a target is a vector
read at one point of the frozen model, and a weight for the influence it spreads:
- the most probable next tokens (the default): demeaned unembedding rows read at the last position,
  weighted by their probabilities;
- chosen tokens (`--target " Paris"`, or `id:1234`): the same rows for those tokens, weighted by theirs;
- a logit difference (`--target " Paris" - " London"`): one target, the difference of the two rows;
- any direction (`--target-vector v.npy`, d_model values): read where the unembedding reads, the final
  norm's output at the last position (circuit-tracer's `CustomTarget`);
- one feature at one position (`--target-feature plt/20/123@9`): its encoder row read at its layer's
  MLP input, what drives its pre-activation there.
A difference, a direction and a feature weigh 1 (one target: the scale changes no share). Targets that
are no single token get circuit-tracer's virtual token ids (vocabulary size + their index), so node ids
never collide with a real token's. The target's description is part of the graph's identity.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from circuitdb.attribution.transcoders import Transcoders
from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel

TOP_LOGITS = ""
"""The description of the default target: the most probable next tokens."""


class TargetSpec(NamedTuple):
    """What the user asked the graph to explain (at most one of tokens, vector, feature)."""

    tokens: tuple[str, ...] = ()
    """Token strings (each exactly one token) or `id:<token id>`."""
    minus: str | None = None
    """With one token: explain logit(token) − logit(minus)."""
    vector: str | None = None
    """A .npy file of d_model values: a direction read at the final norm's output, last position."""
    feature: str | None = None
    """`<dictionary>/<layer>/<index>@<position>`: the feature's pre-activation at that position."""


class Targets(NamedTuple):
    """The resolved targets of one graph; all read at one (layer, position)."""

    description: str
    """`graphs.target`: '' for the top logits, else what was asked (part of the graph's identity)."""
    labels: list[str]
    """One per target node: the token, the difference, the file, the feature."""
    ids: list[int]
    """Token ids; vocabulary size + i for a target that is no single token."""
    weights: torch.Tensor
    """[k] probabilities of token targets; 1 for a difference, a direction or a feature."""
    vectors: torch.Tensor
    """[k, d] what each target reads at the output of the norm before `layer` (unembedding or encoder)."""
    layer: int
    """n_layers: read by the unembedding; else the feature's layer (its MLP input)."""
    position: int
    """The last position, or the feature's."""


TOP_LOGITS_TARGET = TargetSpec()
"""The default request: the most probable next tokens."""
FEATURE = re.compile(r"^(?P<name>.+)/(?P<layer>\d+)/(?P<index>\d+)@(?P<position>\d+)$")


def describe(spec: TargetSpec) -> str:
    """The target's identity as stored in `graphs.target` (and hashed into the slug)."""
    if spec.feature:
        return f"feature {spec.feature}"
    if spec.vector:
        digest = hashlib.sha256(Path(spec.vector).read_bytes()).hexdigest()[:12]
        return f"vector {Path(spec.vector).name} sha256:{digest}"
    if spec.minus is not None:
        return f"difference {spec.tokens[0]!r} - {spec.minus!r}"
    if spec.tokens:
        return "tokens " + ", ".join(repr(t) for t in spec.tokens)
    return TOP_LOGITS


def reads_logits(description: str) -> bool:
    """Whether a target so described is next-token logits (the top ones or chosen tokens), not a difference,
    a direction or a feature."""
    return not description.startswith(("difference", "vector", "feature"))


def check_spec(spec: TargetSpec) -> None:
    """One clear line for a request that names no single target kind, before any model is loaded."""
    kinds = [bool(spec.tokens), spec.vector is not None, spec.feature is not None]
    if sum(kinds) > 1:
        raise CircuitDBError("give one kind of target: --target, --target-vector or --target-feature")
    if spec.minus is not None and len(spec.tokens) != 1:
        raise CircuitDBError("a logit difference is one token minus another: --target ' Paris' - ' London'")
    if spec.feature is not None and not FEATURE.match(spec.feature):
        raise CircuitDBError(f"--target-feature {spec.feature!r}: expected <dictionary>/<layer>/<index>@<position>")
    if spec.vector is not None and not Path(spec.vector).is_file():
        raise CircuitDBError(f"--target-vector {spec.vector}: no such file")


def token_id(lm: LoadedModel, token: str) -> int:
    """A token string that is exactly one token, or `id:<n>`."""
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    if token.startswith("id:"):
        value = token.removeprefix("id:")
        if not value.isdigit() or int(value) >= vocab:
            raise CircuitDBError(f"target {token!r}: token ids run from 0 to {vocab - 1}")
        return int(value)
    ids = lm.encode(token, add_bos=False)
    if len(ids) != 1:
        raise CircuitDBError(
            f"target {token!r} is {len(ids)} tokens ({lm.token_strings(ids)}); a target is exactly one token"
        )
    return ids[0]


def top_logits(logits: torch.Tensor, cumulative: float, max_logits: int) -> tuple[list[int], torch.Tensor]:
    """The most probable next tokens until their probabilities sum to `cumulative`, at most `max_logits`."""
    probabilities = logits.float().softmax(-1)
    top = probabilities.topk(max_logits)
    keep = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(cumulative, device=top.values.device)).item()) + 1
    keep = min(keep, max_logits)
    return top.indices[:keep].tolist(), top.values[:keep].cpu()


def resolve(
    lm: LoadedModel,
    logits: torch.Tensor,
    transcoders: Transcoders,
    spec: TargetSpec,
    cumulative: float = 0.95,
    max_logits: int = 10,
) -> Targets:
    """The targets of `spec` on a traced prompt: `logits` [positions, vocab] are the model's own, `encoder`
    the transcoders (for a feature target)."""
    check_spec(spec)
    positions, vocab = logits.shape
    unembedding = lm.model.get_output_embeddings().weight
    last = logits[-1]
    description = describe(spec)
    one = torch.ones(1)
    if spec.feature is not None:
        return _feature_target(spec.feature, transcoders, positions, vocab, description)
    if spec.vector is not None:
        vector = _read_vector(spec.vector, lm.d_model).to(unembedding)
        return Targets(description, [Path(spec.vector).name], [vocab], one, vector[None], lm.n_layers, positions - 1)
    if spec.minus is not None:
        a, b = token_id(lm, spec.tokens[0]), token_id(lm, spec.minus)
        label = f"{spec.tokens[0]!r} - {spec.minus!r}"
        vectors = (unembedding[a] - unembedding[b])[None]
        return Targets(description, [label], [vocab], one, vectors, lm.n_layers, positions - 1)
    if spec.tokens:
        ids = [token_id(lm, token) for token in spec.tokens]
        weights = last.float().softmax(-1)[ids].cpu()
    else:
        ids, weights = top_logits(last, cumulative, max_logits)
    vectors = unembedding[ids] - unembedding.mean(0)  # softmax ignores shifts: demeaned logits
    return Targets(description, lm.token_strings(ids), ids, weights, vectors, lm.n_layers, positions - 1)


def _read_vector(path: str, d_model: int) -> torch.Tensor:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CircuitDBError(f"--target-vector {path}: not a .npy array ({exc})") from None
    values = np.asarray(values, dtype=np.float64).reshape(-1) if values.size == d_model else None
    if values is None or not np.isfinite(values).all():
        raise CircuitDBError(f"--target-vector {path}: expected {d_model} finite values (the model's width)")
    return torch.from_numpy(values)


def _feature_target(feature: str, transcoders: Transcoders, positions: int, vocab: int, description: str) -> Targets:
    match = FEATURE.match(feature)
    layer, index, position = (int(match[key]) for key in ("layer", "index", "position"))
    if match["name"] != transcoders.name:
        raise CircuitDBError(f"--target-feature {feature}: the graph's transcoders are {transcoders.name!r}")
    if layer not in transcoders.layers:
        raise CircuitDBError(f"--target-feature {feature}: no transcoder reads layer {layer} ({transcoders.layers})")
    if index >= transcoders.n_latents:
        raise CircuitDBError(f"--target-feature {feature}: layer {layer} has {transcoders.n_latents} latents")
    if not 0 <= position < positions:
        raise CircuitDBError(
            f"--target-feature {feature}: position {position} is outside the prompt (0-{positions - 1})"
        )
    rows, _ = transcoders.encoder(layer, torch.tensor([index]))
    return Targets(description, [feature], [vocab], torch.ones(1), rows, layer, position)
