"""The fused-kernel dispatch on CPU: the plain path is kept, Triton is never loaded, the switch works,
and the checks that decide the kernels' layout and in-place merging.  The kernels themselves run only
on a GPU: ``benchmarks/fused_check.py`` compares them with the plain path there."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtrsurgeon import kernels, runtime

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_tensors_take_the_plain_path_without_importing_the_kernels():
    code = (
        "import sys, torch\n"
        "from dtrsurgeon import runtime\n"
        "x = torch.randn(2, 3, 8, requires_grad=True)\n"
        "table = runtime.dtr_mask_table(8, 0.5, 10)\n"
        "keep = runtime.dtr_channel_mask(table, torch.tensor([0, 9]), x, 2)\n"
        "routed, skip = runtime.dtr_route(x, keep)\n"
        "y = runtime.dtr_merge(routed * 2, skip, keep) + runtime.dtr_masked(x, table, torch.tensor([0, 9]), 2)\n"
        "y.sum().backward()\n"
        "print(sorted(m for m in sys.modules if m in ('dtrsurgeon.kernels', 'triton')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.stdout.strip() == "[]"


def test_plain_path_values_and_gradients_on_cpu():
    x = torch.randn(2, 3, 8, requires_grad=True)
    table = runtime.dtr_mask_table(8, 0.5, 10)
    task = torch.tensor([0, 9])
    keep = runtime.dtr_channel_mask(table, task, x, 2)
    routed, skip = runtime.dtr_route(x, keep)
    y = runtime.dtr_merge(routed * 3.0, skip, keep)
    y.sum().backward()
    m = keep.float()
    assert torch.allclose(y, x * m * 3.0 + x * (1 - m))
    assert torch.allclose(x.grad, 3.0 * m + (1 - m))
    assert runtime.dtr_fused(x) is None


def test_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("DTRSURGEON_FUSED", "0")
    assert not kernels.enabled()
    monkeypatch.delenv("DTRSURGEON_FUSED")
    try:
        import triton  # noqa: F401
        has_triton = True
    except ImportError:
        has_triton = False
    assert kernels.enabled() == has_triton


@pytest.mark.parametrize("shape, axis, expected", [
    ((4, 6, 10), 2, (4, 6, 10, True, 10)),      # tokens: [B, T, C]
    ((4, 10, 3, 5), 1, (4, 10, 15, False, 10)),  # feature maps: [B, C, H, W]
    ((4, 10), 1, (4, 1, 10, True, 10)),          # vectors: [B, C]
])
def test_layout_views_the_stream_as_batch_rows_columns(shape, axis, expected):
    x = torch.zeros(shape)
    keep = runtime.dtr_channel_mask(runtime.dtr_mask_table(10, 0.5, 7), torch.arange(4) % 7, x, axis)
    assert kernels.layout(x, keep) == expected


def test_layout_follows_the_memory_order_of_a_transposed_stream():
    x = torch.zeros(4, 10, 6).transpose(1, 2)  # DiT's stream: [B, T, C] made by a transpose, tokens innermost
    keep = runtime.dtr_channel_mask(runtime.dtr_mask_table(10, 0.5, 7), torch.arange(4), x, 2)
    assert kernels.layout(x, keep) == (4, 10, 6, False, 10)


def test_layout_declines_what_the_kernels_do_not_handle():
    table = runtime.dtr_mask_table(10, 0.5, 7)
    x = torch.zeros(4, 6, 10)
    keep = runtime.dtr_channel_mask(table, torch.arange(4), x, 2)
    assert kernels.layout(x.transpose(0, 1).contiguous().transpose(0, 1), keep) is None  # non-contiguous stream
    assert kernels.layout(x, keep.float()) is None
    assert kernels.layout(torch.zeros(4, 10, 3, 10), torch.ones(4, 1, 3, 10, dtype=torch.bool)) is None  # two axes
    assert kernels.layout(torch.zeros(4, 3, 10, 2), runtime.dtr_channel_mask(table, torch.arange(4), torch.zeros(4, 3, 10, 2), 2)) is None
    assert kernels.layout(x.transpose(0, 2).contiguous().transpose(0, 2), keep) is None  # batch innermost
    assert kernels.layout(torch.zeros(4, 6, 20)[..., ::2], keep) is None  # gaps between channels
    one_task = runtime.dtr_channel_mask(table, torch.tensor(3), x, 2)  # a 0-d task: one row for the batch
    assert kernels.layout(x, one_task) == (4, 6, 10, True, 0)


def _merge_sees(out):  # stands for kernels.merge, called by dtr_merge
    refs = sys.getrefcount(out)
    return kernels.fresh(out, refs)


def _dtr_merge_sees(out):
    return _merge_sees(out)


@pytest.mark.slow
def test_fresh_accepts_only_an_unshared_out_of_place_result():
    """In a fresh interpreter: late in a long test session something process-wide holds extra references
    to new tensors (seen in the full suite only), and fresh() then declines even an unshared result."""
    code = "from tests.test_fused import check_fresh as c; c()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def check_fresh():
    w = torch.randn(8, requires_grad=True)
    x = torch.randn(2, 8)
    out = x + w
    assert _dtr_merge_sees(out)
    held = x + w
    also = held  # noqa: F841  a second Python name
    assert not _dtr_merge_sees(held)
    viewed = x + w
    view = viewed[0]  # noqa: F841
    assert not _dtr_merge_sees(viewed)
    saved = x + w
    product = saved * w  # noqa: F841  mul saves `saved` for w's gradient
    assert not _dtr_merge_sees(saved)
    assert not _dtr_merge_sees(torch.tanh(x + w))  # tanh's backward reads its own result
    in_place = x * 1.0
    in_place.add_(1.0)
    assert not _dtr_merge_sees(in_place)
    assert not _dtr_merge_sees(w)  # a leaf that requires grad
    with torch.no_grad():
        assert _dtr_merge_sees(x + w)


def test_generated_files_carry_the_plain_dispatch():
    text = (ROOT / "tests" / "golden" / "dit_dtr.py").read_text()
    namespace = {}
    start = text.index("def dtr_fused(")
    exec(text[start:text.index("\n\n", start)], namespace)
    assert namespace["dtr_fused"](torch.zeros(1)) is None
    assert not re.search(r"^\s*(from|import)\s+dtrsurgeon", text, re.MULTILINE)  # imports nothing from dtrsurgeon


def test_the_runtime_imports_nothing_from_the_package_and_is_handed_its_kernels():
    text = (ROOT / "dtrsurgeon" / "runtime.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+dtrsurgeon", text, re.MULTILINE)
    loaded = runtime._fused_kernels()
    assert loaded is kernels  # the package wired the loader on import


def test_the_fused_dispatch_asks_the_handed_loader_only_for_cuda_tensors(monkeypatch):
    asked = []
    monkeypatch.setattr(runtime, "_fused_kernels", lambda: asked.append(1) or kernels)
    assert runtime.dtr_fused(torch.zeros(2)) is None
    assert asked == []
    cuda_like = torch.empty(2, device="meta")
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(kernels, "enabled", lambda: True)
    assert runtime.dtr_fused(cuda_like) is kernels
    assert asked == [1]
    runtime.dtr_use_fused_kernels(None)  # monkeypatch puts the package's loader back afterwards
    assert runtime.dtr_fused(cuda_like) is None  # no kernels handed over: the plain path
