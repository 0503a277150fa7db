"""The plan's serialised form says which readers understand it: a unit's ``fold`` is one of a closed set
(``Fold``), plans that may hold the ``sequence_first`` fold carry version 2, and version-1 plans (which
cannot hold it) still load."""

import json

import pytest
import torch

import dtrsurgeon
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
    with pytest.raises(ValueError, match="frames_last"):
        Plan.from_dict(doc)
