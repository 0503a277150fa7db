"""The two verbs: ``plan`` (a dry run) and ``transform`` (the routed module)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from typing import Any, Iterator, Mapping, TypeVar, Union

from torch import nn

from dtrsurgeon.analysis.units import build_plan
from dtrsurgeon.emit.module import apply_plan, refuse_routed
from dtrsurgeon.lifecycle import inner_model
from dtrsurgeon.plan import Plan
from dtrsurgeon.spec import Spec, load_spec

logger = logging.getLogger("dtrsurgeon")

M = TypeVar("M", bound=nn.Module)
SpecLike = Union[str, "os.PathLike[str]", Mapping[str, Any], Spec]
# (args, kwargs), a tuple or list of positional inputs, or a dict of keyword inputs
ExampleInputs = Union[tuple, list, dict, None]

PROGRESS_AFTER_S = 5.0  # a capture running longer than this logs a progress line


def plan(model: nn.Module, spec: SpecLike, example_inputs: ExampleInputs = None) -> Plan:
    """Analyse ``model`` and return what ``transform`` would do; changes nothing.

    ``example_inputs``: ``(args, kwargs)``, a tuple of positional inputs, or a
    dict of keyword inputs for one forward call.  Default: the model's own
    ``example_inputs()`` method, else inputs guessed from its forward signature.
    """
    check_arguments("plan", model, spec, example_inputs)
    return _build(inner_model(model), load_spec(spec), example_inputs)


def transform(model: M, spec: SpecLike, example_inputs: ExampleInputs = None, inplace: bool = False) -> M:
    """Return ``model`` with Denoising Task Routing compiled in.

    The result is the same kind of object (``isinstance`` holds, every method
    such as DiT's ``forward_with_cfg`` works, the forward signature is
    unchanged), with exactly the same parameters and ``state_dict()`` keys; the
    input is left untouched unless ``inplace``.  Each sample's timestep picks
    its own mask row.  The result carries ``dtr_spec`` and ``dtr_plan``.

        >>> routed = dtrsurgeon.transform(DiT_S_2(), "dit-paper")   # doctest: +SKIP
        >>> routed(x, t, y).shape == model(x, t, y).shape                       # doctest: +SKIP

    What ``inplace=False`` (the default) costs: the result is a ``copy.deepcopy`` of ``model``, so
    until the input is dropped its parameters and buffers are held twice (a
    12B backbone in bf16: 24 GB more) and copying takes time.  ``inplace=True`` routes ``model``
    itself and returns it; nothing else copies weights (the capture runs on fake tensors).  For a
    model too large to hold twice, or to plan without its weights at all, build it on the meta
    device, transform in place, then load the weights::

        with torch.device("meta"):
            model = FluxTransformer2DModel(**config)
        model = dtrsurgeon.transform(model, spec, meta_inputs, inplace=True)
        model.load_state_dict(state_dict, assign=True)

    Example inputs of a meta model must be meta tensors too (guessed ones are made on the model's
    device).  A wrapper (``PeftModel``, ``DistributedDataParallel``, ``DataParallel``,
    ``torch.compile``'s module) is returned as the same wrapper with the model inside routed; without
    ``inplace`` the wrapper is deep-copied first (``DistributedDataParallel`` cannot be: pass
    ``inplace=True``).
    """
    check_arguments("transform", model, spec, example_inputs)
    if not isinstance(inplace, bool):
        raise TypeError(f"transform(): inplace must be True or False, got {type(inplace).__name__}")
    spec = load_spec(spec)
    inner = inner_model(model)
    refuse_routed(inner)
    found = _build(inner, spec, example_inputs)
    if inner is model:
        return apply_plan(model, found, spec, inplace=inplace)
    if not inplace:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("transform(): a DistributedDataParallel model cannot be copied; pass inplace=True, "
                            "or transform the model before wrapping it")
        model = copy.deepcopy(model)
    apply_plan(inner_model(model), found, spec, inplace=True)
    return model


def check_arguments(verb: str, model: Any, spec: Any, example_inputs: Any) -> None:
    """One-line TypeErrors naming the argument, for the mistakes people make calling the verbs."""
    if not isinstance(model, nn.Module):
        if isinstance(spec, nn.Module):
            raise TypeError(f"{verb}(): arguments swapped: the model comes first, {verb}(model, spec); "
                            f"got {_preview(model)} as model and a {type(spec).__name__} as spec")
        hint = ("; to route a model file, run `dtrsurgeon apply SPEC MODEL_PY`"
                if isinstance(model, (str, os.PathLike)) else "")
        raise TypeError(f"{verb}(): model must be a torch.nn.Module, got {_preview(model)}{hint}")
    if not isinstance(spec, (str, os.PathLike, Mapping, Spec)):
        raise TypeError(f"{verb}(): spec must be a path, a JSON string, a dict or a dtrsurgeon.Spec, "
                        f"got {_preview(spec)}")
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list, dict)):
        raise TypeError(f"{verb}(): example_inputs must be (args, kwargs), a tuple of positional inputs or a "
                        f"dict of keyword inputs, got {_preview(example_inputs)}")


def _preview(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _build(model: nn.Module, spec: Spec, example_inputs: ExampleInputs) -> Plan:
    with _progress(type(model).__name__):
        found = build_plan(model, spec, example_inputs)
    logger.debug("planned %d routed units of %s", len(found.units), type(model).__name__)
    return found


@contextlib.contextmanager
def _progress(name: str) -> Iterator[None]:
    """Log a line when a capture is still running after PROGRESS_AFTER_S, and when it ends."""
    start = time.monotonic()
    timer = threading.Timer(PROGRESS_AFTER_S, logger.info, (
        "capturing %s with torch.export (large models take a minute) ...", name))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        elapsed = time.monotonic() - start
        if elapsed >= PROGRESS_AFTER_S:
            logger.info("captured and planned %s in %.1f s", name, elapsed)
