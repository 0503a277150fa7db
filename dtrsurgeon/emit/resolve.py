"""The live objects behind the names an edit plan holds.

An :class:`~dtrsurgeon.emit.editplan.EditPlan` names functions by (file, qualified name) and
classes by their dotted name; the emitters need the functions themselves (to compile a routed
copy with the original's globals and closure) and the parsed text of their files.  This is the
one place that finds them, from the model::

    functions_by_qualname(model)[("/src/dit.py", "DiTBlock.forward")]  -> <function DiTBlock.forward>
    forward_of(type(model.blocks[0]))                                   -> ("/src/dit.py", "DiTBlock.forward")
"""

from __future__ import annotations

import inspect
import os
import sys
from functools import lru_cache

import libcst as cst
from libcst.metadata import MetadataWrapper
import torch
from torch import nn

from dtrsurgeon.analysis.sources import absolute, require_source
from dtrsurgeon.errors import EmitError

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def parse_file(path: str, mtime: float | None = None) -> MetadataWrapper:  # noqa: ARG001 - kept for callers
    """The parsed text of ``path``: the file, or the notebook cell :mod:`linecache` holds for it."""
    return _parse_text(path, require_source(path, "cannot rewrite the model's code"))


@lru_cache(maxsize=64)
def _parse_text(path: str, source: str) -> MetadataWrapper:
    try:
        return MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError as e:
        raise EmitError(f"{path}:{e.raw_line}:{e.raw_column}: cannot parse: {e.message}") from None


def functions_by_qualname(model: nn.Module) -> dict[tuple[str, str], object]:
    """(file, qualname) -> function, over the MROs of all the model's classes, and the module-level
    functions of the files that define them (helpers such as ``checkpoint(fn, *args)``)."""
    found = {}
    modules = set()
    for module in model.modules():
        for cls in type(module).__mro__:
            modules.add(cls.__module__)
            for value in vars(cls).values():
                func = unwrapped(value)
                code = getattr(func, "__code__", None)
                if code is not None:
                    found.setdefault((absolute(code.co_filename), func.__qualname__), func)
    for name in modules - {"builtins"}:
        if name.split(".")[0] == "torch" or name not in sys.modules:
            continue
        for value in vars(sys.modules[name]).values():
            code = getattr(value, "__code__", None)
            if inspect.isfunction(value) and value.__module__ == name and value.__qualname__ == value.__name__:
                found.setdefault((absolute(code.co_filename), value.__qualname__), value)
    return found


def unwrapped(value):
    """The function behind a method, staticmethod or decorator (``functools.wraps``)."""
    func = getattr(value, "__func__", value)
    return inspect.unwrap(func) if callable(func) else func


def forward_of(cls: type) -> tuple[str, str] | None:
    """(absolute file, qualname) of the ``forward`` that instances of ``cls`` run."""
    func = unwrapped(getattr(cls, "forward", None))
    code = getattr(func, "__code__", None)
    return (absolute(code.co_filename), func.__qualname__) if code is not None else None


def defined_in(func) -> str | None:
    """The absolute file of a function's definition, behind ``functools.wraps`` wrappers such as
    diffusers' ``@register_to_config`` on ``__init__`` (None for functions without Python source)."""
    code = getattr(unwrapped(func), "__code__", None)
    return os.path.abspath(code.co_filename) if code is not None else None


def undecorated(cls: type) -> type:
    """The class as its file defines it, behind the wrappers class decorators return.

    A persistence decorator (EDM2's ``@persistent_class``) returns a subclass of the decorated class
    that takes over its name and module; the file's definition is the base::

        @persistent_class            type(model)             -> persistent_class.<locals>.Decorator
        class UNet(nn.Module): ...   undecorated(type(model)) -> UNet, as written in the file

    A decorator that returns the class itself leaves nothing to unwrap.
    """
    while (len(cls.__bases__) == 1 and cls.__bases__[0].__name__ == cls.__name__
           and cls.__bases__[0].__module__ == cls.__module__):
        cls = cls.__bases__[0]
    return cls


def root_init(model: nn.Module):
    """The root's ``__init__`` as its source defines it (unwrapped, of the undecorated class)."""
    return unwrapped(undecorated(type(model)).__init__)


def is_editable(cls: type) -> bool:
    """Classes whose forward the file may override: anything with Python source outside torch."""
    file = defined_in(cls.forward)
    return file is not None and not file.startswith(_TORCH_DIR + os.sep)


def class_names(model: nn.Module) -> dict[type, str]:
    """A distinct Python name for the class of every module (``Attention``, ``Attention_2`` ...)."""
    names: dict[type, str] = {}
    for module in model.modules():
        cls = type(module)
        if cls not in names:
            name, n = cls.__name__, 1
            while name in names.values():
                n += 1
                name = f"{cls.__name__}_{n}"
            names[cls] = name
    return names
