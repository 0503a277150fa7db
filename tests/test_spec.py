"""Spec v1: every schema rule, accepted and rejected, with the JSON pointer."""

import dataclasses
import json
import os
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


@pytest.mark.slow
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


# -- what Python's json lets through, and sizes the tool cannot build ---------------------------

REJECT_TEXT = [
    ('{"version": 1, "routing": {"channel_ratio": NaN}}', "/routing/channel_ratio", "expected a finite number, got NaN"),
    ('{"version": 1, "routing": {"task_weights": {"curve": "power", "alpha": Infinity}}}',
     "/routing/task_weights/alpha", "got Infinity"),
    ('{"version": 1, "timestep": {"range": [-Infinity, 1]}}', "/timestep/range/0", "got -Infinity"),
    ('{"version": 1, "timestep": {"range": [0, 1e400]}}', "/timestep/range/1", "got 1e400"),
    ('{"version": 1, "routing": {"seed": ' + "9" * 50 + "}}", "/routing/seed", "an integer of at most 40 digits"),
    ('{"version": 1, "routing": {"seed": ' + "9" * 5000 + "}}", "/routing/seed", "(5000 chars)"),
    ('{"version": 1, "mtl": {"min_snr_gamma": NaN}}', "/mtl/min_snr_gamma", "finite"),
    ('{"version": 1, "version": 1}', "/version", "duplicate key 'version'"),
    ('{"version": 1, "routing": {"mode": "block", "mode": "branch"}}', "/routing/mode", "duplicate key 'mode'"),
    ('{"version": 1, "overrides": [{"match": "a", "match": "b"}]}', "/overrides/0/match", "duplicate key"),
    ('{"version": 1, "description": ' + "[" * 40 + "]" * 40 + "}", "/description" + "/0" * 32, "nested too deeply"),
    ("[" * 10000 + "]" * 10000, "/", "nested too deeply"),
    ("[1, 2]", "/", "expected a JSON object, got an array"),
    ('"version"', "/", "expected a JSON object, got a string"),
    ("null", "/", "expected a JSON object, got null"),
    ("3", "/", "expected a JSON object, got a number"),
    ('{"version": 1, "timestep": {"num_tasks": 10001}}', "/timestep/num_tasks", "<= 10000"),
    ('{"version": 1, "timestep": {"num_tasks": 1000000000}}', "/timestep/num_tasks", "<= 10000"),
    ('{"version": 1, "timestep": {"num_tasks": 1e300}}', "/timestep/num_tasks", "<= 10000"),
    ('{"version": 1, "timestep": {"range": [0, 1e10]}}', "/timestep/range/1", "<= 1e+09"),
    ('{"version": 1, "timestep": {"range": [0, 1e-7]}}', "/timestep/range", "t1 - t0 >= 1e-06"),
    ('{"version": 1, "routing": {"seed": 18446744073709551616}}', "/routing/seed", "<= 18446744073709551615"),
    ('{"version": 1, "routing": {"task_weights": {"curve": "table", "points": ['
     + ", ".join(f"[{i / 1000}, {i / 1000}]" for i in range(1001)) + "]}}}", "/routing/task_weights/points", "at most 1000 items"),
    ('{"version": 1, "overrides": [' + ", ".join(['{"match": "a"}'] * 1025) + "]}", "/overrides", "at most 1024 items"),
    ('{"version": 1, "targets": {"include": ["' + "a" * 1001 + '"]}}', "/targets/include/0", "at most 1000 characters"),
    ('{"version": 1, "mtl": {"num_timesteps": 4097}}', "/mtl/num_timesteps", "<= 4096"),
    ('{"version": 1, "mtl": {"clustering": {"k": 101}}}', "/mtl/clustering/k", "<= 100"),
    ('{"version": 1, "mtl": {"pcgrad": {"seed": 1e30}}}', "/mtl/pcgrad/seed", "<= 18446744073709551615"),
]


