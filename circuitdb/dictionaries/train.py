"""Train a sparse dictionary on streamed activation shards.

Adam with linear warm-up and a linear decay at the end; decoder init from random unit rows and
encoder = decoderᵀ; b_dec from the data mean; AuxK on latents that have not fired for a while (the
TopK family) so that few latents die; optional input normalization (folded back into the weights at
the end, so the saved dictionary acts on raw activations); checkpoints every N steps and an exact
resume (the data stream is replayed from its seed and the finished steps skipped).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from circuitdb.config import DictionaryConfig, TrainConfig
from circuitdb.dictionaries.activations import Activation
from circuitdb.dictionaries.cross_layer_transcoder import CrossLayerTranscoder
from circuitdb.dictionaries.data import ActivationSource, LiveActivationSource
from circuitdb.dictionaries.sparse_coder import SparseCoder
from circuitdb.errors import CircuitDBError
from circuitdb.models.loading import resolve_device
from circuitdb.store.space import is_out_of_space, lacks_room, out_of_space


@dataclass
class TrainResult:
    coder: SparseCoder | CrossLayerTranscoder
    """The trained dictionary, acting on raw activations."""
    history: list[dict] = field(default_factory=list)
    """Per logged step: step, loss, fvu, l0, lr."""
    tokens: int = 0
    """Tokens trained on."""


def _scales(x: torch.Tensor) -> torch.Tensor:
    """Per hook [H], the factor that gives x [tokens, H, d] a mean squared norm of d."""
    return math.sqrt(x.shape[-1]) / x.norm(dim=-1).pow(2).mean(0).sqrt().clamp_min(1e-8)


def _make_coder(
    cfg: DictionaryConfig, source: ActivationSource | LiveActivationSource
) -> SparseCoder | CrossLayerTranscoder:
    if cfg.kind == "clt":
        if source.input_hooks != [h.replace("mlp_out", "mlp_in") for h in source.target_hooks]:
            raise CircuitDBError("a cross-layer transcoder reads mlp_in.l and writes mlp_out.l of the same layers")
        return CrossLayerTranscoder(cfg, len(source.input_hooks), source.d)
    if len(source.input_hooks) != 1 or len(source.target_hooks) != 1:
        raise CircuitDBError(f"a {cfg.kind} reads one hook point and reconstructs one")
    if SparseCoder.of_kind(cfg.kind).reconstructs_input and source.input_hooks != source.target_hooks:
        raise CircuitDBError("an SAE reconstructs the hook point it reads")
    return SparseCoder(cfg, source.d, source.d)


def train_dictionary(
    cfg: DictionaryConfig,
    source: ActivationSource | LiveActivationSource,
    tcfg: TrainConfig,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a dictionary of `cfg` on `source`.

    With a `checkpoint` path, state is saved there every `tcfg.checkpoint_every` steps, and a run
    that finds a checkpoint of the same configuration continues from it to the same final weights.
    """
    device = resolve_device(tcfg.device)
    torch.manual_seed(tcfg.seed)
    coder = _make_coder(cfg, source).to(device)
    steps_per_epoch = source.n_tokens // tcfg.batch_size
    total_steps = steps_per_epoch * tcfg.epochs
    if total_steps == 0:
        raise CircuitDBError(f"too few tokens to train: {source.n_tokens} < one batch of {tcfg.batch_size}")
    lr = tcfg.lr or 2e-4 * math.sqrt(16384 / cfg.n_latents)
    optimizer = torch.optim.Adam(coder.parameters(), lr=lr, betas=(0.9, 0.999))
    decay_start = total_steps * (1 - tcfg.decay_fraction)

    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, tcfg.warmup_steps))
        decay = 1.0 if step < decay_start else max(0.0, (total_steps - step) / (total_steps - decay_start))
        return warm * decay

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    idle_tokens = torch.zeros(coder.b_enc.shape, device=device)  # [n_latents], or [L, n_latents] for a CLT
    history: list[dict] = []
    start_step = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["config"] != dataclasses.asdict(cfg) or state["total_steps"] != total_steps:
            raise CircuitDBError(f"checkpoint {checkpoint} belongs to another configuration; delete it to restart")
        coder.load_state_dict(state["coder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        idle_tokens, history, start_step = state["idle_tokens"], state["history"], state["step"]
        scale_in, scale_out, input_mean = state["scales"]
    else:
        scale_in, scale_out, input_mean = _initialize(coder, source, tcfg, device)

    def save_checkpoint(step: int) -> None:
        if checkpoint is None:
            return
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        state = {
            "config": dataclasses.asdict(cfg),
            "total_steps": total_steps,
            "coder": coder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "idle_tokens": idle_tokens,
            "history": history,
            "step": step,
            "scales": (scale_in, scale_out, input_mean),
        }
        try:
            torch.save(state, tmp)
            os.replace(tmp, checkpoint)
        except BaseException as failure:
            tmp.unlink(missing_ok=True)
            needed = _state_bytes(state)
            if is_out_of_space(failure) or lacks_room(checkpoint.parent, needed):
                raise out_of_space(checkpoint, needed) from None
            raise

    aux_k = tcfg.aux_k or source.d // 2
    bar = tqdm(
        total=total_steps, initial=start_step, desc=f"train {cfg.kind} {source.target_hooks[-1]}", disable=not progress
    )
    step = 0
    for epoch in range(tcfg.epochs):
        for inputs, targets in source.batches(tcfg.batch_size, tcfg.seed, epoch, tcfg.shuffle_mb):
            if step < start_step:  # replaying the stream up to where the checkpoint left off
                step += 1
                continue
            x = inputs.to(device) * scale_in[:, None] - input_mean
            y = targets.to(device) * scale_out[:, None]
            if isinstance(coder, CrossLayerTranscoder):
                loss, stats, fired = _clt_loss(coder, x, y, idle_tokens, tcfg)
            else:
                loss, stats, fired = _loss(coder, x[:, 0], y[:, 0], idle_tokens, tcfg, aux_k)
            if not torch.isfinite(loss):
                raise CircuitDBError(
                    f"training diverged: loss is {loss.item()} at step {step}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if _activation(coder).unit_decoder:
                coder.normalize_decoder()
            idle_tokens += x.shape[0]
            idle_tokens[fired] = 0
            step += 1
            if step % 10 == 0 or step == total_steps:
                history.append({"step": step, **stats, "lr": scheduler.get_last_lr()[0]})
                bar.set_postfix(fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}")
            bar.update(1)
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                save_checkpoint(step)
    bar.close()
    save_checkpoint(step)
    if isinstance(coder, CrossLayerTranscoder):
        coder.fold_input_mean(input_mean)
        coder.fold_scales(scale_in, scale_out)
    else:
        coder.fold_input_mean(input_mean[0])
        coder.fold_scales(float(scale_in[0]), float(scale_out[0]))
    coder.eval()
    return TrainResult(coder, history, step * tcfg.batch_size)


def _state_bytes(state: object) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(_state_bytes(value) for value in state)
    return 0


def _activation(coder: SparseCoder | CrossLayerTranscoder) -> Activation:
    """The coder's activation module (a CLT's are all of one kind: its first stands for them)."""
    return coder.activations[0] if isinstance(coder, CrossLayerTranscoder) else coder.activation


@torch.no_grad()
def _initialize(coder, source: ActivationSource, tcfg: TrainConfig, device):
    """Normalization scales, the input mean and b_dec = mean target, from the first batches of the stream.

    Transcoders see centred inputs while training (an SAE centres by b_dec itself): without it a few
    outlier dimensions of the normed MLP input pick the same latents for every token and most die.
    The mean is folded into b_enc at the end, so saved transcoders read raw activations.
    """
    sample_in, sample_out = [], []
    for inputs, targets in source.batches(tcfg.batch_size, tcfg.seed + 1, 0, tcfg.shuffle_mb):
        sample_in.append(inputs)
        sample_out.append(targets)
        if len(sample_in) * tcfg.batch_size >= 8192:
            break
    x, y = torch.cat(sample_in).to(device), torch.cat(sample_out).to(device)
    ones_in, ones_out = torch.ones(x.shape[1], device=device), torch.ones(y.shape[1], device=device)
    scale_in, scale_out = (_scales(x), _scales(y)) if tcfg.normalize else (ones_in, ones_out)
    if coder.reconstructs_input:
        scale_out = scale_in
    mean_out = (y * scale_out[:, None]).mean(0)
    coder.b_dec.copy_(mean_out if isinstance(coder, CrossLayerTranscoder) else mean_out[0])
    input_mean = (x * scale_in[:, None]).mean(0)
    if coder.centres_input:  # b_dec, which it learns, is the input's centre
        input_mean.zero_()
    return scale_in, scale_out, input_mean


def _loss(coder: SparseCoder, x, y, idle_tokens, tcfg: TrainConfig, aux_k: int):
    """Normalized MSE (+ AuxK or the sparsity penalty); returns (loss, stats, fired latent mask)."""
    activation = coder.activation
    variance = (y - y.mean(0)).pow(2).sum()
    if activation.k is not None:
        indices, values = coder.sparse_topk(x, activation.k)
        recon = coder.decode_sparse(indices, values) + coder.b_dec
        if coder.W_skip is not None:
            recon = recon + x @ coder.W_skip.T
        fired = torch.zeros_like(idle_tokens, dtype=torch.bool)
        fired[indices[values > 0]] = True
        l0 = (values > 0).sum(-1).float().mean()
        penalty = torch.zeros((), device=x.device)
    else:
        pre = coder.pre_activations(x)
        latents = activation(pre)
        recon = coder.decode(latents, x)
        fired = (latents > 0).any(0)
        l0 = (latents > 0).sum(-1).float().mean()
        penalty = activation.penalty(pre, latents, coder.W_dec.norm(dim=1))
    error = y - recon
    fvu = error.pow(2).sum() / variance
    loss = fvu + penalty
    dead = idle_tokens > tcfg.dead_after_tokens
    if activation.revives_dead and dead.any():
        loss = loss + tcfg.aux_coefficient * _aux_loss(coder, x, error.detach(), dead.nonzero().squeeze(1), aux_k)
    stats = {"loss": loss.item(), "fvu": fvu.item(), "l0": float(l0), "dead": float(dead.float().mean())}
    return loss, stats, fired


def _aux_loss(coder: SparseCoder, x: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int):
    """AuxK (Gao et al., 2024): the top dead latents must explain what the live ones missed.

    Computed densely over the dead latents only, which are few once training is healthy.
    """
    pre = coder.centred(x) @ coder.W_enc[dead].T + coder.b_enc[dead]
    values, indices = pre.topk(min(aux_k, dead.numel()), dim=-1, sorted=False)
    recon = F.embedding_bag(indices, coder.W_dec[dead], per_sample_weights=values.relu(), mode="sum")
    return (residual - recon).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-8)


def _clt_loss(coder: CrossLayerTranscoder, x, y, idle_tokens, tcfg: TrainConfig):
    """MSE summed over target layers, normalized by their summed variance, + the sparsity penalty."""
    recon, latents = coder(x)
    fvu = (y - recon).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    loss = fvu + coder.penalty(x, latents)
    fired = (latents > 0).any(0)
    l0 = (latents > 0).sum(-1).float().mean()
    dead = idle_tokens > tcfg.dead_after_tokens
    stats = {"loss": loss.item(), "fvu": fvu.item(), "l0": float(l0), "dead": float(dead.float().mean())}
    return loss, stats, fired
