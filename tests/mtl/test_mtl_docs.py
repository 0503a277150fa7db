"""docs/mtl.md stays true: its training loop runs, its quoted results hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dtrsurgeon.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "mtl.md"


def test_training_loop_block_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    loop = next(b for b in blocks if "ant.backward(per_sample, t)" in b)
    exec(compile(loop, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "[(0, 0), (1, 1), (2, 6), (7, 21), (22, 999)]" in out and "uw/weight/4" in out


@pytest.mark.parametrize(
    "argv, intervals",
    [
        (["--schedule", "linear", "--k", "5"], [[0, 0], [1, 1], [2, 6], [7, 21], [22, 999]]),
        (["--schedule", "cosine", "--k", "5"], [[0, 0], [1, 3], [4, 11], [12, 36], [37, 999]]),
        (["--schedule", "scaled_linear", "--k", "5", "--cost", "log_snr"], [[0, 148], [149, 371], [372, 604], [605, 815], [816, 999]]),
        (["--schedule", "linear", "--k", "5", "--convention", "reference"], [[0, 0], [1, 2], [3, 7], [8, 26], [27, 999]]),
    ],
)
def test_quoted_clusters(capsys, argv, intervals):
    assert main(["cluster", "--json", *argv]) == 0
    assert json.loads(capsys.readouterr().out)["intervals"] == intervals
    text = DOC.read_text()
    first, last = intervals[-1]
    assert f"{first}–{last}" in text or f"({first},{last})" in text or json.dumps(intervals) in text
