"""Hook points and capturing them in one forward pass that stops as early as it can.

Names follow one pattern everywhere (code, tables, CLI): `<kind>.<layer>`, e.g. `resid_pre.3`,
`attn_out.3`, `mlp_in.3` (after the MLP's norm), `mlp_out.3`, `resid_post.3`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from circuitdb.config import HOOK_KINDS
from circuitdb.errors import CircuitDBError
from circuitdb.models.loading import LoadedModel


@dataclass(frozen=True, order=True)
class HookPoint:
    layer: int
    """Decoder block index."""
    kind_index: int
    """Position of the kind in HOOK_KINDS, i.e. in forward order inside the block."""

    @property
    def kind(self) -> str:
        return HOOK_KINDS[self.kind_index]

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def make(cls, kind: str, layer: int) -> HookPoint:
        if kind not in HOOK_KINDS:
            raise CircuitDBError(f"unknown hook kind {kind!r}; expected one of {', '.join(HOOK_KINDS)}")
        return cls(layer=layer, kind_index=HOOK_KINDS.index(kind))

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        kind, _, layer = name.rpartition(".")
        if kind not in HOOK_KINDS or not layer.isdigit():
            raise CircuitDBError(
                f"unknown hook point {name!r}; expected <kind>.<layer> with kind one of {', '.join(HOOK_KINDS)}"
            )
        return cls.make(kind, int(layer))


def resolve_hooks(lm: LoadedModel, names: Iterable[str | HookPoint]) -> list[HookPoint]:
    """Parse hook names and check their layers exist in this model; sorted in forward order."""
    hooks = sorted({h if isinstance(h, HookPoint) else HookPoint.parse(h) for h in names})
    if not hooks:
        raise CircuitDBError("no hook points requested")
    for hook in hooks:
        check_layer(lm, hook.layer)
    return hooks


def check_layer(lm: LoadedModel, layer: int) -> None:
    if not 0 <= layer < lm.n_layers:
        raise CircuitDBError(f"layer {layer} out of range: {lm.name} has {lm.n_layers} layers (0-{lm.n_layers - 1})")


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the network (deeper layers, final norm, lm_head)."""


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A module's first input: positional, or a decoder block's `hidden_states` keyword."""
    return args[0] if args else kwargs["hidden_states"]


def _replace_input(fn: Callable[[torch.Tensor], torch.Tensor], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return (fn(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}


def _replace_output(fn: Callable[[torch.Tensor], torch.Tensor], out: object) -> object:
    return (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)


PLACEMENT: dict[str, tuple[str, bool]] = {
    "resid_pre": ("", True),
    "attn_out": ("attn_out_module", False),
    "mlp_in": ("mlp", True),
    "mlp_out": ("mlp_out_module", False),
    "resid_post": ("", False),
}
"""Where each hook kind sits in a block: (the `Architecture` field naming the module, '' for the block itself;
whether the hook reads the module's input rather than its output)."""


def _site(lm: LoadedModel, hook: HookPoint) -> tuple[torch.nn.Module, bool]:
    """The module a hook point is read at, and whether it is that module's input."""
    field, reads_input = PLACEMENT[hook.kind]
    block = lm.block(hook.layer)
    return (block.get_submodule(getattr(lm.arch, field)) if field else block), reads_input


@torch.inference_mode()
def capture(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    hooks: list[HookPoint],
    sink: Callable[[HookPoint, torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run `input_ids` through the model and return each hook point's activation [batch, pos, d].

    The forward pass is cut off right after the deepest requested hook point, so asking for
    `resid_post.12` costs 13 blocks and no unembedding. With a `sink`, each activation is handed
    to it the moment it is computed (while still in cache) instead of being kept and returned.
    """
    captured: dict[str, torch.Tensor] = {}
    last = max(hooks)
    handles = []

    def store(hook: HookPoint, tensor: torch.Tensor) -> None:
        if sink is None:
            captured[hook.name] = tensor
        else:
            sink(hook, tensor)
        if hook == last:
            raise _StopForward

    for hook in hooks:
        module, reads_input = _site(lm, hook)
        if reads_input:
            read = lambda m, args, kwargs, h=hook: store(h, _input(args, kwargs))  # noqa: E731
            handles.append(module.register_forward_pre_hook(read, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, a, out, h=hook: store(h, _first(out))))
    try:
        lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


@contextmanager
def replaced(lm: LoadedModel, hook: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, forward passes use fn(activation) in place of the activation at `hook`."""
    module, reads_input = _site(lm, hook)
    if reads_input:
        handle = module.register_forward_pre_hook(
            lambda m, args, kwargs: _replace_input(fn, args, kwargs), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(lambda m, args, out: _replace_output(fn, out))
    try:
        yield
    finally:
        handle.remove()


def replace_mlp_out(
    lm: LoadedModel, layer: int, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that make the MLP block of `layer` add fn(mlp_in, mlp_out) to the residual instead of mlp_out
    (after the post-norm, where the architecture has one). Returns the handles to remove."""
    block = lm.block(layer)
    seen: list[torch.Tensor] = []
    mlp, mlp_out = block.get_submodule(lm.arch.mlp), block.get_submodule(lm.arch.mlp_out_module)
    keep_input = mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__(slice(None), [args[0]]))
    replace = mlp_out.register_forward_hook(lambda m, args, out: fn(seen[0], _first(out)))
    return [keep_input, replace]


@contextmanager
def mlp_replaced(
    lm: LoadedModel, layer: int, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within: the MLP block of `layer` adds fn(mlp_in, mlp_out) instead of mlp_out (transcoders)."""
    handles = replace_mlp_out(lm, layer, fn)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
