"""Models: loading (HF directory, GGUF, embedded default) and hook points per architecture."""

from circuitdb.models.hooks import HookPoint, capture, check_layer, mlp_replaced, replaced, resolve_hooks
from circuitdb.models.loading import (
    EMBEDDED_MODEL,
    LoadedModel,
    claimed_device,
    count_layers,
    load_model,
    resolve_device,
)

__all__ = [
    "EMBEDDED_MODEL",
    "HookPoint",
    "LoadedModel",
    "capture",
    "count_layers",
    "check_layer",
    "claimed_device",
    "load_model",
    "mlp_replaced",
    "replaced",
    "resolve_device",
    "resolve_hooks",
]
