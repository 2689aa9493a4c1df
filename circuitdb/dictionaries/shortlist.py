"""Top-k of a matrix product (x·Wᵀ + b, per row) in fp32, found through a bf16 shortlist.

Feature statistics need the k largest of 4096 pre-activations for each of ~60k tokens, and the k
largest and smallest of 49k logits for each latent. A full fp32 product followed by `topk` costs
1.4 s per dictionary for the pre-activations alone on two cores. Where bf16 products are native
(AVX512-BF16/AMX CPUs, GPUs) they are 5× faster, so a bf16 product shortlists each row's SHORTLIST·k
best columns and only those are recomputed in fp32, as a sampled product (`sampled_addmm`: no
gathered copies of weight rows).

bf16 moves a value by ~0.2% of |x|·|w|, much less than the gap between the k-th and the 3k-th
largest: on the demo's 30 transcoders (1.7 M tokens) the winners differ from a full fp32 top-k only
where two values tie to within fp32 rounding (`benchmarks/query.py --check-shortlist`).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)  # sampled_addmm's pattern

SHORTLIST = 3
"""bf16 candidates per wanted entry that are recomputed in fp32."""
GROUPS = 8
"""Strided column groups used to find a row's largest entries without a top-k over the whole row."""


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively (much faster than fp32) on `device`.

    Without AVX512-BF16 or AMX a CPU emulates bf16 at about fp32 speed, so shortlisting would only
    add work; the CPU probes are private torch functions, so a torch without them gets plain fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return device.type == "cpu" and any(probe is not None and probe() for probe in probes)


def coarse_top_columns(coarse: torch.Tensor, m: int, largest: bool = True) -> torch.Tensor:
    """Columns of the m largest (or smallest) entries of each row of `coarse` [rows, n], unsorted.

    Only the m strided column groups with the most extreme members can hold them, so one top-k runs
    over the n/GROUPS group extremes and one over those groups' m·GROUPS members, instead of one over
    the whole row (2-3× faster on 4k- and 49k-wide rows).
    """
    rows, n = coarse.shape
    width = n // GROUPS
    if width < m:
        return coarse.topk(m, dim=1, largest=largest, sorted=False).indices
    grouped = coarse[:, : width * GROUPS].view(rows, GROUPS, width)
    extremes = grouped.amax(1) if largest else grouped.amin(1)
    groups = extremes.topk(m, dim=1, largest=largest, sorted=False).indices
    offsets = width * torch.arange(GROUPS, device=coarse.device).view(1, GROUPS, 1)
    tail = torch.arange(width * GROUPS, n, device=coarse.device).expand(rows, -1)
    members = torch.cat([(groups.unsqueeze(1) + offsets).flatten(1), tail], dim=1)
    return members.gather(1, coarse.gather(1, members).topk(m, dim=1, largest=largest, sorted=False).indices)


@torch.no_grad()
def top_products(
    x: torch.Tensor, weight: torch.Tensor, k: int, bias: torch.Tensor | None = None, block_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of the k largest entries of each row of x @ weightᵀ + bias, unsorted.

    x: [rows, d]; weight: [n, d]; bias: [n] or None. Rows are processed `block_rows` at a time, so
    memory stays bounded whatever the number of rows.
    """
    x, weight = x.detach().float(), weight.detach().float()
    bias = None if bias is None else bias.detach().float()
    shortlist = len(x) > 0 and SHORTLIST * k < weight.shape[0] and native_bf16(x.device)
    coarse_weight = weight.bfloat16() if shortlist else None
    coarse_bias = None if bias is None or not shortlist else bias.bfloat16()
    values, columns = [], []
    for block in x.split(block_rows):
        if shortlist:
            candidates = coarse_top_columns(F.linear(block.bfloat16(), coarse_weight, coarse_bias), SHORTLIST * k)
            best_values, best_columns = exact_top(block, weight, bias, candidates, k)
        else:
            exact = block @ weight.T if bias is None else torch.addmm(bias, block, weight.T)
            best_values, best_columns = exact.topk(k, dim=-1, sorted=False)
        values.append(best_values)
        columns.append(best_columns)
    return torch.cat(values), torch.cat(columns)


def exact_top(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of the k largest fp32 values of x @ weightᵀ + bias among each row's
    `candidates` [rows, m] (column ids), unsorted; only those rows·m products are computed."""
    candidates = candidates.sort(dim=1).values  # CSR wants each row's columns in order
    rows, m = candidates.shape
    pattern = torch.sparse_csr_tensor(
        torch.arange(0, rows * m + 1, m, device=x.device),
        candidates.flatten(),
        torch.zeros(rows * m, device=x.device),
        size=(rows, len(weight)),
        check_invariants=False,
    )
    exact = torch.sparse.sampled_addmm(pattern, x, weight.T).values().view(rows, m)
    if bias is not None:
        exact += bias[candidates]
    values, picked = exact.topk(k, dim=1, sorted=False)
    return values, candidates.gather(1, picked)
