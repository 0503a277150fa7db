"""``examples/train.py --fsdp`` (FSDP2, ``fully_shard``) on CPU with gloo: a routed tiny DiT on digits.

2 sharded processes must take the steps of one process that cuts the same global batch into the
same two micro-batches (float32: the gradient average ``(g0 + g1) / 2`` is the accumulated
``g0 / 2 + g1 / 2``), and a sharded checkpoint must resume to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from examples import train  # noqa: E402
from examples.fsdp import dtr_config, shard_units  # noqa: E402

pytest.importorskip("sklearn")

SPEC = str(ROOT / "dtrsurgeon" / "spec" / "presets" / "dit-paper.json")
ARGV = ["--model", "tiny_dit", "--data", "digits", "--image-size", "8", "--batch-size", "16", "--device", "cpu",
        "--num-samples", "0", "--no-progress", "--log-every", "1", "--precision", "fp32",
        "--model-kwargs", '{"class_dropout_prob": 0}', "--spec", SPEC]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.slow
def test_shard_units_are_the_routed_units_and_list_elements_innermost_first():
    import dtrsurgeon
    from model_zoo.adm_unet import adm_unet
    from model_zoo.dit import tiny_dit

    dit = dtrsurgeon.transform(tiny_dit(input_size=8, in_channels=1, num_classes=10), dtrsurgeon.load_spec(SPEC))
    assert shard_units(dit) == [f"blocks.{i}" for i in range(len(dit.blocks))]
    unet = adm_unet("tiny", image_size=8, in_channels=1, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                    attention_resolutions=[4], num_head_channels=16)
    routed = dtrsurgeon.transform(unet, dtrsurgeon.load_spec("adm"))
    units = shard_units(routed)
    masked = [n for n, _ in routed.named_buffers() if n.endswith("dtr_mask")]
    assert masked and all(n.rsplit(".", 1)[0] in units for n in masked)
    depth = [n.count(".") for n in units]
    assert depth == sorted(depth, reverse=True)


def _train(argv: list[str]) -> train.TrainResult:
    return train.run(train.build_parser().parse_args(argv))


def _worker(rank: int, port: int, argv: list[str], result: str) -> None:
    from tests.conftest import exit_now

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    res = _train(argv)
    if rank == 0:
        torch.save({"loss": res.losses, "model": res.model.state_dict(), "ema": res.ema.state_dict()}, result)
    exit_now()


def _spawn(argv: list[str], result: Path) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, argv, str(result)), nprocs=2, join=True)
    return torch.load(result, weights_only=False)


def _assert_same(a: dict, b: dict) -> None:
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for key in ("model", "ema"):
        assert list(a[key]) == list(b[key])
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=1e-5, atol=1e-6, msg=f"{key}.{k}")


@pytest.mark.slow
def test_two_sharded_processes_equal_one_process_and_resume(tmp_path):
    one = _train(ARGV + ["--steps", "3", "--grad-accum", "2", "--out", str(tmp_path / "one")])
    expect = {"loss": one.losses, "model": one.model.state_dict(), "ema": one.ema.state_dict()}
    assert len(expect["loss"]) == 3

    sharded = _spawn(ARGV + ["--fsdp", "--steps", "3", "--out", str(tmp_path / "fsdp")], tmp_path / "fsdp.pt")
    _assert_same(sharded, expect)
    ckpt = tmp_path / "fsdp" / "ckpt"
    config = json.loads((ckpt / "dtr_config.json").read_text())
    assert config["spec"]["routing"]["channel_ratio"] == 0.8
    assert [u["path"] for u in config["plan"]["units"]] == [f"blocks.{i}" for i in range(len(one.model.blocks))]
    assert (ckpt / "state" / ".metadata").is_file()

    # 2 steps, then a resume from the sharded checkpoint to 3: the same as 3 in one go
    argv = ARGV + ["--fsdp", "--out", str(tmp_path / "part")]
    _spawn(argv + ["--steps", "2"], tmp_path / "part2.pt")
    resumed = _spawn(argv + ["--steps", "3", "--resume", "auto"], tmp_path / "part3.pt")
    _assert_same(resumed, sharded)


@pytest.mark.slow
def test_one_sharded_process_equals_the_plain_loop(tmp_path):
    """World size 1 without torchrun (a process group of one): the same losses and weights."""
    plain = _train(ARGV + ["--steps", "2", "--out", str(tmp_path / "plain")])
    sharded = _train(ARGV + ["--steps", "2", "--fsdp", "--out", str(tmp_path / "fsdp")])
    _assert_same({"loss": sharded.losses, "model": sharded.model.state_dict(), "ema": sharded.ema.state_dict()},
                 {"loss": plain.losses, "model": plain.model.state_dict(), "ema": plain.ema.state_dict()})
    assert json.loads((tmp_path / "fsdp" / "metrics.json").read_text())["fsdp"] is True


def test_dtr_config_holds_the_spec_and_the_plan():
    import dtrsurgeon

    spec = dtrsurgeon.load_spec(SPEC)
    assert dtr_config(spec, {"units": []}) == {"spec": spec.to_dict(), "plan": {"units": []}}
    assert dtr_config(None, None) == {"spec": None, "plan": None}


@pytest.mark.slow
def test_sharded_resume_refuses_a_missing_folder_and_another_spec(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(ARGV + ["--fsdp", "--steps", "1", "--resume", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "not a sharded checkpoint folder" in capsys.readouterr().err
    assert train.main(ARGV + ["--fsdp", "--steps", "1", "--out", str(out)]) == 0
    other = json.loads(Path(SPEC).read_text())
    other["routing"]["channel_ratio"] = 0.5
    (tmp_path / "other.json").write_text(json.dumps(other))
    argv = ARGV[:-1] + [str(tmp_path / "other.json"), "--fsdp", "--steps", "2", "--resume", "auto", "--out", str(out)]
    assert train.main(argv) == 2
    assert "trained with another spec" in capsys.readouterr().err


@pytest.mark.slow
def test_a_generated_file_is_sharded_by_its_units(tmp_path):
    from dtrsurgeon.cli import main as cli
    from dtrsurgeon.cli._model import build_model as build_from_file

    kwargs = json.dumps({"input_size": 8, "in_channels": 1, "num_classes": 10, "learn_sigma": False,
                         "class_dropout_prob": 0})
    gen = tmp_path / "dit_dtr.py"
    assert cli(["apply", SPEC, str(ROOT / "model_zoo" / "dit.py"), "--entry", "tiny_dit", "--kwargs", kwargs,
                "-o", str(gen)]) == 0
    model = build_from_file(str(gen), "tiny_dit", kwargs)
    assert shard_units(model) == [f"blocks.{i}" for i in range(len(model.blocks))]
    argv = ARGV[:ARGV.index("--model")] + ARGV[ARGV.index("--model") + 2:]
    argv += ["--steps", "2", "--generated", str(gen), "--entry", "tiny_dit", "--kwargs", kwargs]
    plain = _train(argv + ["--out", str(tmp_path / "plain")])
    sharded = _train(argv + ["--fsdp", "--out", str(tmp_path / "fsdp")])
    assert sharded.losses == pytest.approx(plain.losses, rel=1e-6)
    assert json.loads((tmp_path / "fsdp" / "ckpt" / "dtr_config.json").read_text())["spec"]["version"] == 1
