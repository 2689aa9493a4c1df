"""Harvest activations at many hook points in one forward pass into safetensors shards.

Layout of one run (one corpus split): `<run>/<hook>/shard-00000.safetensors` holding
`activations` [n_sequences, context, d] and `token_ids` [n_sequences, context], plus
`<run>/<hook>/manifest.json` listing every finished shard with its sha256.

- The forward stops after the deepest requested hook (see `models.hooks.capture`).
- Memory is bounded by the shard budget (`harvest.shard_mb`). Shards are written synchronously:
  on a 2-core machine a background writer steals a core from the forward pass and costs more
  than it hides (measured: ~25% slower than writing in line).
- Resumable: a shard counts as done once its manifest entry is written (after the file is in
  place), so after a crash the finished shards are skipped and nothing half-written is trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from circuitdb.config import HarvestConfig
from circuitdb.corpus import TokenizedCorpus
from circuitdb.errors import CircuitDBError
from circuitdb.models import HookPoint, LoadedModel, capture, check_layer, resolve_hooks
from circuitdb.store import Store, atomic_write_bytes, write_partition
from circuitdb.store.integrity import verify

MANIFEST = "manifest.json"


@dataclass
class ShardRecord:
    index: int
    """Shard number within its hook."""
    file: str
    """File name inside the hook folder."""
    first_block: int
    """First block of the shard within the harvested split."""
    n_sequences: int
    """Blocks in the shard."""
    sha256: str
    """Checksum of the file."""


def shard_sequences(cfg: HarvestConfig, n_hooks: int, context: int, d_model: int) -> int:
    """Blocks per shard so that one shard of all hooks fits `cfg.shard_mb`, a multiple of the batch."""
    bytes_per_block = n_hooks * context * d_model * torch.tensor([], dtype=getattr(torch, cfg.dtype)).element_size()
    per_shard = max(1, cfg.shard_mb * 2**20 // bytes_per_block)
    return max(cfg.batch_size, per_shard // cfg.batch_size * cfg.batch_size)


def _fingerprint(lm: LoadedModel, blocks: torch.Tensor, hook: HookPoint, cfg: HarvestConfig, per_shard: int) -> dict:
    """What a hook folder's shards depend on; a manifest with another fingerprint is stale."""
    return {
        "model": lm.name,
        "hook": hook.name,
        "tokens_sha256": hashlib.sha256(blocks.numpy().tobytes()).hexdigest(),
        "n_sequences": blocks.shape[0],
        "context": blocks.shape[1],
        "d": lm.d_model,
        "dtype": cfg.dtype,
        "shard_sequences": per_shard,
    }


def read_manifest(hook_dir: Path) -> dict | None:
    path = hook_dir / MANIFEST
    if not path.is_file():
        return None
    verify(hook_dir.parents[2], path)  # <store>/activations/<run>/<hook>/manifest.json
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CircuitDBError(f"corrupt activation manifest: {path}") from None


