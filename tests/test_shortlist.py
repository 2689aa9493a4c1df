"""The bf16 shortlist (top_products): the bf16-shortlisted top-k equals a full fp32 product's top-k."""

from __future__ import annotations

import pytest
import torch

from circuitdb.dictionaries import shortlist


@pytest.mark.parametrize("native", [False, True], ids=["fp32", "bf16-shortlist"])
@pytest.mark.parametrize(("n", "k", "with_bias"), [(1024, 8, True), (1000, 5, False), (50, 4, True)])
def test_top_products_match_a_full_fp32_top_k(monkeypatch, native: bool, n: int, k: int, with_bias: bool) -> None:
    """n=1000 leaves a tail outside the strided groups; n=50 is too narrow to shortlist."""
    monkeypatch.setattr(shortlist, "native_bf16", lambda device: native)
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(300, 32, generator=generator) * 2
    weight = torch.randn(n, 32, generator=generator)
    bias = torch.randn(n, generator=generator) if with_bias else None
    full = (x.double() @ weight.double().T + (0 if bias is None else bias.double())).topk(k, dim=1)
    values, columns = shortlist.top_products(x, weight, k, bias, block_rows=128)
    order = values.argsort(dim=1, descending=True)
    assert torch.equal(columns.gather(1, order), full.indices)
    assert torch.allclose(values.gather(1, order).double(), full.values, atol=1e-4)


def test_top_products_of_no_rows() -> None:
    values, columns = shortlist.top_products(torch.zeros(0, 8), torch.randn(2048, 8), 4)
    assert values.shape == columns.shape == (0, 4)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("n", [4096, 1000, 20])
def test_coarse_top_columns_are_the_row_extremes(n: int, largest: bool) -> None:
    """n=1000 leaves a tail of columns outside the strided groups; n=20 has fewer groups than wanted."""
    coarse = torch.randn(64, n, generator=torch.Generator().manual_seed(n))
    columns = shortlist.coarse_top_columns(coarse, 12, largest)
    expected = coarse.topk(12, dim=1, largest=largest).indices
    assert torch.equal(columns.sort(dim=1).values, expected.sort(dim=1).values)
