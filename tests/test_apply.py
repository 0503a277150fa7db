"""dtrsurgeon apply / check: the generated source file."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.utils.checkpoint import checkpoint

import dtrsurgeon
from dtrsurgeon.cli import main
from dtrsurgeon.spec.document import preset_path
from tests.conftest import import_path, randomize_

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
BLESS = os.environ.get("DTRSURGEON_BLESS") == "1"

# model file, spec, entry, kwargs: one golden file each
GOLDEN_CASES = {
    "dit_dtr.py": ("model_zoo/dit.py", "dit-paper", "DiT_S_2", None),
    "adm_unet_dtr.py": ("model_zoo/adm_unet.py", "adm", "adm_unet", '{"name": "tiny"}'),
    "uvit_dtr.py": ("model_zoo/uvit.py", "uvit", "uvit", '{"name": "tiny"}'),
}


@pytest.fixture(scope="module")
def generated_dit(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "dit_dtr.py"
    assert main(["apply", "dit-paper", "model_zoo/dit.py", "--entry", "DiT_S_2", "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_golden_files(golden, tmp_path, monkeypatch):
    """Emitted code changes only deliberately: re-bless with DTRSURGEON_BLESS=1 and review the diff."""
    monkeypatch.chdir(REPO)
    model_py, spec, entry, kwargs = GOLDEN_CASES[golden]
    out = tmp_path / golden
    argv = ["apply", spec, model_py, "--entry", entry, "-o", str(out)] + (["--kwargs", kwargs] if kwargs else [])
    assert main(argv) == 0
    text = out.read_text()
    compile(text, golden, "exec")
    if BLESS:
        (GOLDEN / golden).write_text(text)
    assert text == (GOLDEN / golden).read_text(), f"emitted code changed; if deliberate: DTRSURGEON_BLESS=1 pytest {__file__}"


@pytest.mark.slow
def test_untouched_text_is_byte_identical(generated_dit):
    original = (REPO / "model_zoo/dit.py").read_text().splitlines()
    generated = generated_dit.read_text().splitlines()
    import difflib

    removed = [ln for ln in difflib.ndiff(original, generated) if ln.startswith("- ")]
    assert removed == ["-     def forward(self, x, c):", "-         return x", "-             x = block(x, c)"]


def test_generated_file_is_self_contained(generated_dit):
    text = generated_dit.read_text()
    assert "dtrsurgeon" not in "".join(ln for ln in text.splitlines() if ln.startswith(("import", "from")))
    assert "DTR_UNITS" in text and len(text) < 40_000  # tables are computed, not written out


@pytest.fixture(scope="module")
def pair(generated_dit):
    gen_module = import_path(generated_dit, "dit_dtr_generated")
    from model_zoo.dit import dit

    torch.manual_seed(0)
    ref = randomize_(dit("S/2", input_size=8, num_classes=10)).eval()
    gen = gen_module.dit("S/2", input_size=8, num_classes=10).eval()
    gen.load_state_dict(ref.state_dict(), strict=True)
    return ref, gen


@pytest.mark.slow
def test_same_outputs_and_gradients_as_transform(pair):
    ref, gen = pair
    routed = dtrsurgeon.transform(ref, "dit-paper")
    (x, _, y), _ = ref.example_inputs(4)
    t = torch.tensor([0, 999, 123, 800])
    a, b = routed(x, t, y), gen(x, t, y)
    assert torch.allclose(a, b, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(routed.named_parameters(), gen.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    gen.zero_grad()


def test_state_dict_loads_both_ways(pair):
    ref, gen = pair
    assert list(gen.state_dict()) == list(ref.state_dict())
    copy.deepcopy(ref).load_state_dict(gen.state_dict(), strict=True)
    copy.deepcopy(gen).load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.slow
def test_generated_model_compiles_fullgraph_without_recompiles(pair):
    _, gen = pair
    counter = CompileCounter()
    compiled = torch.compile(gen, backend=counter, fullgraph=True)
    (x, _, y), _ = gen.example_inputs(2)
    for t in ([1, 900], [500, 3]):
        t = torch.tensor(t)
        assert torch.allclose(compiled(x, t, y), gen(x, t, y), atol=1e-6)
    assert counter.frame_count == 1


def test_generated_model_under_activation_checkpointing(pair):
    _, gen = pair
    (x, t, y), _ = gen.example_inputs(2)
    x.requires_grad_(True)
    out = checkpoint(gen, x, t, y, use_reentrant=False)
    assert torch.allclose(out, gen(x, t, y))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_model_and_ema_side_by_side(pair):
    _, gen = pair
    ema = copy.deepcopy(gen)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)
    (x, t, y), _ = gen.example_inputs(2)
    a, b = gen(x, t, y), ema(x, t, y)
    assert not torch.allclose(a, b) and torch.allclose(gen(x, t, y), a)


def test_emitted_mask_tables_equal_the_library(generated_dit):
    module = import_path(generated_dit, "dit_dtr_tables")
    for spec in ({"version": 1}, {"version": 1, "routing": {"task_weights": {"curve": "cosine"}, "channel_ratio": 0.6}},
                 {"version": 1, "routing": {"window_shift": "random", "seed": 5}},
                 {"version": 1, "routing": {"window_shift": "fixed"}},
                 {"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0, 0], [0.3, 0.5], [1, 1]]}}}):
        s = dtrsurgeon.load_spec(spec)
        p = s.routing
        tw = p.task_weights
        kwargs = dict(channel_ratio=p.channel_ratio, num_tasks=p.num_tasks, window_shift=p.window_shift,
                      curve=tw.curve, alpha=tw.alpha, points=tw.points, seed=p.seed)
        assert torch.equal(module.dtr_mask_table(96, **kwargs), dtrsurgeon.mask_table(s, 96)), spec


# -- check ------------------------------------------------------------------------------

@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "model_zoo/dit.py", tmp_path / "dit.py")
    shutil.copy(preset_path("dit-paper"), tmp_path / "spec.json")
    assert main(["apply", str(tmp_path / "spec.json"), str(tmp_path / "dit.py"), "--entry", "tiny_dit"]) == 0
    return tmp_path


@pytest.mark.slow
def test_check_fresh_then_stale_after_spec_edit(workdir, capsys):
    args = ["check", str(workdir / "spec.json"), str(workdir / "dit.py"), str(workdir / "dit_dtr.py")]
    assert main(args) == 0
    spec = json.loads((workdir / "spec.json").read_text())
    spec["routing"]["channel_ratio"] = 0.7
    (workdir / "spec.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "+DTR_ROUTING = dict(channel_ratio=0.7" in out and "stale" in out


@pytest.mark.slow
def test_check_stale_after_input_edit(workdir, capsys):
    args = ["check", str(workdir / "spec.json"), str(workdir / "dit.py"), str(workdir / "dit_dtr.py")]
    with open(workdir / "dit.py", "a") as f:
        f.write("\n# a new comment\n")
    assert main(args) == 1
    assert "+# a new comment" in capsys.readouterr().out


def test_check_bad_input_exits_2(workdir, capsys):
    assert main(["check", str(workdir / "spec.json"), str(workdir / "dit.py"), str(workdir / "dit.py")]) == 2
    assert "not a file generated by dtrsurgeon" in capsys.readouterr().err
    assert main(["check", str(workdir / "spec.json"), str(workdir / "dit.py"), str(workdir / "nope.py")]) == 2


# -- apply: files and errors ----------------------------------------------------------------

@pytest.mark.slow
def test_default_output_and_no_clobber(workdir, capsys):
    out = workdir / "dit_dtr.py"
    assert out.exists()
    before = out.read_text()
    argv = ["apply", str(workdir / "spec.json"), str(workdir / "dit.py"), "--entry", "tiny_dit"]
    assert main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == before
    assert main(argv + ["--force"]) == 0


def test_diff_writes_nothing(tmp_path, capsys):
    shutil.copy(REPO / "model_zoo/dit.py", tmp_path / "dit.py")
    assert main(["apply", "dit-paper", str(tmp_path / "dit.py"), "--entry", "tiny_dit", "--diff"]) == 0
    out = capsys.readouterr().out
    assert "+            x = block(x, c, dtr_task=dtr_task)" in out and out.startswith("---")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dit.py"]


@pytest.mark.slow
def test_input_is_modified_only_in_place(tmp_path):
    shutil.copy(REPO / "model_zoo/dit.py", tmp_path / "dit.py")
    before = (tmp_path / "dit.py").read_text()
    assert main(["apply", "dit-paper", str(tmp_path / "dit.py"), "--entry", "tiny_dit"]) == 0
    assert (tmp_path / "dit.py").read_text() == before
    assert main(["apply", "dit-paper", str(tmp_path / "dit.py"), "--entry", "tiny_dit", "--in-place"]) == 0
    assert (tmp_path / "dit.py").read_text().startswith("# Generated by dtrsurgeon")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch, capsys):
    shutil.copy(REPO / "model_zoo/dit.py", tmp_path / "dit.py")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    assert main(["apply", "dit-paper", str(tmp_path / "dit.py"), "--entry", "tiny_dit"]) == 2
    err = capsys.readouterr().err
    assert "cannot write it: No space left on device" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dit.py"]


def test_applying_to_a_generated_file_is_refused(generated_dit, capsys):
    assert main(["apply", "dit-paper", str(generated_dit), "--entry", "DiT_S_2", "--diff"]) == 2
    err = capsys.readouterr().err
    assert "generated by dtrsurgeon" in err and err.count("\n") == 1


def test_syntax_error_is_reported_with_its_line(tmp_path, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\nclass Net(torch.nn.Module:\n    pass\n")
    assert main(["apply", "dit-paper", str(bad), "--entry", "Net"]) == 2
    assert "broken.py:3: syntax error" in capsys.readouterr().err


def test_unknown_entry_lists_the_classes(capsys):
    assert main(["apply", "dit-paper", "model_zoo/dit.py", "--entry", "DiT_XXL", "--diff"]) == 2
    err = capsys.readouterr().err
    assert "no 'DiT_XXL'" in err and "DiTBlock" in err


def test_bad_kwargs_json(capsys):
    assert main(["apply", "dit-paper", "model_zoo/dit.py", "--entry", "tiny_dit", "--kwargs", "{depth: 2}",
                 "--diff"]) == 2
    assert "--kwargs: malformed JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_units_defined_in_another_file_give_one_file_of_subclasses(tmp_path, capsys, monkeypatch):
    """The root in wrapper.py, the units in model_zoo/dit.py: apply writes one file that subclasses
    both (tests/test_apply_library.py covers these files in depth) and routes the model's instances."""
    (tmp_path / "wrapper.py").write_text(
        "import torch\nfrom model_zoo.dit import tiny_dit\n\n\nclass Wrapped(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.inner = tiny_dit()\n\n"
        "    def forward(self, x, t, y):\n        return self.inner(x, t, y)\n\n"
        "    def example_inputs(self, batch_size=2):\n        return self.inner.example_inputs(batch_size)\n")
    (tmp_path / "spec.json").write_text('{"version": 1, "targets": {"include": ["inner.blocks.*"]}}')
    out = tmp_path / "wrapper_dtr.py"
    assert main(["apply", str(tmp_path / "spec.json"), str(tmp_path / "wrapper.py"), "--entry", "Wrapped"]) == 0
    text = out.read_text()
    assert "class Wrapped(wrapper.Wrapped):" in text and "class DiTBlock(model_zoo.dit.DiTBlock):" in text
    monkeypatch.syspath_prepend(str(tmp_path))  # the generated file imports wrapper.py beside it
    route = import_path(out, "wrapper_dtr").route
    wrapper = sys.modules["wrapper"]
    torch.manual_seed(0)
    reference = wrapper.Wrapped().eval()
    randomize_(reference)
    routed = dtrsurgeon.transform(reference, str(tmp_path / "spec.json"))
    generated = route(copy.deepcopy(reference))
    (x, t, y), _ = reference.example_inputs(4)
    with torch.no_grad():
        torch.testing.assert_close(generated(x, t, y), routed(x, t, y), atol=1e-6, rtol=0)
    assert main(["apply", str(tmp_path / "spec.json"), str(tmp_path / "wrapper.py"), "--entry", "Wrapped", "--in-place"]) == 2
    assert "wrapper.py spans several files" in capsys.readouterr().err