def harvest(
    lm: LoadedModel,
    blocks: torch.Tensor,
    hooks: list[HookPoint],
    run_dir: Path,
    cfg: HarvestConfig,
    progress: bool = True,
) -> dict[str, dict]:
    """Store activations of `blocks` [n, context] at `hooks` under `run_dir`; returns each hook's manifest."""
    if blocks.ndim != 2 or blocks.shape[0] == 0:
        raise CircuitDBError("nothing to harvest: the corpus split has no blocks")
    if blocks.shape[1] > lm.max_context:
        raise CircuitDBError(f"context {blocks.shape[1]} exceeds the model's maximum of {lm.max_context}")
    n_blocks, context = blocks.shape
    per_shard = shard_sequences(cfg, len(hooks), context, lm.d_model)
    n_shards = math.ceil(n_blocks / per_shard)
    manifests = {h.name: _open_manifest(run_dir / h.name, _fingerprint(lm, blocks, h, cfg, per_shard)) for h in hooks}
    done = {h.name: {s["index"] for s in manifests[h.name]["shards"]} for h in hooks}
    todo = [i for i in range(n_shards) if any(i not in done[h.name] for h in hooks)]
    dtype = getattr(torch, cfg.dtype)
    bar = tqdm(total=n_blocks * context, unit="tok", desc=f"harvest {run_dir.name}", disable=not progress)
    bar.update(sum(min(per_shard, n_blocks - i * per_shard) for i in range(n_shards) if i not in todo) * context)
    for index in todo:
        start, stop = index * per_shard, min((index + 1) * per_shard, n_blocks)
        missing = [h for h in hooks if index not in done[h.name]]
        buffers = {h.name: torch.empty(stop - start, context, lm.d_model, dtype=dtype) for h in missing}
        for b in range(start, stop, cfg.batch_size):
            batch = blocks[b : min(b + cfg.batch_size, stop)].long()
            rows = slice(b - start, b - start + batch.shape[0])
            capture(lm, batch, hooks, sink=partial(_copy_into, buffers, rows))
            bar.update(batch.numel())
        token_ids = blocks[start:stop].contiguous()
        for name, buffer in buffers.items():
            _write_shard(run_dir / name, manifests[name], index, start, buffer, token_ids)
    bar.close()
    for name, manifest in manifests.items():
        manifest["shards"].sort(key=lambda s: s["index"])
        manifest["complete"] = len(manifest["shards"]) == n_shards
        atomic_write_bytes(run_dir / name / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifests


def _copy_into(buffers: dict[str, torch.Tensor], rows: slice, hook: HookPoint, activation: torch.Tensor) -> None:
    """Capture sink: cast one hook's batch into its shard buffer while it is still in cache."""
    if hook.name not in buffers:
        return
    stored = buffers[hook.name][rows]
    stored.copy_(activation)
    # An inf/nan anywhere makes the fp32 sum non-finite; 30x cheaper than isfinite on fp16.
    if not torch.isfinite(stored.sum(dtype=torch.float32)):
        raise CircuitDBError(f"{hook}: activations overflow {stored.dtype}; set harvest.dtype to bfloat16")


def _open_manifest(hook_dir: Path, fingerprint: dict) -> dict:
    """The hook folder's manifest if it matches `fingerprint` (its damaged shards left out, to be redone),
    else a fresh one (stale shards removed)."""
    try:
        existing = read_manifest(hook_dir)
    except CircuitDBError:
        existing = None  # damaged: its shards are harvested again
    if existing is not None and existing.get("fingerprint") == fingerprint:
        existing["shards"] = [s for s in existing["shards"] if _whole(hook_dir / s["file"])]  # others: redone
        return existing
    if hook_dir.is_dir():
        for stale in hook_dir.glob("shard-*.safetensors"):
            stale.unlink()
    return {"fingerprint": fingerprint, "shards": [], "complete": False}


def _whole(shard: Path) -> bool:
    try:
        verify(shard.parents[3], shard)  # <store>/activations/<run>/<hook>/<shard>
    except (CircuitDBError, FileNotFoundError):
        return False
    return True


def _write_shard(
    hook_dir: Path, manifest: dict, index: int, first_block: int, activations: torch.Tensor, token_ids: torch.Tensor
) -> None:
    """Write one shard file, then record it in the manifest (file first, so the manifest never lies)."""
    data = save({"activations": activations, "token_ids": token_ids})
    file = f"shard-{index:05d}.safetensors"
    atomic_write_bytes(hook_dir / file, data)
    record = ShardRecord(index, file, first_block, activations.shape[0], hashlib.sha256(data).hexdigest())
    manifest["shards"].append(record.__dict__)
    atomic_write_bytes(hook_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def harvest_layers(
    store: Store, lm: LoadedModel, corpus: TokenizedCorpus, layers: list[int], cfg: HarvestConfig, progress: bool = True
) -> pl.DataFrame:
    """Harvest `cfg.hooks` at `layers` for both splits of `corpus`, in one forward pass per batch.

    Writes one `activation_shards` partition per layer (`layer-<L>`) and returns all its rows.
    """
    for layer in layers:
        check_layer(lm, layer)
    hooks = resolve_hooks(lm, [HookPoint.make(kind, layer) for kind in cfg.hooks for layer in layers])
    rows = []
    for split in ("train", "eval"):
        blocks = corpus.split(split)
        if blocks.shape[0] == 0:
            continue
        run = f"{corpus.name}-{split}"
        manifests = harvest(lm, blocks, hooks, store.activation_run(run), cfg, progress=progress)
        for hook in hooks:
            for shard in manifests[hook.name]["shards"]:
                rows.append(
                    {
                        "run": run,
                        "corpus": corpus.name,
                        "split": split,
                        "model": lm.name,
                        "hook": hook.name,
                        "layer": hook.layer,
                        "shard": shard["index"],
                        "first_block": shard["first_block"],
                        "n_sequences": shard["n_sequences"],
                        "n_tokens": shard["n_sequences"] * corpus.context,
                        "d": lm.d_model,
                        "dtype": cfg.dtype,
                        "path": str(Path("activations") / run / hook.name / shard["file"]),
                        "sha256": shard["sha256"],
                    }
                )
    frame = pl.DataFrame(rows)
    for layer in layers:
        write_partition(store, "activation_shards", f"layer-{layer:03d}", frame.filter(pl.col("layer") == layer))
    return frame
