"""Load and validate a spec document.

A spec is read into plain JSON by :mod:`dtrsurgeon.spec.document` (finite
numbers, unique keys, bounded depth), then checked by jsonschema against
``routing.schema.json`` (and, for the ``mtl`` section,
``dtrsurgeon/mtl/mtl.schema.json``), then by the rules a schema cannot express
(``t0 < t1``, a monotone ``table`` curve).  Every failure is one line, a
:class:`~dtrsurgeon.errors.SpecError` naming the JSON pointer::

    >>> load_spec({"version": 1, "routing": {"channel_ratio": 1.5}})
    Traceback (most recent call last):
    dtrsurgeon.errors.SpecError: spec /routing/channel_ratio: expected a number <= 1, got 1.5
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from typing import Any, Mapping

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from dtrsurgeon.errors import SpecError
from dtrsurgeon.spec.document import pointer, preview, quote_key, read_document
from dtrsurgeon.spec.model import (
    DEFAULT_ALPHA,
    DEFAULT_CHANNEL_RATIO,
    DEFAULT_NUM_TASKS,
    MaskParams,
    Override,
    Spec,
    TaskWeights,
    TimestepMap,
)

# t1 - t0 below this cannot be told apart in float32 timesteps, and (N-1)/(t1-t0) must stay finite.
MIN_RANGE_WIDTH = 1e-6


@functools.cache
def spec_schema() -> dict[str, Any]:
    """The JSON Schema of spec v1, with the ``mtl`` section's schema inlined."""
    schema = json.loads(resources.files("dtrsurgeon.spec").joinpath("routing.schema.json").read_text())
    mtl_schema = resources.files("dtrsurgeon.mtl").joinpath("mtl.schema.json")
    if mtl_schema.is_file():
        schema["properties"]["mtl"] = json.loads(mtl_schema.read_text())
    return schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(spec_schema())


def _describe(error: ValidationError) -> tuple[str, str]:
    """(pointer, message) for a jsonschema error, in the user's words, echoing at most a short preview."""
    ptr = pointer(error.absolute_path)
    v, inst, sch = error.validator, error.instance, error.validator_value
    if v == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in inst if k not in allowed)
        return pointer((*error.absolute_path, extra[0])), f"unknown key {quote_key(extra[0])}; expected one of: {', '.join(allowed)}"
    if v == "required":
        missing = [k for k in sch if k not in inst]
        return ptr, f"missing required key {missing[0]!r}"
    if v == "enum":
        return ptr, f"expected one of {', '.join(map(json.dumps, sch))}, got {preview(inst)}"
    if v == "const":
        return ptr, f"expected {json.dumps(sch)}, got {preview(inst)}"
    if v == "type":
        return ptr, f"expected {sch if isinstance(sch, str) else ' or '.join(sch)}, got {preview(inst)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if v in bounds:
        kind = "an integer" if error.schema.get("type") == "integer" else "a number"
        bound = sch if isinstance(sch, int) else f"{sch:g}"
        return ptr, f"expected {kind} {bounds[v]} {bound}, got {preview(inst)}"
    if v in ("minItems", "maxItems"):
        return ptr, f"expected {'at least' if v == 'minItems' else 'at most'} {sch} items, got {len(inst)}"
    if v == "minLength":
        return ptr, "expected a non-empty string"
    if v == "maxLength":
        return ptr, f"expected a string of at most {sch} characters, got {len(inst)}"
    return ptr, preview(error.message, 200)


def _timestep_map(ts: Mapping[str, Any]) -> TimestepMap:
    """The ``timestep`` section, with the range rules the schema cannot state."""
    n = int(ts.get("num_tasks", DEFAULT_NUM_TASKS))
    t0, t1 = (float(v) for v in ts.get("range", [0, n - 1]))
    if not t0 < t1:
        raise SpecError("/timestep/range", f"expected t0 < t1, got [{t0:g}, {t1:g}]")
    if t1 - t0 < MIN_RANGE_WIDTH:
        raise SpecError("/timestep/range", f"expected t1 - t0 >= {MIN_RANGE_WIDTH:g}, got [{t0:g}, {t1:g}]")
    return TimestepMap(arg=ts.get("arg"), num_tasks=n, t0=t0, t1=t1, reverse=bool(ts.get("reverse", False)))


