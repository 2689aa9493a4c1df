"""Stream shuffled (input, target) activation batches from harvested shards, never the whole set.

A source is one activation run and the hook points a dictionary reads and reconstructs: one of
each for an SAE or a per-layer transcoder, one per layer for a cross-layer transcoder. Batches are
[tokens, hooks, d]. Each epoch visits the shards in a seeded random order and mixes
sequences from all shards into a buffer of `shuffle_mb`, so memory is bounded by that buffer while batches still mix
tokens from different texts. The stream is a pure function of (seed, epoch), which is what lets
training resume bit-for-bit by replaying it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitdb.errors import CircuitDBError
from circuitdb.harvest import read_manifest
from circuitdb.models import LoadedModel, capture, resolve_hooks
from circuitdb.store.integrity import verify
from circuitdb.store.remote import prefetch


@dataclass
class ActivationSource:
    run_dir: Path
    """`<store>/activations/<corpus>-<split>`."""
    input_hooks: list[str]
    """Hook points the dictionary reads."""
    target_hooks: list[str]
    """Hook points it reconstructs (= input_hooks for an SAE; empty when only the inputs are read)."""
    exclude_first_position: bool = True
    """Drop position 0 (BOS), whose huge norm would dominate the loss."""

    def __post_init__(self) -> None:
        self.manifests = {}
        for hook in dict.fromkeys([*self.input_hooks, *self.target_hooks]):
            manifest = read_manifest(self.run_dir / hook)
            if manifest is None or not manifest["shards"]:
                raise CircuitDBError(f"no activations for {hook} in {self.run_dir}; harvest them first")
            if not manifest.get("complete"):
                raise CircuitDBError(f"activations for {hook} in {self.run_dir} are incomplete; re-run the harvest")
            self.manifests[hook] = manifest
        shards = [[s["file"] for s in m["shards"]] for m in self.manifests.values()]
        if any(s != shards[0] for s in shards):
            raise CircuitDBError(f"hooks {', '.join(self.manifests)} were harvested into different shards")
        widths = {m["fingerprint"]["d"] for m in self.manifests.values()}
        if len(widths) != 1:
            raise CircuitDBError(f"hooks {', '.join(self.manifests)} have different widths {sorted(widths)}")
        self.files = shards[0]
        self.d = widths.pop()
        self._layouts: dict[tuple[str, str], _ShardLayout] = {}
        # a store on object storage: every shard downloads in the background, a read waits for its own
        shard_paths = [self.run_dir / hook / file for hook in self.manifests for file in self.files]
        prefetch(self.run_dir.parent.parent, shard_paths)

    @property
    def shard_checksums(self) -> list[str]:
        """The sha256 of every shard this source reads (what results trained on it depend on)."""
        return [shard["sha256"] for manifest in self.manifests.values() for shard in manifest["shards"]]

    @property
    def n_tokens(self) -> int:
        """Training tokens per epoch (after dropping position 0 if configured)."""
        fp = next(iter(self.manifests.values()))["fingerprint"]
        return fp["n_sequences"] * (fp["context"] - int(self.exclude_first_position))

    def _layout(self, hook: str, file: str) -> _ShardLayout:
        key = (hook, file)
        if key not in self._layouts:
            path = self.run_dir / hook / file
            verify(self.run_dir.parent.parent, path)  # <store>/activations/<run>/<hook>/<file>
            self._layouts[key] = _shard_layout(path)
        return self._layouts[key]

    @property
    def n_sequences(self) -> int:
        return sum(self._layout(self.input_hooks[0], file).shape[0] for file in self.files)

    def read(self, sequences: torch.Tensor, drop_first_position: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) [len(sequences), positions, hooks, d] in the storage dtype, in the given order
        (targets empty when the source has no target hooks).

        `sequences` index the run's sequences across all shards; each shard is read once, in
        ascending row order, so any selection costs about one pass over the rows it touches.
        """
        sizes = torch.tensor([self._layout(self.input_hooks[0], file).shape[0] for file in self.files])
        starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        if len(sequences) and (sequences.min() < 0 or sequences.max() >= starts[-1]):
            raise CircuitDBError(f"sequence index out of range: the run has {int(starts[-1])} sequences")
        order = sequences.argsort()
        ascending = sequences[order]
        shard_of = torch.searchsorted(starts, ascending, right=True) - 1
        start = int(drop_first_position)

        def gather(hooks: list[str]) -> torch.Tensor:
            parts = []
            for shard in shard_of.unique().tolist():
                rows = ascending[shard_of == shard] - starts[shard]
                parts.append(torch.stack([self._layout(h, self.files[shard]).read_rows(rows) for h in hooks], dim=2))
            gathered = torch.cat(parts)[:, start:]
            return gathered[order.argsort()]

        inputs = gather(self.input_hooks)
        return inputs, (gather(self.target_hooks) if self.target_hooks else inputs[:, :, :0])

    def batches(self, batch_size: int, seed: int, epoch: int, shuffle_mb: int = 256) -> Iterator[tuple]:
        """Shuffled (inputs [B, H_in, d], targets [B, H_out, d]) for one epoch; a last partial batch is dropped.

        Sequences are drawn in a random order from all shards at once (read row by row), and
        the tokens of `shuffle_mb` worth of sequences (kept in the storage dtype) are shuffled
        together: batches are close to i.i.d. while memory holds one such buffer.
        """
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_sequences, generator=generator)
        layout = self._layout(self.input_hooks[0], self.files[0])
        per_sequence = layout.row_bytes * (len(self.input_hooks) + len(self.target_hooks))
        per_chunk = max(1, shuffle_mb * 2**20 // per_sequence)

        def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for start in range(0, len(order), per_chunk):
                inputs, targets = self.read(order[start : start + per_chunk], self.exclude_first_position)
                yield inputs.flatten(0, 1), targets.flatten(0, 1)

        return shuffled_batches(chunks(), batch_size, generator)

    def sequences(self, max_sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `max_sequences` (inputs, targets) [sequences, positions, hooks, d], float32, all positions."""
        count = self.n_sequences if max_sequences is None else min(max_sequences, self.n_sequences)
        inputs, targets = self.read(torch.arange(count))
        return inputs.float(), targets.float()


@dataclass
class LiveActivationSource:
    """The same stream computed on the fly from the model: one-pass jobs need no stored activations.

    Each epoch runs the blocks in a seeded order through the model (stopping after the deepest hook)
    and shuffles the tokens of `buffer_blocks` blocks at a time. Same interface as ActivationSource.
    """

    lm: LoadedModel
    """The model to run."""
    blocks: torch.Tensor
    """Token blocks [n, context] to train on."""
    input_hooks: list[str]
    """Hook points the dictionary reads."""
    target_hooks: list[str]
    """Hook points it reconstructs."""
    exclude_first_position: bool = True
    """Drop position 0 (BOS)."""
    buffer_blocks: int = 32
    """Blocks whose tokens are shuffled together (`shuffle_mb` is ignored: the model sets the pace)."""
    batch_blocks: int = 8
    """Blocks per forward pass."""

    def __post_init__(self) -> None:
        self.hooks = resolve_hooks(self.lm, [*self.input_hooks, *self.target_hooks])
        self.d = self.lm.d_model

    @property
    def n_tokens(self) -> int:
        return self.blocks.shape[0] * (self.blocks.shape[1] - int(self.exclude_first_position))

    def _activations(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) [tokens, hooks, d] of `blocks`, computed in forward passes of batch_blocks."""
        steps = range(0, len(blocks), self.batch_blocks)
        parts = [capture(self.lm, blocks[i : i + self.batch_blocks].long(), self.hooks) for i in steps]
        acts = {name: torch.cat([p[name] for p in parts]).float().cpu() for name in parts[0]}
        start = int(self.exclude_first_position)
        inputs = torch.stack([acts[h] for h in self.input_hooks], dim=2)[:, start:]
        targets = torch.stack([acts[h] for h in self.target_hooks], dim=2)[:, start:]
        return inputs.flatten(0, 1), targets.flatten(0, 1)

    def batches(self, batch_size: int, seed: int, epoch: int, shuffle_mb: int = 256) -> Iterator[tuple]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.blocks.shape[0], generator=generator)
        chunks = (
            self._activations(self.blocks[order[start : start + self.buffer_blocks]])
            for start in range(0, len(order), self.buffer_blocks)
        )
        return shuffled_batches(chunks, batch_size, generator)


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


@dataclass(frozen=True)
class _ShardLayout:
    """Where the `activations` tensor of a safetensors shard lies, so rows can be read without loading it."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * torch.tensor([], dtype=self.dtype).element_size()

    def read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows [len(rows), *shape[1:]] read with one seek each (sorted rows read almost sequentially)."""
        out = torch.empty(len(rows), *self.shape[1:], dtype=self.dtype)
        target = out.view(torch.uint8).view(len(rows), -1).numpy()
        with self.path.open("rb", buffering=0) as handle:
            for i, row in enumerate(rows.tolist()):
                handle.seek(self.offset + row * self.row_bytes)
                if handle.readinto(memoryview(target[i])) != self.row_bytes:
                    raise CircuitDBError(f"corrupt activation shard (truncated): {self.path}")
        return out


def _shard_layout(path: Path) -> _ShardLayout:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size > size - 8:
                raise ValueError("header larger than the file")
            header = json.loads(handle.read(header_size))
        entry = header["activations"]
        layout = _ShardLayout(
            path, 8 + header_size + entry["data_offsets"][0], tuple(entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]]
        )
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        raise CircuitDBError(f"corrupt or missing activation shard: {path}") from None
    if layout.offset + layout.shape[0] * layout.row_bytes > size:
        raise CircuitDBError(f"corrupt activation shard (shorter than its header says): {path}")
    return layout


def shuffled_batches(
    chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float32 batches from each (inputs, targets) chunk in a random token order; leftovers carry over.

    Only the order is shuffled: each batch is gathered (and cast) on its own, so a chunk is never
    copied whole and can stay in its compact storage dtype.
    """
    carry: tuple[torch.Tensor, torch.Tensor] | None = None
    for inputs, targets in chunks:
        if carry is not None:
            inputs, targets = torch.cat([carry[0], inputs]), torch.cat([carry[1], targets])
        perm = torch.randperm(inputs.shape[0], generator=generator)
        whole = inputs.shape[0] // batch_size * batch_size
        for b in range(0, whole, batch_size):
            picked = perm[b : b + batch_size]
            yield inputs[picked].float(), targets[picked].float()
        carry = inputs[perm[whole:]], targets[perm[whole:]]
