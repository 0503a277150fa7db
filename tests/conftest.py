import importlib.util
import os
import sys

import pytest
import torch

from model_zoo.dit import tiny_dit


def import_path(path, name: str):
    """The module at ``path`` (a generated file), imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_now() -> None:
    """End a spawned worker whose results are written, skipping interpreter teardown: with
    torch 2.13's gloo a worker aborts there now and then ("terminate called without an active
    exception", SIGABRT) after its process group is destroyed, which mp.spawn reports as a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def randomize_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised layers (adaLN-Zero, zero convs) random weights, so
    that every block does something and routing changes outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() >= 1 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def dit():
    torch.manual_seed(0)
    return randomize_(tiny_dit()).eval()
