"""Capture runs the model's own Python once, under torch.export on fake tensors: whatever the forward
stores in place (a cache dict of rotary tables, as diffusers' Qwen-Image keeps) holds no fake tensor
afterwards, and the next real forward works."""

import functools

import pytest
import torch
from torch import nn

from dtrsurgeon.analysis.capture import capture


class CachingBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.cache = {}  # filled in place during forward

    def forward(self, x, t):
        table = self.cache.setdefault(x.shape[-1], torch.linspace(0, 1, x.shape[-1]))
        return x + self.lin(x * table) * t[:, None, None]


def test_in_place_caches_hold_real_tensors_after_capture():
    model = CachingBlock()
    x, t = torch.randn(2, 3, 8), torch.rand(2)
    capture(model, (x, t), {})
    assert all(type(v) is torch.Tensor for v in model.cache.values())
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), x + model.lin(x * torch.linspace(0, 1, 8)) * t[:, None, None])


class MemoisedTableBlock(nn.Module):
    """A rotary-style table memoised with ``functools.lru_cache`` on a method (diffusers' NucleusMoE keeps
    its video frequencies so): the capture's call fills the cache with a fake tensor."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - the pattern under test
    def table(self, width: int) -> torch.Tensor:
        return torch.linspace(0, 1, width)

    def forward(self, x, t):
        return x + self.lin(x * self.table(x.shape[-1])) * t[:, None, None]


class StaticMemoisedTableBlock(MemoisedTableBlock):
    """The same table memoised on a static method (no ``self`` in the cache key)."""

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def table(width: int) -> torch.Tensor:
        return torch.linspace(0, 1, width)


@pytest.mark.parametrize("block", [MemoisedTableBlock, StaticMemoisedTableBlock])
def test_memoised_methods_hold_no_capture_values_after_capture(block):
    model = block()
    x, t = torch.randn(2, 3, 8), torch.rand(2)
    capture(model, (x, t), {})
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), x + model.lin(x * torch.linspace(0, 1, 8)) * t[:, None, None])
    assert type(model.table(8)) is torch.Tensor


class TableMaker:
    """A plain helper object (no nn.Module) that computes its table on the first call and keeps it, as
    diffusers' Z-Image / Bria Fibo 2 RopeEmbedder keeps its frequencies."""

    def __init__(self):
        self.table = None

    def __call__(self, width):
        if self.table is None:
            self.table = torch.linspace(0, 1, width)
        return self.table


class HelperTableBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.tables = TableMaker()

    def forward(self, x, t):
        return x + self.lin(x * self.tables(x.shape[-1])) * t[:, None, None]


def test_plain_helper_objects_hold_no_capture_values_after_capture():
    model = HelperTableBlock()
    x, t = torch.randn(2, 3, 8), torch.rand(2)
    capture(model, (x, t), {})
    assert model.tables.table is None or type(model.tables.table) is torch.Tensor
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), x + model.lin(x * torch.linspace(0, 1, 8)) * t[:, None, None])
