"""Build a model from a Python file: ``--entry NAME [--kwargs JSON]``.

The file is imported under its own name with its folder on ``sys.path`` (so
its sibling imports work).  ``NAME`` is a class or a factory function.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from torch import nn

from dtrsurgeon.errors import DtrSurgeonError


class ModelFileError(DtrSurgeonError):
    """The model file, its entry or its arguments are unusable."""


def _importable_name(file: Path) -> str | None:
    """The dotted name under which ``file`` is already importable, if any
    (``model_zoo/dit.py`` -> ``model_zoo.dit``), so classes keep one identity."""
    parts = file.with_suffix("").parts
    for start in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[start:])
        if not all(p.isidentifier() for p in parts[start:]):
            break
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if found is not None and found.origin and Path(found.origin).resolve() == file:
            return name
    return None


def _package_name(file: Path) -> str | None:
    """For a file inside a package (``guided_diffusion/unet.py`` with relative imports): put the
    package's parent folder on ``sys.path`` and return the dotted name."""
    top = file.parent
    if not (top / "__init__.py").exists():
        return None
    while (top.parent / "__init__.py").exists():
        top = top.parent
    parts = file.relative_to(top.parent).with_suffix("").parts
    if not all(p.isidentifier() for p in parts):
        return None
    if str(top.parent) not in sys.path:
        sys.path.insert(0, str(top.parent))
    return ".".join(parts)


def import_file(path: str):
    file = Path(path).resolve()
    if not file.is_file():
        raise ModelFileError(f"{path}: no such file")
    name = _importable_name(file) or _package_name(file)
    try:
        if name is not None:
            return importlib.import_module(name)
        name = file.stem
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None:
            raise ModelFileError(f"{path}: not a Python source file (expected NAME.py)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(file.parent))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            sys.path.remove(str(file.parent))
        return module
    except ModelFileError:
        raise
    except SyntaxError as e:
        raise ModelFileError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise ModelFileError(f"{path}: importing it failed: {type(e).__name__}: {e}") from None


def parse_kwargs(kwargs_json: str | None) -> dict:
    """``--kwargs``: a JSON object of keyword arguments (none: ``{}``)."""
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise ModelFileError(f"--kwargs: malformed JSON at column {e.colno}: {e.msg}") from None
    if not isinstance(kwargs, dict):
        raise ModelFileError("--kwargs: expected a JSON object of keyword arguments")
    return kwargs


def build_model(path: str, entry: str, kwargs_json: str | None) -> nn.Module:
    module = import_file(path)
    factory = getattr(module, entry, None)
    if factory is None:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                       and v.__module__ == module.__name__)
        raise ModelFileError(f"{path}: no {entry!r} in this file; nn.Module classes here: {', '.join(names) or 'none'}")
    kwargs = parse_kwargs(kwargs_json)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: {entry}(**{kwargs_json or '{}'}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{path}: {entry}(...) returned {type(model).__name__}, not an nn.Module")
    return model
