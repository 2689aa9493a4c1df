"""Quality of a dictionary on held-out tokens.

- FVU = Σ‖y − ŷ‖² / Σ‖y − mean(y)‖², over all positions and excluding position 0 (BOS, whose
  norm is ~100x the others' and makes any reconstruction look good);
- L0: mean active latents per token; dead fraction: latents never active on the eval set;
- ΔCE and KL: the reconstruction spliced into the model (an SAE replaces its hook point, a
  transcoder replaces the MLP output) against the clean model. Position 0 keeps the model's own
  activation there, as it was excluded from training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import torch
import torch.nn.functional as F

from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint, LoadedModel, check_layer, mlp_replaced, replaced


def fvu(targets: torch.Tensor, recon: torch.Tensor) -> float:
    """Σ‖y − ŷ‖² / Σ‖y − mean(y)‖² over every token of [..., d] tensors."""
    flat_t, flat_r = targets.reshape(-1, targets.shape[-1]), recon.reshape(-1, recon.shape[-1])
    return float((flat_t - flat_r).pow(2).sum() / (flat_t - flat_t.mean(0)).pow(2).sum())


def summarize(targets: torch.Tensor, recon: torch.Tensor, fired: torch.Tensor) -> dict:
    """Held-out metrics from targets/reconstructions [sequences, positions, d] and fired latents
    [sequences, positions, n_latents] (bool); sparsity is counted on positions ≥ 1 only."""
    rest = fired[:, 1:]
    return {
        "fvu": fvu(targets, recon),
        "fvu_excl_pos0": fvu(targets[:, 1:], recon[:, 1:]),
        "l0": float(rest.sum(-1).float().mean()),
        "dead_frac": float(1 - rest.flatten(0, 1).any(0).float().mean()),
        "n_eval_tokens": rest.shape[0] * rest.shape[1],
    }


@torch.no_grad()
def reconstruction_metrics(coder: SparseCoder, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 4096):
    """FVU (all / excl. position 0), L0 and dead fraction of `coder` on [sequences, positions, d] tensors."""
    device = coder.W_dec.device
    flat_in = inputs.reshape(-1, inputs.shape[-1])
    recon, fired = [], []
    for start in range(0, flat_in.shape[0], chunk):
        out, latents = coder(flat_in[start : start + chunk].to(device))
        recon.append(out.cpu())
        fired.append((latents > 0).cpu())
    shape = targets.shape[:-1]
    return summarize(targets, torch.cat(recon).view(*shape, -1), torch.cat(fired).view(*shape, -1))


def _keep_first(original: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Position 0 keeps the model's own activation (it is excluded from training)."""
    return torch.cat([original[:, :1], new[:, 1:]], dim=1)


def dictionary_splice(lm: LoadedModel, coder: SparseCoder, input_hook: str) -> Callable[[], AbstractContextManager]:
    """Splice an SAE into its hook point, or a transcoder in place of its MLP's output."""
    hook = HookPoint.parse(input_hook)
    check_layer(lm, hook.layer)
    if coder.d_in != lm.d_model:
        raise CircuitDBError(f"dictionary width {coder.d_in} does not match {lm.name}'s d_model {lm.d_model}")
    if coder.reconstructs_input:
        return lambda: replaced(lm, hook, lambda act: _keep_first(act, coder(act)[0]))
    return lambda: mlp_replaced(lm, hook.layer, lambda mlp_in, mlp_out: _keep_first(mlp_out, coder(mlp_in)[0]))


def clt_splice(lm: LoadedModel, clt: CrossLayerTranscoder, layers: list[int]) -> Callable[[], AbstractContextManager]:
    """Replace the MLPs of `layers` by the CLT at once: each layer's output sums the writes of all sources so far."""
    if clt.d_in != lm.d_model or clt.n_layers != len(layers):
        raise CircuitDBError(
            f"CLT of {clt.n_layers} layers × {clt.d_in} does not fit {len(layers)} layers of {lm.name}"
        )

    @contextmanager
    def splice() -> Iterator[None]:
        latents: list[torch.Tensor] = []

        def make(index: int):
            def fn(mlp_in: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
                del latents[index:]  # a new forward pass starts over
                latents.append(clt.encode_layer(index, mlp_in))
                return _keep_first(mlp_out, clt.decode_layer(index, latents))

            return fn

        with ExitStack() as stack:
            for index, layer in enumerate(layers):
                stack.enter_context(mlp_replaced(lm, layer, make(index)))
            yield

    return splice


@torch.no_grad()
def spliced_metrics(
    lm: LoadedModel, splice: Callable[[], AbstractContextManager], blocks: torch.Tensor, batch_size: int = 1
) -> tuple[float, float]:
    """(ΔCE, KL) of running token `blocks` [n, context] inside `splice()` against the clean model.

    One block at a time by default: logits over a 49k vocabulary are 50 MB per block of 256.
    """
    ce_clean = ce_spliced = kl = 0.0
    count = 0
    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start : start + batch_size].long().to(lm.device)
        clean = lm.model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        with splice():
            spliced = lm.model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:].reshape(-1)
        log_clean = clean.log_softmax(-1).reshape(-1, clean.shape[-1])
        log_spliced = spliced.log_softmax(-1).reshape(-1, spliced.shape[-1])
        ce_clean += float(F.nll_loss(log_clean, targets, reduction="sum"))
        ce_spliced += float(F.nll_loss(log_spliced, targets, reduction="sum"))
        kl += float(F.kl_div(log_spliced, log_clean, log_target=True, reduction="sum"))
        count += targets.numel()
    return (ce_spliced - ce_clean) / count, kl / count
