"""Bad model files and bad output targets: one line on stderr, exit 2, nothing written, inputs unchanged.

Each case runs ``dtrsurgeon.cli.main(argv)`` in-process; a few run through a subprocess too, where a
traceback would really reach the user's terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dtrsurgeon.cli import main

REPO = Path(__file__).resolve().parents[1]
SPEC = str(REPO / "dtrsurgeon" / "spec" / "presets" / "dit-paper.json")

NET = '''import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x, t):
        for block in self.blocks:
            x = block(x)
        return x * t.float()[:, None, None]

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 4, 8), torch.arange(batch_size)), {}
'''


def _factory(body: str) -> str:
    return NET + f"\n\ndef build():\n    {body}\n    return Net()\n"


# file content (str or bytes), --entry, what the one line must say
MODEL_FILE_CASES = {
    "assert": (_factory("assert 1 == 2, 'widths must agree'"), "build",
               "model.py:29: build(**{}) failed: AssertionError: widths must agree"),
    "bare-assert": (_factory("assert False"), "build", "model.py:29: build(**{}) failed: AssertionError"),
    "RuntimeError": (_factory("raise RuntimeError('no\\ncuda')"), "build",
                     "model.py:29: build(**{}) failed: RuntimeError: no cuda"),
    "KeyError": (_factory("{}['depth']"), "build", "model.py:29: build(**{}) failed: KeyError: 'depth'"),
    "NotImplementedError": (_factory("raise NotImplementedError"), "build",
                            "model.py:29: build(**{}) failed: NotImplementedError"),
    "sys.exit-in-factory": (_factory("raise SystemExit(4)"), "build",
                            "model.py:29: build(**{}) failed: it called sys.exit(4)"),
    "sys.exit-at-import": ("import sys\nsys.exit('no GPU here')\n" + NET, "Net",
                           "model.py:2: importing it failed: it called sys.exit('no GPU here')"),
    "ImportError-at-import": ("import not_a_module_anywhere\n" + NET, "Net",
                              "model.py:1: importing it failed: ModuleNotFoundError: No module named"),
    "SyntaxError": (NET.replace("class Net(nn.Module):", "class Net(nn.Module:"), "Net",
                    "model.py:14: syntax error"),
    "latin-1": (NET.encode() + b"\n# caf\xe9\n", "Net",
                f"model.py: line 27, byte offset {len(NET) + 6}: not valid utf-8 (invalid continuation byte)"),
    "NUL": (NET.encode().replace(b"import torch.nn", b"import\0torch.nn"), "Net",
            "model.py: line 2, byte offset 19: a NUL byte"),
    "entry-not-callable": (NET + "\nbuild = 3\n", "build", "model.py: build is a int, not a class or function"),
}


def _write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize("case", sorted(MODEL_FILE_CASES))
@pytest.mark.parametrize("verb", ["apply", "inspect"])
def test_model_file_errors_are_one_line(case, verb, tmp_path, capsys):
    content, entry, needle = MODEL_FILE_CASES[case]
    _write(tmp_path / "model.py", content)
    before = _snapshot(tmp_path)
    if verb == "apply":
        argv = ["apply", SPEC, str(tmp_path / "model.py"), "--entry", entry, "-o", str(tmp_path / "out.py")]
    else:
        argv = ["inspect", str(tmp_path / "model.py"), "--entry", entry]
    err = _one_line_exit_2(argv, capsys)
    assert needle in err, err
    assert entry in err or "import" in err or "byte offset" in err or "syntax" in err
    assert _snapshot(tmp_path) == before


def test_traceback_flag_and_variable_add_the_traceback(tmp_path, capsys, monkeypatch):
    content, entry, needle = MODEL_FILE_CASES["KeyError"]
    (tmp_path / "model.py").write_text(content)
    argv = ["inspect", str(tmp_path / "model.py"), "--entry", entry]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    for extra, env in ((["--traceback"], None), ([], "1")):
        if env:
            monkeypatch.setenv("DTRSURGEON_TRACEBACK", env)
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "{}['depth']" in err  # the user's line, from the chained exception
        assert err.rstrip("\n").splitlines()[-1].startswith("dtrsurgeon inspect: error: ") and needle in err


@pytest.mark.parametrize("stem", ["json", "copy", "torch"])
def test_model_files_named_like_modules_do_not_replace_them(stem, tmp_path, capsys):
    import copy as real_copy
    import json as real_json

    import torch as real_torch

    (tmp_path / f"{stem}.py").write_text(NET)
    assert main(["apply", SPEC, str(tmp_path / f"{stem}.py"), "--entry", "Net"]) == 0
    assert sys.modules["json"] is real_json and sys.modules["copy"] is real_copy and sys.modules["torch"] is real_torch
    assert (tmp_path / f"{stem}_dtr.py").read_text().startswith("# Generated by dtrsurgeon")
    assert not any(m.__name__ == stem and getattr(m, "__file__", "").startswith(str(tmp_path))
                   for m in list(sys.modules.values()) if m is not None)


# -- output targets -----------------------------------------------------------------------------

@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "model.py").write_text(NET)
    shutil.copy(SPEC, tmp_path / "spec.json")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    (tmp_path / "folder.py").mkdir()
    yield tmp_path
    (tmp_path / "ro").chmod(0o755)


def _apply(workdir, *extra):
    return ["apply", str(workdir / "spec.json"), str(workdir / "model.py"), "--entry", "Net", *extra]


# argv tail (after `apply spec.json model.py --entry Net`), set-up, what the one line must say
OUTPUT_CASES = {
    "input-as-output": (["-o", "{d}/model.py", "--force"], None, "is the input model file; it changes only with --in-place"),
    "link-to-input": (["-o", "{d}/link.py", "--force"], "link", "is the input model file"),
    "spec-as-output": (["-o", "{d}/spec.json", "--force"], None, "unknown source format '.json'"),
    "read-only-folder": (["-o", "{d}/ro/out.py"], None, "the folder {d}/ro is read-only"),
    "folder-as-target": (["-o", "{d}/folder.py", "--force"], None, "that is a folder"),
    "missing-folder": (["-o", "{d}/nope/out.py"], None, "the folder {d}/nope does not exist"),
    "not-python": (["-o", "{d}/out.txt"], None, "unknown source format '.txt'"),
    "existing": (["-o", "{d}/out.py"], "existing", "exists; pass --force"),
    "read-only-target": (["-o", "{d}/out.py", "--force"], "read-only-out", None),  # --force replaces it
    "read-only-target-no-force": (["-o", "{d}/out.py"], "read-only-out", "exists; pass --force"),
    "in-place-read-only": (["--in-place"], "read-only-in", "is read-only; pass --force to replace it anyway"),
    "in-place-and-o": (["--in-place", "-o", "{d}/out.py"], None, "exclude each other"),
}


def _set_up(workdir: Path, how: str | None) -> None:
    if how == "link":
        (workdir / "link.py").symlink_to(workdir / "model.py")
    elif how in ("existing", "read-only-out"):
        (workdir / "out.py").write_text("# mine\n")
        (workdir / "out.py").chmod(0o444 if how == "read-only-out" else 0o644)
    elif how == "read-only-in":
        (workdir / "model.py").chmod(0o444)


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_output_targets(case, workdir, capsys):
    tail, how, needle = OUTPUT_CASES[case]
    _set_up(workdir, how)
    before = _snapshot(workdir)
    argv = _apply(workdir, *[a.replace("{d}", str(workdir)) for a in tail])
    if needle is None:
        assert main(argv) == 0
        assert (workdir / "out.py").read_text().startswith("# Generated by dtrsurgeon")
        assert stat.S_IMODE((workdir / "out.py").stat().st_mode) == 0o444  # a replaced file keeps its mode
        return
    err = _one_line_exit_2(argv, capsys)
    assert needle.replace("{d}", str(workdir)) in err, err
    assert _snapshot(workdir) == before
    assert sorted(p.name for p in (workdir / "ro").iterdir()) == []


def test_new_files_are_0644_and_in_place_keeps_the_mode(workdir):
    old = os.umask(0o022)
    try:
        assert main(_apply(workdir)) == 0
        assert stat.S_IMODE((workdir / "model_dtr.py").stat().st_mode) == 0o644
        (workdir / "model.py").chmod(0o640)
        assert main(_apply(workdir, "--in-place")) == 0
    finally:
        os.umask(old)
    assert (workdir / "model.py").read_text().startswith("# Generated by dtrsurgeon")
    assert stat.S_IMODE((workdir / "model.py").stat().st_mode) == 0o640


def test_full_disk_is_one_line_and_leaves_nothing(workdir, capsys, monkeypatch):
    from pathlib import Path as P

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "write_text", full)
    before = _snapshot(workdir)
    err = _one_line_exit_2(_apply(workdir, "-o", str(workdir / "out.py")), capsys)
    assert f"-o {workdir}/out.py: cannot write it: No space left on device" in err
    assert _snapshot(workdir) == before and not [p for p in os.listdir(workdir) if p.startswith(".")]


def test_interrupt_prints_one_line_exits_130_and_writes_nothing(workdir, capsys, monkeypatch):
    from dtrsurgeon.cli import apply

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(apply, "generate", interrupted)
    before = _snapshot(workdir)
    assert main(_apply(workdir, "-o", str(workdir / "out.py"))) == 130
    err = capsys.readouterr().err
    assert err == "dtrsurgeon apply: interrupted (SIGINT)\n"
    assert _snapshot(workdir) == before


# -- plot and cluster --plot ---------------------------------------------------------------------

@pytest.mark.parametrize("name,needle", [
    ("m.xyz", "unknown image format '.xyz'"),
    ("m", "no suffix to name the image format"),
    ("ro/m.png", "the folder {d}/ro is read-only"),
    ("folder.py", "that is a folder"),
    ("spec.json", "unknown image format '.json'"),
])
@pytest.mark.parametrize("verb", ["plot", "cluster"])
def test_plot_targets_are_checked_before_any_output(verb, name, needle, workdir, capsys):
    before = _snapshot(workdir)
    target = str(workdir / name)
    if verb == "plot":
        argv = ["plot", str(workdir / "spec.json"), "--channels", "16", "-o", target]
    else:
        argv = ["cluster", "--schedule", "cosine", "--k", "3", "--plot", target]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # cluster: no table printed before the refusal
    assert captured.err.count("\n") == 1 and needle.replace("{d}", str(workdir)) in captured.err, captured.err
    assert _snapshot(workdir) == before and sorted(os.listdir(workdir / "ro")) == []


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_plot_writes_the_format_its_suffix_names(suffix, magic, tmp_path):
    out = tmp_path / f"masks{suffix}"
    assert main(["plot", SPEC, "--channels", "16", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)
    assert sorted(os.listdir(tmp_path)) == [out.name]
    assert main(["cluster", "--k", "3", "--plot", str(tmp_path / f"c{suffix}"), "--json"]) == 0
    assert (tmp_path / f"c{suffix}").read_bytes().startswith(magic)


# -- through a subprocess: what reaches the terminal ----------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", ["sys.exit-at-import", "read-only-folder", pytest.param("KeyError", marks=pytest.mark.slow),
                                  pytest.param("NUL", marks=pytest.mark.slow)])
def test_errors_through_a_subprocess(case, workdir):
    if case in MODEL_FILE_CASES:
        content, entry, needle = MODEL_FILE_CASES[case]
        _write(workdir / "model.py", content)
        argv = ["apply", str(workdir / "spec.json"), str(workdir / "model.py"), "--entry", entry]
    else:
        tail, _, needle = OUTPUT_CASES[case]
        argv = _apply(workdir, *[a.replace("{d}", str(workdir)) for a in tail])
        needle = needle.replace("{d}", str(workdir))
    before = _snapshot(workdir)
    proc = subprocess.run([sys.executable, "-m", "dtrsurgeon", *argv], check=False, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and proc.stdout == "", proc.stderr
    assert _snapshot(workdir) == before


def test_check_names_the_example_inputs_the_header_records(workdir, capsys):
    import torch

    torch.save(((torch.randn(2, 4, 8), torch.arange(2)), {}), workdir / "batch.pt")
    gen = workdir / "gen.py"
    assert main(_apply(workdir, "--example-inputs", str(workdir / "batch.pt"), "-o", str(gen))) == 0
    line = [ln for ln in gen.read_text().splitlines() if ln.startswith("# dtrsurgeon: inputs ")]
    digest = __import__("hashlib").sha256((workdir / "batch.pt").read_bytes()).hexdigest()
    assert line == [f"# dtrsurgeon: inputs batch.pt sha256={digest}"]
    check = ["check", str(workdir / "spec.json"), str(workdir / "model.py"), str(gen)]
    err = _one_line_exit_2(check, capsys)
    assert "made with --example-inputs batch.pt" in err and "pass --example-inputs batch.pt" in err
    assert main(check + ["--example-inputs", str(workdir / "batch.pt")]) == 0
    torch.save(((torch.randn(2, 4, 8), torch.arange(2)), {}), workdir / "other.pt")
    capsys.readouterr()
    assert main(check + ["--example-inputs", str(workdir / "other.pt")]) == 1  # another file: stale
    out = capsys.readouterr().out
    assert "+# dtrsurgeon: inputs other.pt sha256=" in out and "--example-inputs" in out.splitlines()[-1]


def test_check_without_example_inputs_records_the_guess(workdir, capsys):
    assert main(_apply(workdir)) == 0
    assert "# dtrsurgeon: inputs guessed\n" in (workdir / "model_dtr.py").read_text()
    assert main(["check", str(workdir / "spec.json"), str(workdir / "model.py"), str(workdir / "model_dtr.py")]) == 0


@pytest.mark.parametrize("edit,needle", [
    (("# dtrsurgeon: entry Net", "# dtrsurgeon: entry Net()"), ":5: the dtrsurgeon header line '# dtrsurgeon: entry Net()' is not"),
    (("# dtrsurgeon: kwargs {}", "# dtrsurgeon: kwargs {oops"), ":6: the dtrsurgeon header line"),
    (("# dtrsurgeon: inputs guessed", "# dtrsurgeon: inputs made up"), ":7: the dtrsurgeon header line"),
    (("# dtrsurgeon: spec", "# dtrsurgeon: spek"), ":4: the dtrsurgeon header line '# dtrsurgeon: spek"),
    (("# dtrsurgeon: entry Net\n", ""), ":7: the dtrsurgeon header ends without a '# dtrsurgeon: entry ...' line"),
    (("# dtrsurgeon: inputs guessed\n", "# dtrsurgeon: inputs guessed\n# dtrsurgeon: inputs guessed\n"),
     ":8: the dtrsurgeon header line '# dtrsurgeon: inputs guessed' repeats the field 'inputs'"),
])
def test_an_unreadable_header_names_its_line(edit, needle, workdir, capsys):
    assert main(_apply(workdir)) == 0
    gen = workdir / "model_dtr.py"
    gen.write_text(gen.read_text().replace(*edit, 1))
    err = _one_line_exit_2(["check", str(workdir / "spec.json"), str(workdir / "model.py"), str(gen)], capsys)
    assert f"{gen}{needle}" in err, err


def test_a_header_without_the_inputs_line_reads_as_guessed():
    from dtrsurgeon.emit.source import Header

    text = Header("m.py", "0" * 64, "s.json", "1" * 64, "Net", "{}").render()
    old = "".join(ln for ln in text.splitlines(True) if "inputs" not in ln) + "\nimport torch\n"
    assert Header.parse(old, "m_dtr.py").inputs == "guessed" and Header.parse(old, "m_dtr.py").inputs_file is None
    assert json.loads(Header.parse(text, "m_dtr.py").kwargs) == {}