@pytest.mark.slow
def test_apply_through_a_subprocess(tmp_path):
    shutil.copy(REPO / "model_zoo/dit.py", tmp_path / "dit.py")
    proc = subprocess.run([sys.executable, "-m", "dtrsurgeon", "apply", "dit-paper",
                           str(tmp_path / "dit.py"), "--entry", "tiny_dit"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dit_dtr.py").exists()


def test_output_folder_must_exist(tmp_path, capsys):
    out = tmp_path / "missing" / "dit_dtr.py"
    assert main(["apply", "dit-paper", "model_zoo/dit.py", "--entry", "tiny_dit", "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.parent.exists()


@pytest.mark.slow
def test_checkpointing_branch_not_taken_at_capture_is_routed(tmp_path):
    """The checkpoint call in the branch capture never runs gets the block with its task bound; the
    generated file defines the helper, and it trains like transform() with checkpointing on."""
    from tests.conftest import randomize_
    from tests.toy_models import CheckpointingNet

    out = tmp_path / "ckpt_dtr.py"
    assert main(["apply", "dit-paper", "tests/toy_models.py", "--entry", "CheckpointingNet", "-o", str(out)]) == 0
    text = out.read_text()
    assert "h = checkpoint(dtr_bind_task(block, dtr_task), h, c, use_reentrant=False)" in text
    assert "def dtr_bind_task(module, task):" in text
    torch.manual_seed(0)
    model = randomize_(CheckpointingNet())
    generated = import_path(out, "ckpt_dtr_generated").CheckpointingNet()
    generated.load_state_dict(model.state_dict(), strict=True)
    routed = dtrsurgeon.transform(model, "dit-paper")
    (x, _), _ = model.example_inputs(3)
    t = torch.tensor([0, 500, 999])
    grads = []
    for net in (routed, generated):
        net.gradient_checkpointing = True
        net.zero_grad()
        y = net(x, t)
        y.square().sum().backward()
        grads.append((y.detach(), [p.grad for p in net.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][1], grads[1][1]))
    routed.gradient_checkpointing = False
    routed.zero_grad()
    routed(x, t).square().sum().backward()
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(routed.parameters(), grads[0][1]))


def test_other_calls_of_a_loop_name_stay_as_they_are(tmp_path):
    """Only the call that reached a unit gets dtr_task: `block(h)` on another branch runs a LayerNorm."""
    from tests.conftest import randomize_
    from tests.toy_models import NamedLoopNet

    torch.manual_seed(0)
    model = randomize_(NamedLoopNet()).eval()
    routed = dtrsurgeon.transform(model, {"version": 1})
    (x, _), _ = model.example_inputs(2)
    assert [u.path for u in routed.dtr_plan.units] == ["stages.block0", "stages.block1"]
    assert not torch.allclose(routed(x, torch.tensor([0, 0])), routed(x, torch.tensor([999, 999])))
    out = tmp_path / "loop_dtr.py"
    spec = tmp_path / "spec.json"
    spec.write_text('{"version": 1}')
    assert main(["apply", str(spec), "tests/toy_models.py", "--entry", "NamedLoopNet", "-o", str(out)]) == 0
    text = out.read_text()
    assert "                h = block(h)\n" in text and "h = block(h, c, dtr_task=dtr_task)" in text
