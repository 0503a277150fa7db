"""The plan's serialised form says which readers understand it: version 2 marks a unit's ``fold`` as one of
the closed set ``Fold``, and version-1 plans still load; an unknown fold is refused naming the unit (and,
from a saved directory, the file).  The edit plan's version 2 marks the ``bind_children`` edit."""

import json

import pytest
import torch

from torch import nn

import dtrsurgeon
from dtrsurgeon.emit.editplan import EDIT_PLAN_VERSION, EditPlan, Form
from dtrsurgeon.plan import PLAN_VERSION, Fold, Plan
from tests import stream_patterns as sp


@pytest.fixture(scope="module")
def seq_first_plan():
    torch.manual_seed(0)
    return dtrsurgeon.plan(sp.SeqFirstNet().eval(), {"version": 1})


def test_a_sequence_first_plan_round_trips_as_version_2(seq_first_plan):
    doc = json.loads(seq_first_plan.to_json())
    assert doc["version"] == PLAN_VERSION == 2
    assert [u["fold"] for u in doc["units"]] == ["sequence_first", "sequence_first"]
    loaded = Plan.from_dict(doc)
    assert loaded == seq_first_plan
    assert all(u.fold is Fold.SEQUENCE_FIRST for u in loaded.units)


def test_a_version_1_plan_still_loads(seq_first_plan):
    doc = json.loads(seq_first_plan.to_json())
    doc["version"] = 1
    for unit in doc["units"]:
        del unit["fold"]
    assert all(u.fold is None for u in Plan.from_dict(doc).units)


@pytest.mark.parametrize("version", [0, 3, None])
def test_other_versions_are_refused(seq_first_plan, version):
    doc = {**json.loads(seq_first_plan.to_json()), "version": version}
    with pytest.raises(ValueError, match=f"plan version {version!r} is not supported"):
        Plan.from_dict(doc)


def test_an_unknown_fold_is_refused(seq_first_plan):
    doc = json.loads(seq_first_plan.to_json())
    doc["units"][0]["fold"] = "frames_last"
    path = doc["units"][0]["path"]
    with pytest.raises(ValueError) as raised:
        Plan.from_dict(doc)
    assert str(raised.value) == f"unit {path!r}: fold 'frames_last' is not one of interleave, repeat, sequence_first"


def test_an_unknown_fold_in_a_saved_directory_names_the_file(tmp_path):
    torch.manual_seed(0)
    routed = dtrsurgeon.transform(sp.SeqFirstNet().eval(), {"version": 1})
    dtrsurgeon.save_pretrained(routed, tmp_path)
    config = tmp_path / "dtr_config.json"
    doc = json.loads(config.read_text())
    doc["plan"]["units"][0]["fold"] = "frames_last"
    config.write_text(json.dumps(doc))
    with pytest.raises(dtrsurgeon.CheckpointError, match=rf"^{config}: unit '[\w.]+': fold 'frames_last' is not one of"):
        dtrsurgeon.from_pretrained(sp.SeqFirstNet(), tmp_path)


class Residual(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.mix = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.mix(self.norm(x))


class MixedFoldNet(nn.Module):
    """Two instances of one class: one on frames folded sample-major (``reshape(B * F, ...)``, interleave),
    one on frames folded frame-major (``transpose(0, 1).reshape(F * B, ...)``, repeat)."""

    def __init__(self, dim=8):
        super().__init__()
        self.embed, self.temb = nn.Linear(4, dim), nn.Linear(1, dim)
        self.per_sample, self.per_frame = Residual(dim), Residual(dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, x, t):
        """x: [B, F, L, 4] frames of tokens, t: [B]."""
        b, f, length, _ = x.shape
        h = self.embed(x) + self.temb(t.float()[:, None])[:, None, None]
        a = self.per_sample(h.reshape(b * f, length, -1)).reshape(b, f, length, -1)
        c = self.per_frame(h.transpose(0, 1).reshape(f * b, length, -1)).reshape(f, b, length, -1)
        return self.out(a + c.transpose(0, 1))


def test_a_fold_in_a_skip_message_is_its_value():
    torch.manual_seed(0)
    plan = dtrsurgeon.plan(MixedFoldNet().eval(), {"version": 1},
                           example_inputs=((torch.randn(2, 3, 5, 4), torch.tensor([10, 500])), {}))
    assert [(u.path, u.fold) for u in plan.units] == [("per_sample", Fold.INTERLEAVE)]
    assert plan.skipped == (("per_frame", "its batch holds frames as 'repeat' while other Residual units hold them "
                                          "as 'interleave', and one class has one forward"),)


def test_the_edit_plan_carries_version_2_and_reads_version_1():
    edits = EditPlan(Form.SOURCE, ())
    doc = json.loads(edits.to_json())
    assert doc["version"] == EDIT_PLAN_VERSION == 2
    assert EditPlan.from_dict(doc) == edits
    assert EditPlan.from_dict({**doc, "version": 1}).form is Form.SOURCE
    with pytest.raises(ValueError, match="edit plan version 3 is not supported"):
        EditPlan.from_dict({**doc, "version": 3})
