"""Source frames: where a module is called from, and which function a frame is.

Capture records, for each module's first call, the frames between the root's
``forward`` and the line that calls it: the functions a rewrite must thread the
task index through::

    DiT.forward        dit.py:243   x = block(x, c)      <- call site of blocks.3
    DiTBlock.forward   dit.py:148   x = x + gate_msa...  <- inside blocks.3
"""

from __future__ import annotations

import inspect
import itertools
import linecache
import re
from dataclasses import dataclass, field
from functools import lru_cache

from dtrsurgeon.plan import SpanLine

_FRAME = re.compile(r'File "(?P<file>.+?)", line (?P<line>\d+), in (?P<func>\S+)\n(?P<code>[^\n]*)')


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str
    code: str
    # (line, col, end line, end col) of the call this frame was executing (see
    # ``call_span``); ``line`` then carries it too (a SpanLine), so a SourceLine
    # made from this frame's fields keeps it
    span: tuple[int, int, int, int] | None = field(default=None, compare=False)
    code_object: object = field(default=None, compare=False, repr=False)  # the frame's code (live frames)

    def __post_init__(self):
        if self.span is not None:
            object.__setattr__(self, "line", SpanLine(self.line, self.span))

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}: {self.code}"


def call_span(frame) -> tuple[int, int, int, int] | None:
    """Source span (line, col, end line, end col; columns in characters, end
    exclusive) of the instruction a live frame is executing: for a frame that is
    calling something, the call expression (``block(x, emb)`` of
    ``x = block(x, emb) if isinstance(block, UNetBlock) else block(x)``).
    Python >= 3.11 (``co_positions``); None before, or when unknown."""
    positions = getattr(frame.f_code, "co_positions", None)
    if positions is None or frame.f_lasti < 0:
        return None
    try:
        line, end_line, col, end_col = next(itertools.islice(positions(), frame.f_lasti // 2, None))
    except StopIteration:
        return None
    if None in (line, end_line, col, end_col):
        return None
    file = frame.f_code.co_filename
    return line, _char_col(file, line, col), end_line, _char_col(file, end_line, end_col)


def _char_col(file: str, line: int, byte_col: int) -> int:
    """co_positions counts UTF-8 bytes; editors and LibCST count characters."""
    text = linecache.getline(file, line)
    return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore")) if text else byte_col


def live_frames(frame) -> list[Frame]:
    """``frame`` and its callers, outermost first, each with its call span."""
    frames = []
    while frame is not None:
        code = frame.f_code
        text = linecache.getline(code.co_filename, frame.f_lineno or code.co_firstlineno, frame.f_globals)
        frames.append(Frame(code.co_filename, frame.f_lineno or code.co_firstlineno, code.co_name, text.strip(), span=call_span(frame),
                            code_object=code))
        frame = frame.f_back
    return frames[::-1]


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
