"""``dtrsurgeon cluster``: in-process through main(), once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dtrsurgeon.cli import main


def run_json(capsys, *argv):
    assert main(["cluster", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_output(capsys):
    out = run_json(capsys, "--schedule", "linear", "--k", "5")
    assert out["intervals"] == [[0, 0], [1, 1], [2, 6], [7, 21], [22, 999]]
    assert out["num_timesteps"] == 1000 and out["cost"] == "snr" and out["convention"] == "exact"
    assert out["objective"] == pytest.approx(sum(c["cost"] for c in out["clusters"]))
    assert out["clusters"][0]["snr_first"] == pytest.approx(9999.0)


def test_reference_convention_and_other_costs(capsys):
    ref = run_json(capsys, "--k", "5", "--convention", "reference")
    assert ref["intervals"] == [[0, 0], [1, 2], [3, 7], [8, 26], [27, 999]]
    exact = run_json(capsys, "--k", "5")
    assert exact["objective"] < ref["objective"]
    uni = run_json(capsys, "--cost", "uniform", "--k", "4", "--timesteps", "100", "--schedule", "cosine")
    assert uni["intervals"] == [[0, 24], [25, 49], [50, 74], [75, 99]] and uni["objective"] is None
    ts = run_json(capsys, "--cost", "timestep", "--k", "2", "--timesteps", "40", "--schedule", "scaled-linear")
    assert ts["intervals"] == [[0, 19], [20, 39]]


def test_zero_terminal_snr_stays_valid_json(tmp_path, capsys):
    np.save(tmp_path / "ac.npy", np.linspace(0.99, 0.0, 30))
    out = run_json(capsys, "--alphas-cumprod", str(tmp_path / "ac.npy"), "--k", "3")
    assert out["num_timesteps"] == 30 and out["clusters"][-1]["log_snr_last"] is None


def test_affinity_file_sets_t_and_cost(tmp_path, capsys):
    A = np.exp(-np.abs(np.subtract.outer(np.arange(60), np.arange(60))) / 8.0)
    np.save(tmp_path / "a.npy", A)
    out = run_json(capsys, "--affinity", str(tmp_path / "a.npy"), "--k", "3")
    assert out["cost"] == "affinity" and out["num_timesteps"] == 60 and len(out["intervals"]) == 3


def test_table_and_plot(tmp_path, capsys):
    png = tmp_path / "clusters.png"
    assert main(["cluster", "--schedule", "cosine", "--k", "5", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "5 clusters of T=1000 timesteps (cosine schedule, cost snr, exact)" in out
    assert "37–999" in out and "objective" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "50", "--timesteps", "40"], "k = 50 clusters cannot be formed from T = 40 timesteps"),
        (["--k", "101"], "--k must be between 1 and 100, got 101"),
        (["--k", "0"], "--k must be between 1 and 100, got 0"),
        (["--k", "-2"], "--k must be between 1 and 100"),
        (["--schedule", "sigmoid"], "unknown noise schedule 'sigmoid'"),
        (["--timesteps", "0"], "--timesteps must be between 1 and 4096, got 0"),
        (["--timesteps", "1000000000"], "--timesteps must be between 1 and 4096, got 1000000000"),
        (["--cost", "median"], "unknown --cost 'median'"),
        (["--convention", "paper"], "unknown --convention 'paper'"),
        (["--cost", "affinity"], "needs --affinity"),
        (["--affinity", "{rect}"], "must be square"),
        (["--affinity", "{nan}"], "NaN"),
        (["--affinity", "{eye}", "--timesteps", "100"], "affinity matrix is 50 x 50 but T = 100"),
        (["--affinity", "{eye}", "--cost", "snr"], "only applies to --cost affinity"),
        (["--affinity", "{missing}"], "cannot read an affinity matrix"),
        (["--schedule", "cosine", "--alphas-cumprod", "{eye}"], "not both"),
        (["--alphas-cumprod", "{eye}"], "1-D"),
        (["--plot", "{tmp}/nodir/x.png"], "does not exist"),
        (["--plot", "{tmp}/x.notaformat"], "unknown image format"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    np.save(tmp_path / "rect.npy", np.ones((50, 40)))
    np.save(tmp_path / "nan.npy", np.full((50, 50), np.nan))
    np.save(tmp_path / "eye.npy", np.eye(50))
    before = sorted(p.name for p in tmp_path.iterdir())
    paths = {"rect": tmp_path / "rect.npy", "nan": tmp_path / "nan.npy", "eye": tmp_path / "eye.npy", "missing": tmp_path / "no.npy", "tmp": tmp_path}
    argv = [a.format(**paths) for a in argv]
    assert main(["cluster", *argv, "--plot", str(tmp_path / "out.png")] if "--plot" not in argv else ["cluster", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtrsurgeon cluster: error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_subprocess(tmp_path):
    cmd = [sys.executable, "-c", "import sys; from dtrsurgeon.cli import main; sys.exit(main())", "cluster"]
    ok = subprocess.run(cmd + ["--k", "3", "--timesteps", "50", "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["intervals"]) == 3
    bad = subprocess.run(cmd + ["--k", "51", "--timesteps", "50"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "dtrsurgeon cluster: error: k = 51 clusters cannot be formed from T = 50 timesteps; use k <= 50"
