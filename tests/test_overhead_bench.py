"""benchmarks/overhead.py on CPU: the model families it builds, the authors-style baseline against
transform(), and a tiny end-to-end run of each new family (the timings themselves mean nothing on CPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import dtrsurgeon

ROOT = Path(__file__).resolve().parent.parent


def _load_overhead():
    spec = importlib.util.spec_from_file_location("_overhead_bench", ROOT / "benchmarks" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


overhead = _load_overhead()


def test_models_are_parsed_by_family():
    assert overhead.parse_item("B/2:64")[1:] == ("B/2", 64)
    assert overhead.parse_item("B/2:64")[0].label == "DiT"
    assert overhead.parse_item("DiT-XL/2:32")[1:] == ("XL/2", 32)
    family, config, batch = overhead.parse_item("ADM-64:32")
    assert (family.label, family.spec, config, batch) == ("ADM", "adm", "64", 32)
    family, config, batch = overhead.parse_item("MMDiT-M:16")
    assert (family.label, config, batch, family.spec["routing"]["streams"]) == ("MMDiT", "M", 16, "sample")
    with pytest.raises(SystemExit, match="'ADM-64' is not"):
        overhead.parse_item("ADM-64")


@pytest.mark.slow
@pytest.mark.parametrize("label", ["ADM", "MMDiT"])
def test_authors_style_routes_as_transform_does(label):
    """Same masks, same places: the authors-style baseline's output equals transform()'s (float32),
    and differs from the vanilla model's (it routes at all)."""
    family = overhead.FAMILIES[label]
    args = overhead.parse_args(["--device", "cpu"])
    torch.manual_seed(0)
    vanilla = overhead.build_vanilla(family, "tiny", args)
    with torch.no_grad():  # ADM's zero-initialised projections would hide the masks
        for p in vanilla.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    routed = dtrsurgeon.transform(vanilla, family.spec)
    authors = overhead.authors_variant(vanilla, routed.dtr_plan)
    inputs, target = overhead.make_inputs(family, vanilla, 3, args)
    assert target.shape == vanilla(*inputs).shape
    torch.testing.assert_close(authors(*inputs), routed(*inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(authors(*inputs), vanilla(*inputs), atol=1e-4)
    units = len(routed.dtr_plan.units)
    wrapped = [m for m in authors.modules() if isinstance(m, (overhead.AuthorsBlock, overhead.AuthorsMaskInput))]
    assert len(wrapped) == units == (4 if label == "MMDiT" else 14)  # a block per unit; ADM: one site per unit


@pytest.mark.slow
def test_generated_mmdit_equals_transform(tmp_path):
    """The `generated` variant of the MMDiT (apply on model_zoo/mmdit.py with MMDIT_SPEC, the vanilla
    weights loaded) routes as transform() does: joint blocks' tuple returns and single blocks' split stream."""
    family = overhead.FAMILIES["MMDiT"]
    args = overhead.parse_args(["--device", "cpu", "--work", str(tmp_path)])
    vanilla = overhead.build_vanilla(family, "tiny", args)
    path = overhead.generated_file(args, family, "tiny")
    generated = getattr(overhead._import_generated(path, family, "tiny"), family.entry)(name="tiny")
    generated.load_state_dict(vanilla.state_dict(), strict=True)
    inputs, _ = overhead.make_inputs(family, vanilla, 3, args)
    routed = dtrsurgeon.transform(vanilla, family.spec)
    torch.testing.assert_close(generated(*inputs), routed(*inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(generated(*inputs), vanilla(*inputs), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("item", ["ADM-tiny:2", "MMDiT-tiny:2"])
def test_tiny_cpu_run_reports_every_variant(item, tmp_path):
    out = tmp_path / "rows.json"
    argv = ["--models", item, "--device", "cpu", "--modes", "eager", "--processes", "1", "--rounds", "1",
            "--iters", "1", "--windows", "1", "--window-steps", "1", "--warmup", "1",
            "--work", str(tmp_path / "work"), "--out", str(out)]
    assert overhead.main(argv) == 0
    rows = json.loads(out.read_text())
    label = item.split(":")[0]
    assert {(r["model"], r["kind"], r["variant"]) for r in rows} == {
        (label, kind, variant) for kind in ("train", "forward") for variant in overhead.VARIANTS}
    assert all(r["kernel_ratio"] == 1.0 for r in rows if r["variant"] == "vanilla")
    assert all(r["kernel_ms"] > 0 and r["batch"] == 2 and not r["compile"] for r in rows)
    assert next(iter(tmp_path.joinpath("work").glob("*_dtr.py"))).read_text().count("dtr_") > 0
