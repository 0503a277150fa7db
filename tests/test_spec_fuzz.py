"""Property test: a valid spec broken at any one place is one short SpecError line naming where.

Each example takes a valid spec, picks one leaf or object in it, and breaks it in one way: a
non-finite or over-wide number, a value of the wrong JSON type, an unknown or duplicate key, nesting
thousands of levels deep, or bytes that are not UTF-8.  The spec then goes to ``load_spec`` (as
text, and as a file) and through the CLI (``validate``, and ``apply -o``) in-process.  Every time:
a ``SpecError`` whose message is one line, short, and names a pointer at or above the broken
place; exit code 2 with one line on stderr; and no file written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtrsurgeon import SpecError, load_spec
from dtrsurgeon.cli import main

REPO = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 400  # a pointer and a value cut to 60 characters each, plus the schema's own list of keys
HOLE = "\u0000HOLE"  # a string no valid spec holds: where the raw mutation text goes

VALID = [
    {
        "version": 1,
        "description": "every field",
        "timestep": {"arg": "t", "num_tasks": 1000, "range": [0, 999], "reverse": False},
        "routing": {"channel_ratio": 0.8, "window_shift": "sliding", "mode": "block", "seed": 0,
                    "task_weights": {"curve": "power", "alpha": 4.0}},
        "targets": {"include": ["blocks.*"], "exclude": ["blocks.0"]},
        "overrides": [{"match": "blocks.1*", "channel_ratio": 0.5, "window_shift": "fixed",
                       "task_weights": {"curve": "table", "points": [[0, 0], [0.5, 0.2], [1, 1]]}}],
    },
    {
        "version": 1,
        "mtl": {"num_timesteps": 500, "schedule": "cosine", "prediction": "v",
                "clustering": {"cost": "log_snr", "k": 4, "convention": "exact"},
                "weighting": "nash", "sampler": "balanced", "min_snr_gamma": 5.0,
                "uw": {"lr": 0.025, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "init_log_var": 0.0},
                "pcgrad": {"reduction": "mean", "seed": 1}, "nash": {"max_norm": 1.0, "update_every": 2}},
    },
]


def _places(value, path=()):
    """Every (path, value) in a document, objects and arrays included, the root left out."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield (*path, key), item
        yield from _places(item, (*path, key))


def _pointer(path) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _with_hole(doc, path):
    """A copy of ``doc`` with the value at ``path`` replaced by :data:`HOLE`."""
    doc = json.loads(json.dumps(doc))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = HOLE
    return doc


def _fill(doc, path, raw: str) -> str:
    """JSON text of ``doc`` with the raw text ``raw`` at ``path``."""
    return json.dumps(_with_hole(doc, path)).replace(json.dumps(HOLE), raw)


_TYPE_OF = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
_OF_TYPE = {"boolean": "true", "number": "7", "string": '"seven"', "array": '["x"]', "object": '{"x": 1}'}


@st.composite
def broken_specs(draw):
    """(bytes of a broken spec, pointer of the broken place, what was done)."""
    doc = draw(st.sampled_from(VALID))
    places = list(_places(doc))
    path, value = draw(st.sampled_from(places))
    kind = draw(st.sampled_from(["non_finite", "wide_int", "wrong_type", "unknown_key", "duplicate_key",
                                 "deep", "encoding"]))
    if kind == "non_finite":
        raw = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "2.5e308"]))
        return _fill(doc, path, raw).encode(), path, kind
    if kind == "wide_int":
        digits = draw(st.integers(41, 5000))
        return _fill(doc, path, draw(st.sampled_from(["", "-"])) + "9" * digits).encode(), path, kind
    if kind == "wrong_type":
        other = sorted(set(_OF_TYPE) - {_TYPE_OF[type(value)]})
        return _fill(doc, path, _OF_TYPE[draw(st.sampled_from(other))]).encode(), path, kind
    if kind == "deep":
        depth = draw(st.one_of(st.integers(33, 200), st.integers(900, 20000)))
        return _fill(doc, path, "[" * depth + "]" * depth).encode(), path, kind
    objects = [()] + [p for p, v in places if isinstance(v, dict)]
    target = draw(st.sampled_from(objects))
    parent = doc
    for key in target:
        parent = parent[key]
    if kind == "unknown_key":
        key = draw(st.sampled_from(["zz", "channel ratio", "a/b~c", "x" * 100_000, "\u00e9t\u00e9"]))
        raw = json.dumps({**parent, key: 1})
        return (_fill(doc, target, raw) if target else raw).encode(), (*target, key), kind
    if kind == "duplicate_key":
        first = next(iter(parent))
        inner = json.dumps(parent)[1:-1]
        raw = "{" + inner + ", " + json.dumps(first) + ": " + json.dumps(parent[first]) + "}"
        return (_fill(doc, target, raw) if target else raw).encode(), (*target, first), kind
    text = json.dumps(doc).encode()
    at = draw(st.integers(0, len(text)))
    bad = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xe2\x82", b"\x80", b"\xed\xa0\x80"]))
    return text[:at] + bad + text[at:], (), kind


def _check_message(message: str, path, kind: str = "") -> None:
    assert "\n" not in message and len(message) <= MAX_MESSAGE, message
    assert message.startswith("spec /"), message
    named = message[len("spec "):].split(": ", 1)[0]
    full = _pointer(path)
    # the pointer names the broken place or an object above it (the schema may report the enclosing object);
    # long keys are cut to a preview ending in "..."
    named_parts, full_parts = named.strip("/").split("/"), full.strip("/").split("/")
    if kind == "deep":  # the depth error names the array 32 levels down, inside the broken place
        named_parts = named_parts[: len(full_parts)] if set(named_parts[len(full_parts):]) <= {"0"} else named_parts
    if named != "/":
        assert len(named_parts) <= len(full_parts), (named, full)
        for a, b in zip(named_parts, full_parts):
            assert a == b or (a.endswith("...") and b.startswith(a[:-3])), (named, full)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(broken_specs())
def test_a_spec_broken_anywhere_is_one_short_line_at_its_pointer(case):
    data, path, kind = case
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_bytes(data)
        with pytest.raises(SpecError) as info:
            load_spec(spec_file)
        _check_message(str(info.value), path, kind)
        if kind != "encoding":
            with pytest.raises(SpecError) as info:
                load_spec(data.decode())
            _check_message(str(info.value), path, kind)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(broken_specs())
def test_the_cli_exits_2_with_one_line_and_writes_nothing(case):
    data, path, kind = case
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_bytes(data)
        out = Path(tmp) / "out.py"
        for argv in (["validate", str(spec_file)],
                     ["apply", str(spec_file), str(REPO / "model_zoo" / "dit.py"), "--entry", "tiny_dit", "-o", str(out)]):
            err = _run_cli(argv)
            assert err.count("\n") == 1 and err.startswith(f"dtrsurgeon {argv[0]}: error: spec /"), err
            _check_message(err[len(f"dtrsurgeon {argv[0]}: error: "):].rstrip("\n"), path, kind)
        assert sorted(os.listdir(tmp)) == ["spec.json"]


def _run_cli(argv) -> str:
    """stderr of ``dtrsurgeon ARGV`` run in-process; the exit code must be 2."""
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 2, (argv, out.getvalue(), err.getvalue())
    return err.getvalue()


@pytest.mark.parametrize("text", ["[]", "[1, 2]", '"dit-paper"', "null", "true", "3", "", "   ", "{", "}"])
def test_documents_that_are_not_objects_are_one_line(tmp_path, text):
    f = tmp_path / "spec.json"
    f.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert info.value.pointer == "" and "\n" not in str(info.value)