def _task_weights(d: Mapping[str, Any] | None, base: TaskWeights, ptr: str) -> TaskWeights:
    if d is None:
        return base
    if d["curve"] == "table":
        points = tuple((float(u), float(w)) for u, w in d["points"])
        us = [u for u, _ in points]
        ws = [w for _, w in points]
        if us[0] != 0.0 or us[-1] != 1.0:
            raise SpecError(f"{ptr}/points", f"expected the first point at u=0 and the last at u=1, got u={us[0]} and u={us[-1]}")
        for i in range(1, len(points)):
            if us[i] <= us[i - 1]:
                raise SpecError(f"{ptr}/points/{i}", f"expected u to increase, got {us[i]} after {us[i - 1]}")
            if ws[i] < ws[i - 1]:
                raise SpecError(f"{ptr}/points/{i}", f"expected a non-decreasing curve, got w={ws[i]} after {ws[i - 1]}")
        return TaskWeights(curve="table", points=points)
    return TaskWeights(curve=d["curve"], alpha=float(d.get("alpha", DEFAULT_ALPHA)))


def load_spec(source: str | os.PathLike | Mapping[str, Any] | Spec) -> Spec:
    """Validate ``source`` into a :class:`Spec`.

    ``source`` is a path to a JSON file, a preset name (``"dit-paper"``,
    ``"adm"``, ``"uvit"``: the files in ``dtrsurgeon/spec/presets``), a JSON
    string (``load_spec(spec.to_json()) == spec``), a dict, or a Spec (returned
    as is).  Omitted values take the paper's DiT setting: ``channel_ratio`` 0.8,
    power curve with ``alpha`` 4, sliding windows, ``num_tasks`` 1000, ``range``
    [0, 999], ``arg`` found among the usual names, mode "block".
    """
    if isinstance(source, Spec):
        return source
    if not isinstance(source, (str, os.PathLike, Mapping)):
        raise TypeError(f"load_spec: spec must be a path, a preset name, a JSON string, a dict or a Spec, "
                        f"got {type(source).__name__}")
    doc = read_document(source)
    error = best_match(_validator().iter_errors(doc))
    if error is not None:
        raise SpecError(*_describe(error))
    return _build(doc)


def _build(doc: Mapping[str, Any]) -> Spec:
    """The Spec of a schema-valid document, defaults filled in."""
    timestep = _timestep_map(doc.get("timestep", {}))
    r = doc.get("routing", {})
    base = MaskParams(
        channel_ratio=float(r.get("channel_ratio", DEFAULT_CHANNEL_RATIO)),
        window_shift=r.get("window_shift", "sliding"),
        task_weights=_task_weights(r.get("task_weights"), TaskWeights(), "/routing/task_weights"),
        num_tasks=timestep.num_tasks,
        seed=int(r.get("seed", 0)),
    )
    overrides = tuple(
        Override(
            match=o["match"],
            channel_ratio=None if "channel_ratio" not in o else float(o["channel_ratio"]),
            window_shift=o.get("window_shift"),
            task_weights=None if "task_weights" not in o else _task_weights(o["task_weights"], TaskWeights(), f"/overrides/{i}/task_weights"),
        )
        for i, o in enumerate(doc.get("overrides", []))
    )
    targets = doc.get("targets", {})
    return Spec(
        timestep=timestep,
        sample=doc.get("sample", {}).get("arg"),
        routing=base,
        mode=r.get("mode", "block"),
        streams=r.get("streams", "sample"),
        include=tuple(targets.get("include", ())),
        exclude=tuple(targets.get("exclude", ())),
        overrides=overrides,
        description=doc.get("description", ""),
        mtl=doc.get("mtl"),
    )
