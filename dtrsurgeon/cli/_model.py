"""Build a model from a Python file: ``--entry NAME [--kwargs JSON]``.

A file that is importable already (``model_zoo/dit.py``, a module of a package) is
imported under its dotted name, so its classes keep one identity.  Any other file
is imported under a private name (``_dtrsurgeon_model_<stem>_<hash>``: a file called
``json.py`` must not replace :mod:`json`) with its folder on ``sys.path`` (so its
sibling imports work).  ``NAME`` is a class or a factory function.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import sys
import tokenize
import traceback
from pathlib import Path

from torch import nn

from dtrsurgeon.errors import DtrSurgeonError
from dtrsurgeon.emit.library import IMPORT_NAME


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
        except Exception:  # find_spec imports the parents: a broken package on the way is not this file
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


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _check_source(file: Path, shown: str) -> None:
    """Refuse bytes Python would choke on with a traceback, naming the byte offset.

    ``model.py: line 3, byte offset 57: not valid utf-8 (invalid start byte); save the file as UTF-8``
    """
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{shown}: cannot read it: {e.strerror}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ModelFileError(f"{shown}: line {_line_at(data, nul)}, byte offset {nul}: a NUL byte; "
                             "not a Python source file")
    try:
        encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
        data.decode(encoding)
    except SyntaxError as e:  # an unknown `# coding:` cookie
        raise ModelFileError(f"{shown}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{shown}: line {_line_at(data, e.start)}, byte offset {e.start}: not valid "
                             f"{e.encoding} ({e.reason}); save the file as UTF-8") from None


def _private_name(file: Path) -> str:
    """A module name no other module has: a model file called json.py or torch.py must not
    replace the real one in ``sys.modules``."""
    stem = re.sub(r"\W", "_", file.stem)
    return f"_dtrsurgeon_model_{stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"


def _exec_file(file: Path, shown: str):
    name = _private_name(file)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None:
        raise ModelFileError(f"{shown}: not a Python source file (expected NAME.py)")
    module = importlib.util.module_from_spec(spec)
    setattr(module, IMPORT_NAME, file.stem)  # how a generated file beside it imports it
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


def _where(file: Path, shown: str, error: BaseException) -> str:
    """``shown:LINE``: the deepest line of ``file`` in the error's traceback (``shown`` if none)."""
    line = None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if Path(frame.f_code.co_filename).resolve() == file:
            line = lineno
    return shown if line is None else f"{shown}:{line}"


def _describe(error: BaseException) -> str:
    """``KeyError: 'x'``, ``sys.exit(3)``: the exception on one line, cut to a readable length."""
    if isinstance(error, SystemExit):
        return f"it called sys.exit({error.code!r})"
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:300] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def import_file(path: str):
    """The module of a model file, imported under a name that shadows nothing.

    Any exception the file raises while it is imported (``SyntaxError``, an ``assert``,
    ``sys.exit``) becomes one :class:`ModelFileError` naming the file and line; the original
    stays chained for ``--traceback``.  KeyboardInterrupt passes through.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise ModelFileError(f"{path}: no such file")
    if file.suffix != ".py":
        raise ModelFileError(f"{path}: not a Python source file (expected NAME.py)")
    _check_source(file, path)
    name = _importable_name(file) or _package_name(file)
    try:
        if name is None:
            return _exec_file(file, path)
        module = importlib.import_module(name)
    except ModelFileError:
        raise
    except SyntaxError as e:
        raise ModelFileError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from e
    except (Exception, SystemExit) as e:
        raise ModelFileError(f"{_where(file, path, e)}: importing it failed: {_describe(e)}") from e
    if Path(module.__file__ or "").resolve() != file:
        raise ModelFileError(f"{path}: importing it as {name} gives {module.__file__}: another module of that name "
                             "comes first on sys.path; rename the package")
    return module


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
    """``entry(**kwargs)`` from the file at ``path``; whatever the factory raises becomes one
    :class:`ModelFileError` line naming the file, the entry and the exception."""
    module = import_file(path)
    factory = getattr(module, entry, None)
    if factory is None:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                       and v.__module__ == module.__name__)
        raise ModelFileError(f"{path}: no {entry!r} in this file; nn.Module classes here: {', '.join(names) or 'none'}")
    kwargs = parse_kwargs(kwargs_json)
    if not callable(factory):
        raise ModelFileError(f"{path}: {entry} is a {type(factory).__name__}, not a class or function")
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as e:
        where = _where(Path(path).resolve(), path, e)
        raise ModelFileError(f"{where}: {entry}(**{kwargs_json or '{}'}) failed: {_describe(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{path}: {entry}(...) returned {type(model).__name__}, not an nn.Module")
    return model
