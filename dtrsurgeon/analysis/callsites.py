"""Call-site pass: for each module, the chain of source frames that calls it.

Every captured node carries ``stack_trace`` (the user frames that produced it)
and ``nn_module_stack`` (the modules it ran in).  Walking both together tells,
for a module, which frames run between the root's ``forward`` and the line that
calls the module: these are the functions a rewrite must thread the task
index through::

    DiT.forward        dit.py:243   x = block(x, c)      <- call site of blocks.3
    DiTBlock.forward   dit.py:148   x = x + gate_msa...  <- inside blocks.3
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import lru_cache

from torch import fx, nn

_FRAME = re.compile(r'File "(?P<file>.+?)", line (?P<line>\d+), in (?P<func>\S+)\n(?P<code>[^\n]*)')


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}: {self.code}"


def parse_stack_trace(text: str | None) -> list[Frame]:
    if not text:
        return []
    return [Frame(m["file"], int(m["line"]), m["func"], m["code"].strip()) for m in _FRAME.finditer(text)]


@lru_cache(maxsize=None)
def _code_span(func) -> tuple[str, int, int]:
    """(file, first line, last line) of a function's source."""
    code = func.__code__
    lines = [ln for _, _, ln in code.co_lines() if ln is not None]
    return code.co_filename, code.co_firstlineno, max(lines + [code.co_firstlineno])


def is_frame_of(frame: Frame, func) -> bool:
    func = inspect.unwrap(func)
    if not hasattr(func, "__code__") or func.__code__.co_name != frame.function:
        return False
    file, first, last = _code_span(func)
    return file == frame.file and first <= frame.line <= last


@dataclass
class ModuleCall:
    """How one module is reached: ``frames[:entry]`` run before it is called;
    ``frames[entry - 1]`` holds the call.  ``frames[entry:]`` run inside it
    (empty when its forward is library code, e.g. ``nn.Linear``)."""

    path: str
    frames: list[Frame]
    entry: int


def module_calls(graph: fx.Graph, model: nn.Module) -> dict[str, ModuleCall]:
    """The first call of every module that produced at least one node."""
    calls: dict[str, ModuleCall] = {}
    for node in graph.nodes:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        frames = parse_stack_trace(node.meta.get("stack_trace"))
        if not stack or not frames:
            continue
        pos = 0  # frames[pos] is the first frame not yet attributed
        for depth, (path, _cls) in enumerate(stack):
            module = model.get_submodule(path) if path else model
            fwd = type(module).forward
            entry = next((i for i in range(pos, len(frames)) if is_frame_of(frames[i], fwd)), None)
            if depth == 0:
                entry = 0 if entry is None else entry
            if path not in calls:
                calls[path] = ModuleCall(path, frames, len(frames) if entry is None else entry)
            if entry is None:
                break  # library module: nothing below it is user code
            pos = entry + 1
    return calls


def resolve_function(frame: Frame, owner: type):
    """The function object of ``frame``, looked up on ``owner``'s MRO."""
    for cls in owner.__mro__:
        for value in vars(cls).values():
            func = getattr(value, "__func__", value)
            if callable(func) and is_frame_of(frame, func):
                return cls, func
    return None, None
