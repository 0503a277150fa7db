"""inspect and plot: in-process, with bad input."""

import json

import pytest

from dtrsurgeon.cli import main


@pytest.mark.slow
def test_inspect_table_shows_units_widths_and_placement(capsys):
    assert main(["inspect", "model_zoo/adm_unet.py", "--entry", "adm_unet", "--kwargs", '{"name": "tiny"}',
                 "--spec", "adm"]) == 0
    out = capsys.readouterr().out
    assert "input_blocks.1.0" in out and "input of out_layers.3" in out and "input of proj_out" in out
    assert "widths: C=32 x4, C=64 x10" in out


def test_inspect_json_is_the_plan(capsys):
    assert main(["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["version"] == 2 and [u["path"] for u in plan["units"]] == ["blocks.0", "blocks.1"]


def test_inspect_edits_lists_each_functions_edits_as_table_and_json(capsys):
    assert main(["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--edits"]) == 0
    table = capsys.readouterr().out
    assert "edits (source form): 6 in 3 functions" in table
    assert [line.split()[:3] for line in table.splitlines() if "DiT" in line] == [
        ["dit.py:146", "DiTBlock.forward", "take_task"], ["dit.py:171", "DiT.__init__", "attach_masks"],
        ["dit.py:236", "DiT.forward", "compute_task"]]
    assert "pass_task     243:16 block(x, c)" in table
    assert main(["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--edits", "--form", "module", "--json"]) == 0
    edits = json.loads(capsys.readouterr().out)
    assert edits["form"] == "module" and edits["wrapped"] == ["blocks.0", "blocks.1"]
    (forward,) = edits["functions"]
    assert [e["kind"] for e in forward["edits"]] == ["compute_task", "pass_task"]


def test_inspect_shows_units_left_out_by_targets(capsys):
    assert main(["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--spec", _spec_file()]) == 0
    assert "not matched by targets: blocks.1 (C=64)" in capsys.readouterr().out


def _spec_file(doc=None):
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(doc or {"version": 1, "targets": {"include": ["blocks.0"]}}, f)
    f.close()
    return f.name


@pytest.mark.parametrize("argv,needle", [
    (["inspect", "nope.py", "--entry", "X"], "nope.py: no such file"),
    (["inspect", "README.md", "--entry", "X"], "README.md: not a Python source file"),
    (["inspect", "model_zoo/dit.py", "--entry", "dit", "--kwargs", '{"name": "Q/3"}'], "unknown DiT config 'Q/3'"),
    (["inspect", "model_zoo/dit.py", "--entry", "Nope"], "no 'Nope' in this file"),
    (["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--kwargs", '{"depth": "two"}'], "failed"),
    (["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--kwargs", "[1]"], "expected a JSON object"),
    (["plot", "dit-paper", "--channels", "0"], "expected positive widths"),
    (["plot", "dit-paper"], "give either --channels"),
    (["plot", "dit-paper", "--model", "model_zoo/dit.py"], "--model needs --entry"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_plot_writes_one_png(tmp_path, capsys):
    out = tmp_path / "masks.png"
    assert main(["plot", "dit-paper", "--channels", "64", "96", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.png"]


@pytest.mark.slow
def test_plot_takes_widths_from_a_model(tmp_path):
    out = tmp_path / "adm.png"
    assert main(["plot", "adm", "--model", "model_zoo/adm_unet.py", "--entry", "adm_unet",
                 "--kwargs", '{"name": "tiny"}', "-o", str(out)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[1] > 600  # two panels side by side (C=32 and C=64)


@pytest.mark.parametrize("spec,argv_tail,needle", [
    ({"version": 1, "targets": {"include": ["block.*"]}}, ["model_zoo/dit.py", "--entry", "tiny_dit"],
     "spec /targets/include/0: pattern 'block.*' matches no routable unit"),
    ({"version": 1, "timestep": {"arg": "timesteps"}}, ["model_zoo/dit.py", "--entry", "tiny_dit"],
     "spec /timestep/arg: 'timesteps' is not an argument of DiT.forward(x, t, y)"),
    ({"version": 1}, ["tests/toy_models.py", "--entry", "BrokenExample"],
     "cannot capture BrokenExample.forward"),
])
@pytest.mark.parametrize("verb", ["inspect", "apply"])
def test_model_level_errors_exit_2(spec, argv_tail, needle, verb, tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    if verb == "inspect":
        argv = ["inspect", *argv_tail, "--spec", str(path)]
    else:
        argv = ["apply", str(path), *argv_tail, "-o", str(tmp_path / "out.py")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "out.py").exists()


def test_model_files_inside_a_package_keep_their_relative_imports(tmp_path, capsys):
    pkg = tmp_path / "my_diffusion"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("import torch.nn as nn\n\n\ndef linear(a, b):\n    return nn.Linear(a, b)\n")
    (pkg / "net.py").write_text(
        "import torch\nimport torch.nn as nn\n\nfrom .layers import linear\n\n\n"
        "class Block(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = linear(8, 8)\n\n"
        "    def forward(self, x):\n        return x + self.fc(x)\n\n\n"
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.blocks = nn.ModuleList([Block(), Block()])\n\n"
        "    def forward(self, x, t):\n        for block in self.blocks:\n            x = block(x)\n"
        "        return x * t.float()[:, None, None]\n\n"
        "    def example_inputs(self, batch_size=2):\n"
        "        return (torch.randn(batch_size, 4, 8), torch.arange(batch_size)), {}\n")
    assert main(["inspect", str(pkg / "net.py"), "--entry", "Net"]) == 0
    assert "blocks.1" in capsys.readouterr().out
    assert main(["apply", "dit-paper", str(pkg / "net.py"), "--entry", "Net"]) == 0
    assert "from .layers import linear" in (pkg / "net_dtr.py").read_text()
