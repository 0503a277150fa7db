"""Spec v1: every schema rule, accepted and rejected, with the JSON pointer."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import dtrsurgeon
from dtrsurgeon import SpecError, load_spec
from dtrsurgeon.cli import main

SHARED_EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "spec-v1.example.json"
REPO = Path(__file__).resolve().parents[1]


def test_shared_example_is_accepted_with_its_meanings():
    doc = json.loads(SHARED_EXAMPLE.read_text()) if SHARED_EXAMPLE.exists() else {
        "version": 1, "timestep": {"arg": "t", "num_tasks": 1000, "range": [0, 999], "reverse": False},
        "routing": {"channel_ratio": 0.8, "window_shift": "sliding", "task_weights": {"curve": "power", "alpha": 4.0},
                    "mode": "block", "seed": 0},
        "targets": {"include": ["blocks.*"], "exclude": []}, "overrides": [{"match": "blocks.0", "channel_ratio": 0.9}]}
    spec = load_spec(doc)
    assert spec.timestep.arg == "t" and spec.timestep.num_tasks == 1000
    assert (spec.timestep.t0, spec.timestep.t1, spec.timestep.reverse) == (0, 999, False)
    assert spec.routing.channel_ratio == 0.8 and spec.routing.window_shift == "sliding"
    assert spec.routing.task_weights.curve == "power" and spec.routing.task_weights.alpha == 4.0
    assert spec.mode == "block" and spec.include == ("blocks.*",)
    assert spec.mask_params_for("blocks.0").channel_ratio == 0.9
    assert spec.mask_params_for("blocks.1").channel_ratio == 0.8


def test_defaults_are_the_papers_dit_setting():
    spec = load_spec({"version": 1})
    assert spec.routing.channel_ratio == 0.8
    assert spec.routing.task_weights.curve == "power" and spec.routing.task_weights.alpha == 4.0
    assert spec.routing.window_shift == "sliding" and spec.mode == "block"
    assert spec.timestep.num_tasks == 1000 and (spec.timestep.t0, spec.timestep.t1) == (0, 999)
    assert spec.timestep.arg is None and spec.include == () and spec.exclude == ()  # found in the forward


@pytest.mark.parametrize("params, expected", [
    (["x", "t", "y"], "t"),                       # DiT, model_zoo
    (["x", "timesteps", "y"], "timesteps"),       # ADM (guided-diffusion), U-ViT
    (["sample", "timestep", "class_labels"], "timestep"),   # diffusers
    (["x", "noise_labels", "class_labels"], "noise_labels"),  # EDM U-Nets
    (["x", "sigma", "class_labels"], "sigma"),    # EDM preconditioners
])
def test_the_timestep_argument_is_found_by_its_usual_names(params, expected):
    assert load_spec({"version": 1}).timestep.resolved(params, "M.forward").arg == expected


def test_an_unfound_or_wrong_timestep_argument_is_an_error_at_its_pointer():
    with pytest.raises(SpecError, match=r"^spec /timestep/arg: M.forward\(x, y\) takes none of the usual"):
        load_spec({"version": 1}).timestep.resolved(["x", "y"], "M.forward")
    with pytest.raises(SpecError, match=r"^spec /timestep/arg: 'tau' is not an argument of M.forward\(x, t\)"):
        load_spec({"version": 1, "timestep": {"arg": "tau"}}).timestep.resolved(["x", "t"], "M.forward")
    spec = load_spec({"version": 1, "timestep": {"arg": "t"}})
    assert spec.timestep.resolved(["x", "t", "timesteps"], "M.forward") is spec.timestep


def test_range_defaults_to_the_task_count():
    assert load_spec({"version": 1, "timestep": {"num_tasks": 50}}).timestep.t1 == 49


def test_spec_is_immutable_and_round_trips():
    spec = load_spec(SHARED_EXAMPLE if SHARED_EXAMPLE.exists() else {"version": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mode = "branch"
    assert load_spec(spec.to_dict()) == spec
    assert load_spec(json.loads(spec.to_json())).sha256 == spec.sha256


def test_mtl_section_is_read_only():
    spec = load_spec({"version": 1, "mtl": {"weighting": "uw"}}) if _mtl_accepts_uw() else None
    if spec is not None:
        with pytest.raises(TypeError):
            spec.mtl["weighting"] = "none"


def _mtl_accepts_uw():
    try:
        load_spec({"version": 1, "mtl": {"weighting": "uw"}})
        return True
    except SpecError:
        return False


ACCEPT = [
    {"version": 1, "routing": {"channel_ratio": 1.0}},
    {"version": 1, "routing": {"channel_ratio": 0.01}},
    {"version": 1, "routing": {"window_shift": "random", "seed": 3}},
    {"version": 1, "routing": {"window_shift": "fixed"}},
    {"version": 1, "routing": {"task_weights": {"curve": "linear"}}},
    {"version": 1, "routing": {"task_weights": {"curve": "cosine"}}},
    {"version": 1, "routing": {"task_weights": {"curve": "power", "alpha": 0.5}}},
    {"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0, 0], [0.5, 0.2], [1, 1]]}}},
    {"version": 1, "routing": {"mode": "branch"}},
    {"version": 1, "timestep": {"arg": "timestep", "num_tasks": 2, "range": [0.002, 80.0], "reverse": True}},
    {"version": 1, "targets": {"include": ["blocks.*"], "exclude": ["blocks.0"]}},
    {"version": 1, "overrides": [{"match": "blocks.1*", "channel_ratio": 0.5, "window_shift": "fixed",
                                   "task_weights": {"curve": "linear"}}]},
    {"version": 1, "description": "why this setting"},
]


@pytest.mark.parametrize("doc", ACCEPT)
def test_accepts(doc):
    load_spec(doc)


REJECT = [
    ({}, "/", "missing required key 'version'"),
    ({"version": 2}, "/version", "expected 1"),
    ({"version": 1, "bogus": 1}, "/bogus", "unknown key 'bogus'"),
    ({"version": 1, "routing": {"ratio": 0.8}}, "/routing/ratio", "unknown key 'ratio'"),
    ({"version": 1, "timestep": {"args": "t"}}, "/timestep/args", "unknown key"),
    ({"version": 1, "targets": {"includes": []}}, "/targets/includes", "unknown key"),
    ({"version": 1, "routing": {"channel_ratio": 0}}, "/routing/channel_ratio", "> 0"),
    ({"version": 1, "routing": {"channel_ratio": 1.5}}, "/routing/channel_ratio", "<= 1"),
    ({"version": 1, "routing": {"channel_ratio": "0.8"}}, "/routing/channel_ratio", "expected number"),
    ({"version": 1, "routing": {"window_shift": "slide"}}, "/routing/window_shift", "expected one of"),
    ({"version": 1, "routing": {"mode": "everywhere"}}, "/routing/mode", "expected one of"),
    ({"version": 1, "routing": {"seed": -1}}, "/routing/seed", ">= 0"),
    ({"version": 1, "routing": {"task_weights": {"curve": "power", "alpha": 0}}}, "/routing/task_weights/alpha", "> 0"),
    ({"version": 1, "routing": {"task_weights": {"curve": "power", "alpha": -2}}}, "/routing/task_weights/alpha", "> 0"),
    ({"version": 1, "routing": {"task_weights": {"curve": "square"}}}, "/routing/task_weights/curve", "expected one of"),
    ({"version": 1, "routing": {"task_weights": {"alpha": 4}}}, "/routing/task_weights", "missing required key 'curve'"),
    ({"version": 1, "routing": {"task_weights": {"curve": "linear", "alpha": 2}}}, "/routing/task_weights/alpha", "unknown key"),
    ({"version": 1, "routing": {"task_weights": {"curve": "table"}}}, "/routing/task_weights", "missing required key 'points'"),
    ({"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0, 0]]}}}, "/routing/task_weights/points", "at least 2"),
    ({"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0, 0], [1, 1.5]]}}}, "/routing/task_weights/points/1/1", "<= 1"),
    ({"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0, 0], [0.5, 0.8], [1, 0.4]]}}}, "/routing/task_weights/points/2", "non-decreasing"),
    ({"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0, 0], [0.5, 0.1], [0.5, 0.2], [1, 1]]}}}, "/routing/task_weights/points/2", "u to increase"),
    ({"version": 1, "routing": {"task_weights": {"curve": "table", "points": [[0.1, 0], [1, 1]]}}}, "/routing/task_weights/points", "u=0"),
    ({"version": 1, "timestep": {"num_tasks": 1}}, "/timestep/num_tasks", ">= 2"),
    ({"version": 1, "timestep": {"num_tasks": 10.5}}, "/timestep/num_tasks", "expected integer"),
    ({"version": 1, "timestep": {"range": [10, 10]}}, "/timestep/range", "t0 < t1"),
    ({"version": 1, "timestep": {"range": [999, 0]}}, "/timestep/range", "t0 < t1"),
    ({"version": 1, "timestep": {"range": [0]}}, "/timestep/range", "at least 2"),
    ({"version": 1, "timestep": {"arg": ""}}, "/timestep/arg", "non-empty"),
    ({"version": 1, "timestep": {"reverse": "yes"}}, "/timestep/reverse", "expected boolean"),
    ({"version": 1, "targets": {"include": "blocks.*"}}, "/targets/include", "expected array"),
    ({"version": 1, "overrides": [{"channel_ratio": 0.5}]}, "/overrides/0", "missing required key 'match'"),
    ({"version": 1, "overrides": [{"match": "b", "alpha": 2}]}, "/overrides/0/alpha", "unknown key"),
    ({"version": 1, "overrides": [{"match": "b", "channel_ratio": 2}]}, "/overrides/0/channel_ratio", "<= 1"),
    ({"version": 1, "overrides": [{"match": "b", "task_weights": {"curve": "table", "points": [[0, 0.5], [1, 0.2]]}}]},
     "/overrides/0/task_weights/points/1", "non-decreasing"),
]


@pytest.mark.parametrize("doc,pointer,expected", REJECT, ids=[r[1] + ":" + r[2] for r in REJECT])
def test_rejects_with_pointer(doc, pointer, expected):
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    assert info.value.pointer == ("" if pointer == "/" else pointer)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,\n  "routing": {"channel_ratio": 0.8,}\n}')
    with pytest.raises(SpecError, match=r"bad.json:2:\d+: malformed JSON"):
        load_spec(bad)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.json")


def test_top_level_must_be_an_object(tmp_path):
    f = tmp_path / "list.json"
    f.write_text("[1, 2]")
    with pytest.raises(SpecError, match="expected a JSON object"):
        load_spec(f)


# -- CLI ------------------------------------------------------------------------

def test_cli_validate_ok(capsys):
    assert main(["validate", "dit-paper"]) == 0
    assert "ok" in capsys.readouterr().out


def test_cli_validate_json_prints_resolved_defaults(capsys):
    assert main(["validate", "dit-paper", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["routing"]["channel_ratio"] == 0.8 and doc["timestep"]["num_tasks"] == 1000


@pytest.mark.parametrize("content,needle", [
    ('{"version": 1, "routing": {"channel_ratio": 0}}', "spec /routing/channel_ratio: expected a number > 0, got 0"),
    ('{"version": 1, "routing": {"channel_ratio": 1.5}}', "spec /routing/channel_ratio: expected a number <= 1, got 1.5"),
    ('{"version": 1, "typo": true}', "spec /typo: unknown key 'typo'"),
    ('{"version": 1,', "malformed JSON"),
    ('{"version": 1, "timestep": {"range": [5, 1]}}', "spec /timestep/range: expected t0 < t1"),
    ('{"version": 1, "timestep": {"num_tasks": 1}}', "spec /timestep/num_tasks"),
    ('{"version": 1, "routing": {"task_weights": {"curve": "power", "alpha": 0}}}', "spec /routing/task_weights/alpha"),
])
def test_cli_validate_bad_input_is_one_line_exit_2(tmp_path, capsys, content, needle):
    f = tmp_path / "spec.json"
    f.write_text(content)
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("dtrsurgeon validate: error:")


def test_cli_validate_through_a_subprocess(tmp_path):
    f = tmp_path / "spec.json"
    f.write_text('{"version": 1, "routing": {"channel_ratio": 1.5}}')
    proc = subprocess.run([sys.executable, "-m", "dtrsurgeon", "validate", str(f)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "dtrsurgeon validate: error: spec /routing/channel_ratio: expected a number <= 1, got 1.5"


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and dtrsurgeon.__version__ in capsys.readouterr().out
