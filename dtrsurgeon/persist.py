"""Save a routed model with its routing, and rebuild it from what was saved (the PEFT
``adapter_config.json`` convention).

    >>> dtrsurgeon.save_pretrained(routed, "ckpt")       # ckpt/model.safetensors + ckpt/dtr_config.json   # doctest: +SKIP
    >>> again = dtrsurgeon.from_pretrained(DiT_S_2, "ckpt")                                                 # doctest: +SKIP

``dtr_config.json`` holds the spec, the plan, the format and tool versions, the sha256 of every
source file the plan edits and the shape of every state_dict entry.  Loading routes the model
from the saved plan without capturing it again when the architecture and the sources match; when
a source file changed (another library version) the model is captured again with the saved spec
and must give the same units.  A diffusers (or transformers) model's own ``save_pretrained``
writes ``dtr_config.json`` too, and marks its ``config.json`` so that a plain
``UNet2DModel.from_pretrained`` of the directory warns that it loads the model unrouted.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

from torch import nn

from dtrsurgeon.emit.module import apply_plan, refuse_routed
from dtrsurgeon.errors import CheckpointError
from dtrsurgeon.lifecycle import routed_root
from dtrsurgeon.plan import Plan
from dtrsurgeon.spec import Spec, load_spec

logger = logging.getLogger(__name__)

CONFIG_NAME = "dtr_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "dtrsurgeon-routing"
FORMAT_VERSION = 1
# the key a routed library model's config.json gains: diffusers warns about keys its class does not
# take ("The config attributes {'dtrsurgeon_routing': ...} were passed to UNet2DModel, but are not expected")
CONFIG_KEY = "dtrsurgeon_routing"
CONFIG_NOTE = ("this model was saved routed by dtrsurgeon; loaded without dtrsurgeon it is NOT routed: "
               "load it with dtrsurgeon.from_pretrained({cls}, directory)")

PathLike = Union[str, "os.PathLike[str]"]


def save_pretrained(model: nn.Module, directory: PathLike) -> None:
    """Write ``model``'s weights and ``dtr_config.json`` to ``directory``.

    A model with its own ``save_pretrained`` (diffusers, transformers) saves through it (its
    routed class adds ``dtr_config.json``); any other module is saved as ``model.safetensors``.
    """
    root = routed_root(model, "save_pretrained")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_pretrained(): directory must be a path, got {type(directory).__name__}")
    if callable(getattr(type(root), "save_pretrained", None)):
        root.save_pretrained(directory)
        return
    save_model = _safetensors("save_model")
    os.makedirs(directory, exist_ok=True)
    save_model(root, os.path.join(directory, WEIGHTS_NAME))
    write_routing(root, directory)


def write_routing(model: nn.Module, directory: PathLike) -> None:
    """Write ``dtr_config.json`` for the routed ``model`` (and mark a library ``config.json``)."""
    from dtrsurgeon import __version__

    plan: Plan = model.dtr_plan
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtrsurgeon_version": __version__,
        "model": plan.model,
        "spec": model.dtr_spec.to_dict() if model.dtr_spec is not None else None,
        "plan": plan.to_dict(),
        "sources": {file: _sha256(file) for file in plan_files(plan)},
        "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
    }
    Path(directory, CONFIG_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    library_config = Path(directory, "config.json")
    if library_config.is_file():
        config = json.loads(library_config.read_text())
        if isinstance(config, dict):
            config[CONFIG_KEY] = CONFIG_NOTE.format(cls=plan.model.rsplit(".", 1)[-1])
            library_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_routing(directory: PathLike) -> dict[str, Any] | None:
    """The saved ``dtr_config.json`` of ``directory``, checked; None when there is none."""
    path = Path(directory, CONFIG_NAME)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dtrsurgeon routing file (no \"format\": \"{FORMAT}\")")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {doc.get('format_version')!r} is not supported "
                              f"(this dtrsurgeon reads {FORMAT_VERSION})")
    return doc


def from_pretrained(model_or_class: nn.Module | Callable[..., nn.Module], directory: PathLike, *,
                    example_inputs: Any = None, default: tuple[Plan, Spec] | None = None, **kwargs: Any) -> nn.Module:
    """Rebuild the routed model saved in ``directory`` by :func:`save_pretrained`.

    ``model_or_class``: a library class with ``from_pretrained`` (``UNet2DModel``: ``kwargs`` go to
    it), another class or factory (called with ``kwargs``), or a model instance; the weights are
    loaded into it and it is routed as saved.  ``example_inputs`` is used only when the sources
    changed since saving and the model must be captured again.  ``default``: the (plan, spec) to
    route with when the directory holds no ``dtr_config.json`` (a routed class loading a vanilla
    checkpoint); without it that is an error.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"from_pretrained(): directory must be a path, got {type(directory).__name__}")
    doc = read_routing(directory)
    if doc is None and default is None:
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; it was not saved by dtrsurgeon.save_pretrained "
                              "(a vanilla checkpoint: load it, then dtrsurgeon.transform(model, spec))")
    model, loaded = _model(model_or_class, directory, kwargs)
    if doc is None:
        plan, spec = default
    else:
        try:
            plan = Plan.from_dict(doc["plan"])
        except ValueError as e:
            raise CheckpointError(f"{Path(directory, CONFIG_NAME)}: {e}") from None
        spec = load_spec(doc["spec"]) if doc["spec"] is not None else None
        check_architecture(model, plan, doc["shapes"], directory)
    if not loaded:
        _load_safetensors(model, directory)
    if doc is not None and any(_sha256(file) != digest for file, digest in doc["sources"].items()):
        plan = _replan(model, plan, spec, example_inputs, directory)
    return apply_plan(model, plan, spec, inplace=True)


