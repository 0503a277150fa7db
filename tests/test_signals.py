"""SIGINT and SIGTERM never leave a partial or temporary file behind.

The writer is interrupted at each of its steps in-process (a signal sent to ourselves from
inside the step), then ``dtrsurgeon apply`` is interrupted in a subprocess at 30 random moments.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dtrsurgeon.cli._output as output
from dtrsurgeon.cli._output import Interrupted, OutputError, write_output, write_text

REPO = Path(__file__).resolve().parents[1]


def _kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs here, at the next bytecode, if it is not deferred


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "out.py"
    path.write_text("old\n")
    return path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_write_removes_the_temporary_file(signum, target):
    def write(tmp):
        Path(tmp).write_text("partial")
        _kill_self(signum)
        Path(tmp).write_text("partial, then more")

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as caught:
        write_output(target, write)
    assert caught.value.signum == signum
    assert os.listdir(target.parent) == ["out.py"] and target.read_text() == "old\n"
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_temporary_file_is_made_is_deferred_then_cleaned(signum, target, monkeypatch):
    real = output.tempfile.mkstemp

    def mkstemp(**kwargs):
        made = real(**kwargs)
        _kill_self(signum)
        return made

    monkeypatch.setattr(output.tempfile, "mkstemp", mkstemp)
    with pytest.raises(Interrupted):
        write_output(target, lambda tmp: Path(tmp).write_text("new\n"))
    assert os.listdir(target.parent) == ["out.py"] and target.read_text() == "old\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_at_the_rename_lets_it_finish(signum, target, monkeypatch):
    real = os.replace

    def replace(src, dst):
        _kill_self(signum)
        real(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    with pytest.raises(Interrupted):
        write_text(target, "new\n")
    assert os.listdir(target.parent) == ["out.py"] and target.read_text() == "new\n"


def test_a_failing_writer_leaves_nothing_and_is_one_output_error(target):
    def write(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"^-o .*out.py: cannot write it: No space left on device$"):
        write_output(target, write)
    assert os.listdir(target.parent) == ["out.py"] and target.read_text() == "old\n"


NET = (REPO / "tests" / "test_cli_errors.py").read_text().split("NET = '''", 1)[1].split("'''", 1)[0]


def _apply(folder: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "dtrsurgeon", "apply", str(folder / "spec.json"), str(folder / "model.py"),
            "--entry", "Net", "-o", str(folder / "out.py")]
    return subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model.py").write_text(NET)
    shutil.copy(REPO / "dtrsurgeon" / "spec" / "presets" / "dit-paper.json", folder / "spec.json")
    return folder


@pytest.mark.slow
def test_apply_interrupted_at_random_moments_leaves_the_whole_file_or_none(tmp_path):
    """30 runs, SIGINT and SIGTERM alternating, each at a random moment of a run (seeded): the
    folder then holds the inputs and either the complete output or no output, never a temporary
    file.  Exit codes: 0 (done first), 130 / 143 (our handlers), -2 / -15 (killed before Python's
    handlers or ours were installed: nothing was open yet)."""
    reference = _folder(tmp_path, "reference")
    start = time.monotonic()
    proc = _apply(reference)
    _, err = proc.communicate(timeout=300)
    full = time.monotonic() - start
    assert proc.returncode == 0, err
    expected = (reference / "out.py").read_bytes()
    rng = random.Random(13)
    outcomes = []
    for run in range(30):
        signum = (signal.SIGINT, signal.SIGTERM)[run % 2]
        folder = _folder(tmp_path, f"run{run}")
        proc = _apply(folder)
        time.sleep(rng.uniform(0.02, 1.1) * full)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        names = sorted(os.listdir(folder))
        assert names in (["model.py", "spec.json"], ["model.py", "out.py", "spec.json"]), (run, names, err)
        if "out.py" in names:
            assert (folder / "out.py").read_bytes() == expected, run
        assert proc.returncode in (0, 128 + signum, -signum), (run, proc.returncode, err)
        if proc.returncode == 128 + signum:
            assert err.strip().splitlines() == [err.strip()] and "interrupted" in err, err
        outcomes.append(proc.returncode)
    assert len(set(outcomes)) > 1, outcomes  # the moments spread over the run: not all finished, not all cut short