@pytest.mark.parametrize("text,pointer,expected", REJECT_TEXT, ids=[f"{r[1]}:{r[2][:30]}" for r in REJECT_TEXT])
def test_json_text_is_rejected_at_its_pointer_on_one_short_line(tmp_path, text, pointer, expected):
    f = tmp_path / "spec.json"
    f.write_text(text)
    sources = [f, text] if text[:1] in "{[" else [f]  # other JSON text is taken as a file or preset name
    for source in sources:
        with pytest.raises(SpecError) as info:
            load_spec(source)
        message = str(info.value)
        assert info.value.pointer == ("" if pointer == "/" else pointer), message
        assert expected in message and "\n" not in message and len(message) < 300


@pytest.mark.parametrize("value,expected", [
    (float("nan"), "expected a finite number, got nan"),
    (float("inf"), "expected a finite number, got inf"),
    (object(), "expected a JSON value, got a object"),
    ({1: 2}, "expected a string key, got a int"),
])
def test_dict_specs_hold_plain_finite_json(value, expected):
    with pytest.raises(SpecError, match=f"^spec /routing/channel_ratio(/1)?: {expected}"):
        load_spec({"version": 1, "routing": {"channel_ratio": value}})


def test_a_cyclic_dict_is_a_depth_error_not_a_recursion_error():
    doc = {"version": 1, "description": []}
    doc["description"].append(doc)
    with pytest.raises(SpecError, match="nested too deeply"):
        load_spec(doc)


def test_tuples_and_numpy_numbers_are_json_values():
    np = pytest.importorskip("numpy")
    spec = load_spec({"version": 1, "timestep": {"range": (np.float32(0.5), 10), "num_tasks": np.int64(11)}})
    assert (spec.timestep.t0, spec.timestep.t1, spec.timestep.num_tasks) == (0.5, 10.0, 11)


@pytest.mark.parametrize("doc", [
    {"version": 1, "routing": {"channel_ratio": "x" * 10_000_000}},
    {"version": 1, "y" * 10_000_000: 1},
    {"version": 1, "routing": {"mode": ["block"] * 1_000_000}},
])
def test_huge_invalid_values_are_echoed_as_a_short_preview(doc):
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    assert len(str(info.value)) < 300 and "chars)" in str(info.value)


@pytest.mark.parametrize("data,expected", [
    (b'{"version": 1, "description": "caf\xe9"}', r"not UTF-8 at byte 34 \(b'\\xe9'\)"),
    (b'\xff\xfe{"version": 1}', "not UTF-8 at byte 0"),
    (b'{"version": 1, "description": "a\x00b"}', "malformed JSON: Invalid control character"),
    (b'{"version": 1}\x00', "malformed JSON: Extra data"),
    (b'{"version": 1, "description": "' + b"a" * (1 << 20) + b'"}', "a spec is at most 1048576 bytes"),
])
def test_bad_bytes_in_a_spec_file_are_one_line(tmp_path, data, expected):
    f = tmp_path / "spec.json"
    f.write_bytes(data)
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(f)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_a_utf8_bom_and_non_ascii_text_are_read(tmp_path):
    f = tmp_path / "spec.json"
    f.write_bytes('\ufeff{"version": 1, "description": "β = 0.8, café"}'.encode())
    assert load_spec(f).description == "β = 0.8, café"


def test_a_spec_path_that_never_ends_is_cut_at_the_bound():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(SpecError, match="over 1048576 bytes"):
        load_spec(Path("/dev/zero"))


@pytest.mark.parametrize("path", ["a\x00b.json", "x" * 5000 + ".json", "/"])
def test_unreadable_path_names_are_one_line(path):
    with pytest.raises(SpecError) as info:
        load_spec(Path(path))
    assert "cannot read" in str(info.value) and len(str(info.value)) < 300


# -- sources: a JSON string, a preset name, the wrong type -------------------------------------

@pytest.mark.parametrize("doc", ACCEPT + ["dit-paper", "adm", "uvit"])
def test_a_specs_json_round_trips_through_load_spec(doc):
    spec = load_spec(doc)
    assert load_spec(spec.to_json()) == spec
    assert load_spec(json.dumps(spec.to_dict(), indent=2)) == spec


