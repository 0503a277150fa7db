"""MODEL as a library target, ``pkg.module:Class``, and the one-file output for library models.

    $ dtrsurgeon apply dit-paper.json diffusers.models.transformers.dit_transformer_2d:DiTTransformer2DModel \\
          --kwargs '{"num_layers": 2, "sample_size": 8, "num_embeds_ada_norm": 10}'
    wrote dit_transformer_2d_dtr.py

The class (or factory) is imported and called with ``--kwargs``; a diffusers class is built with
``Class.from_config(kwargs)``, so a model's ``config.json`` works as it is.  A model whose routed code
is installed or spans several files gets one file of subclasses and ``route(model)``
(:mod:`dtrsurgeon.emit.library`), written to the current folder by default.
"""

from __future__ import annotations

import importlib
import re
import sysconfig
from pathlib import Path

from torch import nn

from dtrsurgeon.cli._model import ModelFileError, parse_kwargs

_TARGET = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def is_library_target(model: str) -> bool:
    """``pkg.module:Class`` rather than a model file."""
    return _TARGET.fullmatch(model) is not None and not Path(model).exists()


def _is_config_class(factory) -> bool:
    """diffusers models (``ConfigMixin``) are built from their config: ``Class.from_config(kwargs)``."""
    return isinstance(factory, type) and any(c.__name__ == "ConfigMixin" for c in factory.__mro__)


def resolve_target(target: str):
    """The class or factory ``pkg.module:Name`` names."""
    found = _TARGET.fullmatch(target)
    module_name, attr = found["module"], found["attr"]
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ModelFileError(f"{target}: cannot import {module_name}: {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                       and v.__module__ == module.__name__)
        raise ModelFileError(f"{target}: no {attr!r} in {module_name}; nn.Module classes there: {', '.join(names) or 'none'}")
    return obj


def build_target(target: str, kwargs_json: str | None) -> nn.Module:
    """The model ``pkg.module:Class`` builds from ``--kwargs`` (random weights: the plan needs shapes only)."""
    factory = resolve_target(target)
    kwargs = parse_kwargs(kwargs_json)
    try:
        model = factory.from_config(kwargs) if _is_config_class(factory) else factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{target}(**{kwargs_json or '{}'}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{target}(...) returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def _installed(file: Path) -> bool:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(file.resolve().is_relative_to(Path(p).resolve()) for p in paths)


def default_output(model: str) -> Path:
    """``<stem>_dtr.py`` beside a model file, or in the current folder for a library target or an
    installed file (site-packages is no place for it)."""
    if is_library_target(model):
        return Path(f"{model.split(':')[0].rsplit('.', 1)[-1]}_dtr.py")
    path = Path(model)
    return Path(f"{path.stem}_dtr.py") if _installed(path) else path.with_name(f"{path.stem}_dtr.py")


def generate_library(spec_path, target: str, entry: str | None, kwargs_json: str | None, example_inputs=None) -> str:
    """The file ``apply SPEC pkg.module:Class`` writes (and ``check`` compares)."""
    from dtrsurgeon.analysis.units import build_plan
    from dtrsurgeon.spec import load_spec

    attr = target.split(":", 1)[1]
    if entry not in (None, attr):
        raise ModelFileError(f"--entry {entry}: MODEL {target} names its class already; leave --entry out")
    spec = load_spec(spec_path)
    model = build_target(target, kwargs_json)
    plan = build_plan(model, spec, example_inputs)
    return emit_library_file(model, plan, spec_path, target, "", attr, kwargs_json)


def emit_library_file(model: nn.Module, plan, spec_path, model_name: str, input_sha256: str, entry: str,
                      kwargs_json: str | None) -> str:
    """The library file for ``model`` (built from ``model_name``: a target or a model file's name)."""
    import json

    from dtrsurgeon.emit.library import LibraryHeader, emit_library
    from dtrsurgeon.emit.source import sha256_of, spec_bytes

    spec_name, spec_data = spec_bytes(spec_path)
    kwargs = json.dumps(parse_kwargs(kwargs_json), sort_keys=True)
    header = LibraryHeader(model_name, input_sha256, spec_name, sha256_of(spec_data), entry, kwargs)
    return emit_library(model, plan, header)


def refuse_in_place(model: str, text: str | None = None) -> None:
    """``--in-place`` needs a file the routing rewrites alone; a library file is a new file."""
    from dtrsurgeon.emit.library import is_library_file

    if is_library_target(model) or (text is not None and is_library_file(text)):
        why = "is a library class" if is_library_target(model) else "spans several files"
        raise ModelFileError(f"--in-place: {model} {why}; `apply` writes a separate file of subclasses "
                             f"(default {default_output(model)}, or -o FILE)")
