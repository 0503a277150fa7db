"""Source pass: the text of the code that runs, and whether it still is that code.

Both emitters rewrite the *text* of the model's functions, so that text must be
the code Python is running.  Two cases break this:

* a class defined where no file holds its text: ``exec(string)`` (``<string>``),
  a notebook cell.  IPython registers every cell's text in :mod:`linecache`, so
  cells are read from there; a bare ``exec`` has no text anywhere and is refused;
* a file edited after the module was imported: its text describes code that is
  not running.  Each function's code object is compared with the function as the
  file now writes it (first line, and its bytecode with name scopes evened out)::

      def forward(self, x):            # imported
          return x + self.f(x)
      def forward(self, x):            # the file now: refused, "edited after import"
          return x - self.f(x)
"""

from __future__ import annotations

import __future__
import ast
import dis
import linecache
import os
from functools import lru_cache

from dtrsurgeon.errors import CaptureError


def is_pseudo_file(path: str) -> bool:
    """``<string>``, ``<ipython-input-1-...>``: a code object's file name that names no file."""
    name = os.path.basename(path)
    return name.startswith("<") and name.endswith(">")


def absolute(path: str) -> str:
    """``os.path.abspath`` for real files; pseudo file names are kept as they are."""
    return path if is_pseudo_file(path) else os.path.abspath(path)


def source_text(path: str) -> str | None:
    """The text of ``path``: the file, else the lines :mod:`linecache` holds for it (notebook
    cells, code compiled with registered text), else None."""
    if not is_pseudo_file(path) and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    for name in dict.fromkeys((path, os.path.basename(path))):
        entry = linecache.cache.get(name)
        if entry is not None and len(entry) > 2 and entry[2]:  # (size, mtime, lines, name); lazy entries are 1-tuples
            return "".join(entry[2])
    return None


@lru_cache(maxsize=16)
def _statement_lines(path: str) -> dict[int, tuple[int, int]]:
    """First line -> (first, last line) of each simple statement of ``path``."""
    tree = _parse(source_text(path) or "")
    if tree is None:
        return {}
    return {n.lineno: (n.lineno, n.end_lineno) for n in ast.walk(tree)
            if isinstance(n, ast.stmt) and not hasattr(n, "body")}


def statement_at(path: str, line: int) -> str | None:
    """The whole simple statement that starts at ``line`` of ``path``, or None.  A stack trace shows
    a statement's first line only: ``x = (x.float() + h).type_as(`` of one written over two lines."""
    span = _statement_lines(path).get(line)
    if span is None:
        return None
    lines = (source_text(path) or "").splitlines()[span[0] - 1:span[1]]
    return "\n".join(lines).strip() if lines else None


def require_source(path: str, what: str) -> str:
    """The text of ``path``, or a one-line :class:`CaptureError` naming ``what`` lives there."""
    text = source_text(path)
    if text is None:
        raise CaptureError(f"{what}: {path} holds no source text (a class built by exec() of a string, or a file "
                           "deleted since import); dtrsurgeon rewrites source: define the model in a file or a "
                           "notebook cell")
    return text


def check_current(code) -> None:
    """Refuse a function (its code object) whose file no longer holds the code it runs (edited after import)."""
    if code.co_name.startswith("<"):  # module bodies, lambdas, comprehensions: no def to compare
        return
    what = f"{code.co_qualname} ({code.co_filename}:{code.co_firstlineno})"
    text = require_source(code.co_filename, what)
    if not _matches(code, text, code.co_qualname):
        raise CaptureError(f"{what}: the file was edited after the model's module was imported, so its text is not "
                           "the code that runs; re-import the module (restart the kernel) and build the model again")


@lru_cache(maxsize=512)
def _matches(code, text: str, qualname: str) -> bool:
    node = _find_function(text, qualname, code.co_firstlineno)
    if node is None:
        return False
    fresh = _nested_code(_compiled(text, code.co_filename, code.co_flags & _FUTURE_FLAGS), code.co_name,
                         code.co_firstlineno)
    # pytest rewrites the asserts of test modules at import: their lines are not compared
    asserts = frozenset(line for n in ast.walk(node) if isinstance(n, ast.Assert)
                        for line in range(n.lineno, (n.end_lineno or n.lineno) + 1))
    return fresh is not None and _fingerprint(fresh, asserts) == _fingerprint(code, asserts)


@lru_cache(maxsize=64)
def _compiled(text: str, filename: str, flags: int):
    """The whole file compiled, not the def alone: the code of a function depends on its surroundings.
    A zero-argument ``super()`` needs its class cell, and Python 3.11 compiles ``F.f(a=1, ..., s=19)``
    as a dict-built call (not a method call) when ``F`` is a name the module imports::

        import torch.nn.functional as F      # file scope: F.multi_head_attention_forward(**19 keywords)
        def forward(self, x): ...            # compiled alone: a method call with keyword names
    """
    return compile(_parse(text), filename, "exec", flags=flags, dont_inherit=True)


def _nested_code(code, name: str, first_line: int):
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            if const.co_name == name and const.co_firstlineno == first_line:
                return const
            found = _nested_code(const, name, first_line)
            if found is not None:
                return found
    return None


@lru_cache(maxsize=64)
def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


def _find_function(text: str, qualname: str, first_line: int) -> ast.AST | None:
    """The def of ``qualname`` that starts (decorators included) at ``first_line``."""
    tree = _parse(text)
    if tree is None:
        return None
    name = qualname.rsplit(".", 1)[-1]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if start == first_line:
                return node
    return None


_FUTURE_FLAGS = sum(getattr(__future__, name).compiler_flag for name in __future__.all_feature_names)

# opcodes whose presence or argument depends on where the function sits (a class body, an enclosing
# function), not on what it does
_SCOPE_OPS = {"RESUME", "NOP", "COPY_FREE_VARS", "MAKE_CELL", "PUSH_NULL", "CACHE", "EXTENDED_ARG"}
_NAME_OPS = {"LOAD_GLOBAL": "LOAD", "LOAD_DEREF": "LOAD", "LOAD_NAME": "LOAD", "LOAD_CLASSDEREF": "LOAD",
             "LOAD_FAST": "LOAD", "LOAD_CLOSURE": "LOAD", "LOAD_FAST_CHECK": "LOAD", "LOAD_FROM_DICT_OR_DEREF": "LOAD",
             "LOAD_METHOD": "LOAD_ATTR",  # an attribute's load for a call: the compiler picks either
             "STORE_DEREF": "STORE", "STORE_FAST": "STORE", "STORE_NAME": "STORE", "STORE_GLOBAL": "STORE"}


def _fingerprint(code, skip_lines: frozenset = frozenset()) -> tuple:
    """What the function does, independent of its scope: opcodes (name loads and stores evened
    out), the names and constants they use and the lines they run on; nested code recursively.
    Instructions on ``skip_lines`` are left out."""
    items = []
    for ins in dis.get_instructions(code):
        line = ins.positions.lineno if ins.positions else None
        if ins.opname in _SCOPE_OPS or line in skip_lines:
            continue
        op = _NAME_OPS.get(ins.opname, ins.opname)
        arg = ins.argval
        if hasattr(arg, "co_code"):
            arg = _fingerprint(arg, skip_lines)
        elif op in ("LOAD", "STORE") or ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs:
            arg = ins.argval if op in ("LOAD", "STORE") else None
        elif not isinstance(arg, (str, int)):
            arg = repr(arg)  # floats: nan != nan
        items.append((op, arg, line))
    return tuple(items)