def test_presets_are_addressed_by_name_and_are_the_shipped_files():
    from dtrsurgeon.spec.document import preset_names, preset_path

    assert preset_names() == ["adm", "dit-paper", "uvit"]
    for name in preset_names():
        path = preset_path(name)
        assert path.parent.name == "presets" and path.parent.parent == REPO / "dtrsurgeon" / "spec"
        assert load_spec(name) == load_spec(path) == load_spec(f"{name}.json") == load_spec(json.loads(path.read_text()))
    assert load_spec("adm").mode == "pre_output" and load_spec("dit-paper").include == ("blocks.*",)


def test_a_file_in_the_working_directory_wins_over_a_preset(tmp_path, monkeypatch):
    (tmp_path / "adm").write_text('{"version": 1, "routing": {"channel_ratio": 0.5}}')
    monkeypatch.chdir(tmp_path)
    assert load_spec("adm").routing.channel_ratio == 0.5


def test_an_unknown_name_lists_the_presets():
    with pytest.raises(SpecError, match=r"^spec /: no spec file or preset named \"dit\"; presets: adm, dit-paper, uvit$"):
        load_spec("dit")


@pytest.mark.parametrize("bad", [None, 3, b'{"version": 1}', ["dit-paper"]])
def test_load_spec_refuses_other_types_naming_the_argument(bad):
    with pytest.raises(TypeError, match=r"^load_spec: spec must be a path, a preset name, a JSON string, a dict or a Spec"):
        load_spec(bad)


def test_cli_takes_a_preset_name_and_an_unknown_one_is_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "uvit"]) == 0
    assert "uvit: ok" in capsys.readouterr().out
    assert main(["validate", "dit_paper"]) == 2
    err = capsys.readouterr().err
    assert err == 'dtrsurgeon validate: error: spec /: no spec file or preset named "dit_paper"; presets: adm, dit-paper, uvit\n'


# -- mask_table and task_index check their arguments ---------------------------------------------

@pytest.mark.parametrize("channels,error,needle", [
    (2.5, TypeError, "channels must be a positive int, got float 2.5"),
    (True, TypeError, "channels must be a positive int, got bool"),
    ("64", TypeError, "channels must be a positive int, got str"),
    (0, ValueError, "channels must be a positive int, got 0"),
    (-3, ValueError, "channels must be a positive int, got -3"),
])
def test_mask_table_refuses_a_width_that_is_not_a_positive_int(channels, error, needle):
    with pytest.raises(error, match=f"^{needle}"):
        dtrsurgeon.mask_table("dit-paper", channels)


def test_mask_table_takes_integer_like_widths():
    np = pytest.importorskip("numpy")
    assert dtrsurgeon.mask_table("dit-paper", np.int64(12)).shape == (1000, 12)


def test_mask_table_refuses_more_cells_than_the_bound_naming_the_largest_n():
    from dtrsurgeon.masks import MAX_TABLE_CELLS

    spec = {"version": 1, "timestep": {"num_tasks": 10000}}
    assert dtrsurgeon.mask_table(spec, MAX_TABLE_CELLS // 10000).shape == (10000, MAX_TABLE_CELLS // 10000)
    with pytest.raises(SpecError, match=rf"^spec /timestep/num_tasks: 10000 tasks x 4000 channels .* num_tasks <= {MAX_TABLE_CELLS // 4000}\)$"):
        dtrsurgeon.mask_table(spec, 4000)


def test_task_index_refuses_what_is_not_a_timestep_map():
    import torch

    spec = load_spec("dit-paper")
    t = torch.tensor([0, 999])
    assert dtrsurgeon.task_index(t, spec).tolist() == dtrsurgeon.task_index(t, spec.timestep).tolist() == [0, 999]
    with pytest.raises(TypeError, match=r"^task_index: tmap must be a TimestepMap \(spec.timestep\) or a Spec, got dict$"):
        dtrsurgeon.task_index(t, {"num_tasks": 1000})
    with pytest.raises(TypeError, match=r"^task_index: t must be a tensor of timesteps, got str"):
        dtrsurgeon.task_index("500", spec.timestep)


def test_the_presets_ship_as_package_data():
    import fnmatch
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dtrsurgeon"]
    from dtrsurgeon.spec.document import preset_names

    for name in preset_names():
        assert any(fnmatch.fnmatch(f"spec/presets/{name}.json", g) for g in globs), (name, globs)
    assert not (REPO / "specs").exists()  # one copy of each preset: the package's