def _model(model_or_class, directory: PathLike, kwargs: dict) -> tuple[nn.Module, bool]:
    """(the unrouted model, whether its weights are loaded): a library class loads them itself."""
    if isinstance(model_or_class, type):  # a routed class loads as its original, then is routed
        model_or_class = getattr(model_or_class, "_dtr_base", model_or_class)
    if isinstance(model_or_class, nn.Module):
        model = model_or_class
    elif isinstance(model_or_class, type) and callable(getattr(model_or_class, "from_pretrained", None)):
        with _without_marker_warning():
            model = model_or_class.from_pretrained(directory, **kwargs)
        _drop_marker(model)
        return model, True
    elif callable(model_or_class):
        model = model_or_class(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"from_pretrained(): {getattr(model_or_class, '__name__', model_or_class)}() returned "
                            f"{type(model).__name__}, not a torch.nn.Module")
    else:
        raise TypeError("from_pretrained(): model_or_class must be a torch.nn.Module, a module class or a "
                        f"factory, got {type(model_or_class).__name__}")
    refuse_routed(model)
    return model, False


def _load_safetensors(model: nn.Module, directory: PathLike) -> None:
    load_model = _safetensors("load_model")
    weights = Path(directory, WEIGHTS_NAME)
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}; a directory saved by a library's save_pretrained "
                              f"loads through its class: dtrsurgeon.from_pretrained({type(model).__name__}, directory)")
    load_model(model, str(weights), strict=True)


def _safetensors(name: str) -> Callable[..., Any]:
    """``safetensors.torch.<name>``; an optional dependency, so its absence is one line saying how to add it."""
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("saving or loading a routed plain torch module needs safetensors: "
                          "pip install 'dtrsurgeon[persist]' (or pip install safetensors)") from None
    return getattr(safetensors.torch, name)


@contextlib.contextmanager
def _without_marker_warning() -> Iterator[None]:
    """Drop diffusers' "config attributes ... not expected" warning about our own config.json key."""
    class DropMarker(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return CONFIG_KEY not in record.getMessage()

    drop = DropMarker()
    target = logging.getLogger("diffusers.configuration_utils")
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def _drop_marker(model: nn.Module) -> None:
    """diffusers keeps unexpected config keys in ``model.config``: drop ours, so that saving the model
    after ``unroute`` does not mark it routed."""
    internal = getattr(model, "_internal_dict", None)
    if isinstance(internal, Mapping) and CONFIG_KEY in internal:
        model._internal_dict = type(internal)({k: v for k, v in internal.items() if k != CONFIG_KEY})


def check_architecture(model: nn.Module, plan: Plan, shapes: dict[str, list[int]], directory: PathLike) -> None:
    """The model is the one the plan was made for: root class, unit paths and classes, and the
    shape of every state_dict entry (so every width); the first difference is a CheckpointError."""
    cls = type(model)
    name = f"{cls.__module__}.{cls.__qualname__}"
    where = f"{directory}: saved for {plan.model.rsplit('.', 1)[-1]}"
    if name != plan.model:
        raise CheckpointError(f"{where}: the routing was saved for {plan.model}, not {name}")
    named = dict(model.named_modules())
    for unit in plan.units:
        module = named.get(unit.path)
        if module is None:
            raise CheckpointError(f"{where}: routed unit {unit.path!r} is not a module of this model")
        found = f"{type(module).__module__}.{type(module).__qualname__}"
        if found != unit.cls:
            raise CheckpointError(f"{where}: unit {unit.path!r} was {unit.cls}, this model has {found}")
    ours = {k: list(t.shape) for k, t in model.state_dict().items()}
    for key in sorted(set(shapes) | set(ours)):
        if key not in ours:
            raise CheckpointError(f"{where}: {key!r} (shape {shapes[key]}) is not in this model")
        if key not in shapes:
            raise CheckpointError(f"{where}: this model's {key!r} (shape {ours[key]}) was not saved")
        if shapes[key] != ours[key]:
            raise CheckpointError(f"{where}: {key!r} has shape {ours[key]} here, {shapes[key]} when saved")


def _replan(model: nn.Module, saved: Plan, spec: Spec, example_inputs, directory: PathLike) -> Plan:
    """A source file changed since saving: capture again with the saved spec; the units must agree."""
    from dtrsurgeon.analysis.units import build_plan

    logger.info("%s: source files of %s changed since saving; capturing it again with the saved spec",
                directory, saved.model)
    fresh = build_plan(model, spec, example_inputs)

    def shape(u):
        return (u.path, u.cls, u.mode, u.channel_axis, u.channels, u.active)

    for a, b in itertools.zip_longest([shape(u) for u in saved.units], [shape(u) for u in fresh.units]):
        if a != b:
            raise CheckpointError(f"{directory}: the model's code changed since saving and routes differently: "
                                  f"saved unit {a}, now {b}")
    return fresh


def plan_files(plan: Plan) -> list[str]:
    """Every source file the plan names (whose edits the routed model runs)."""
    files: set[str] = {file for _, file, _ in plan.passthrough}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("file"), str):
                files.add(value["file"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(plan.to_dict())
    return sorted(files)


def _sha256(file: str) -> str | None:
    try:
        return hashlib.sha256(Path(file).read_bytes()).hexdigest()
    except OSError:
        return None
