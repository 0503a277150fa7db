"""A routed model under DistributedDataParallel (2 CPU processes, gloo) takes the
same step as one process on the whole batch."""

import os
import socket

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import dtrsurgeon
from model_zoo.dit import tiny_dit
from tests.conftest import exit_now, randomize_


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 999, 250, 600])
    y = torch.randint(0, 10, (4,), generator=g)
    return x, t, y


def _model():
    torch.manual_seed(0)
    return dtrsurgeon.transform(randomize_(tiny_dit(class_dropout_prob=0.0)), "dit-paper")


def _step(model, x, t, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x, t, y).square().mean().backward()
    opt.step()


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = DistributedDataParallel(_model())
    x, t, y = _batch()
    _step(model, x[rank * 2:rank * 2 + 2], t[rank * 2:rank * 2 + 2], y[rank * 2:rank * 2 + 2])
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.destroy_process_group()
    exit_now()


@pytest.mark.slow
def test_ddp_step_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    single = _model()
    _step(single, *_batch())
    ddp_state = torch.load(out)
    assert list(ddp_state) == list(single.state_dict())
    for key, value in single.state_dict().items():
        assert torch.allclose(ddp_state[key], value, atol=1e-6), key
