"""Source frames: where a module is called from, and which function a frame is.

Capture records, for each module's first call, the frames between the root's
``forward`` and the line that calls it: the functions a rewrite must thread the
task index through::

    DiT.forward        dit.py:243   x = block(x, c)      <- call site of blocks.3
    DiTBlock.forward   dit.py:148   x = x + gate_msa...  <- inside blocks.3
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import lru_cache

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


def resolve_function(frame: Frame, owner: type):
    """The function object of ``frame``, looked up on ``owner``'s MRO."""
    for cls in owner.__mro__:
        for value in vars(cls).values():
            func = getattr(value, "__func__", value)
            if callable(func) and is_frame_of(frame, func):
                return cls, func
    return None, None
