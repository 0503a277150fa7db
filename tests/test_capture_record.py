"""The capture's recording forward (who calls each module) runs on fake tensors: no arithmetic on the
real inputs, and the model keeps no fake tensor afterwards."""

import torch
from torch import nn

from dtrsurgeon.analysis.capture import _recording_run


class Probe(nn.Module):
    def __init__(self, branch_on_values: bool = False):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.branch_on_values = branch_on_values
        self.seen = []

    def forward(self, x):
        self.seen.append(type(x).__name__)
        self.last_input = x
        if self.branch_on_values and x.sum().item() > 1e9:  # needs real values
            return x
        return self.lin(x)


def test_recording_runs_on_fake_tensors_and_restores_the_model():
    model = Probe()
    records = ({"stale": 1},)
    _recording_run(model, (torch.randn(2, 4),), {}, records)
    assert model.seen == ["FakeTensor"]
    assert not hasattr(model, "last_input")  # set during the fake run, put back
    assert records == ({"stale": 1},)  # nothing to clear: no fallback happened


def test_recording_falls_back_to_real_tensors_where_values_are_needed():
    model = Probe(branch_on_values=True)
    records = ({"partial": 1},)
    _recording_run(model, (torch.randn(2, 4),), {}, records)
    assert model.seen == ["FakeTensor", "Tensor"]
    assert records == ({},)  # the fake run's partial records were dropped before the real run
