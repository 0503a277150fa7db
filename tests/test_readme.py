"""README's Python blocks run as written, from a folder outside the repository."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _since_last_heading(text: str) -> str:
    """``text`` from its last Markdown heading on (``#`` lines inside code fences are no headings)."""
    start, fenced, offset = 0, False, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            start = offset
        offset += len(line)
    return text[start:]


def python_blocks() -> list[tuple[int, str, str]]:
    """(line, code, the shell block before it in the same section, or "") of each Python block."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for m in BLOCK.finditer(text):
        section = _since_last_heading(text[:m.start()])
        shell = re.findall(r"^```bash\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1), shell[-1] if shell else ""))
    return blocks


def test_readme_has_python_blocks():
    assert python_blocks(), "README.md lost its Python examples"


@pytest.mark.slow
@pytest.mark.parametrize("line,code,shell", python_blocks(), ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_block_runs(line, code, shell, tmp_path, monkeypatch):
    """Each block runs in a fresh folder, after the shell commands its section shows before it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    if shell:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-e", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr
    exec(compile(code, f"{README}:{line}", "exec"), {"__name__": f"readme_block_{line}"})


def setup_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_setup_block_installs_runs_and_tests():
    install, main, tests = setup_commands()
    assert install.startswith("python -m pip install") and tests.startswith("python -m pytest")
    assert main.startswith("dtrsurgeon apply ")


@pytest.mark.slow
def test_setup_main_command_runs_as_written(tmp_path):
    """The README's main command, from the repository root, writing into a temporary folder."""
    main = setup_commands()[1].split()
    out = main.index("-o") + 1
    main[out] = str(tmp_path / Path(main[out]).name)
    done = subprocess.run([sys.executable, "-m", "dtrsurgeon", *main[1:]], cwd=README.parent,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    generated = Path(main[out]).read_text(encoding="utf-8")
    assert "dtr_task_index(" in generated and "class DiT(" in generated


SHOWN_OUTPUT = re.compile(r"^`(dtrsurgeon inspect [^`]+)`:\n\n```\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize("command,shown", SHOWN_OUTPUT.findall(README.read_text(encoding="utf-8")),
                         ids=lambda v: v.split(" --spec")[0] if v.startswith("dtrsurgeon") else "")
def test_shown_inspect_output_is_what_the_command_prints(command, shown, monkeypatch, capsys):
    """Every line README shows under an `inspect` command is a line that command prints."""
    from dtrsurgeon.cli import main

    monkeypatch.chdir(README.parent)
    assert main(shlex.split(command)[1:]) == 0
    printed = {line.rstrip() for line in capsys.readouterr().out.splitlines()}
    missing = [line for line in shown.splitlines() if line != "..." and line.rstrip() not in printed]
    assert not missing, missing


def test_shown_apply_edits_are_in_the_golden_files():
    """The `+` lines of README's diffs are lines `apply` writes (tests/golden holds its output)."""
    goldens = "\n".join(p.read_text(encoding="utf-8") for p in (README.parent / "tests" / "golden").glob("*.py"))
    written = {line.strip() for line in goldens.splitlines()}
    diffs = re.findall(r"^```diff\n(.*?)^```", README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    added = [line[1:].strip() for diff in diffs for line in diff.splitlines() if line.startswith("+")]
    assert added and not [line for line in added if line not in written]
