"""The plan: dtrsurgeon's intermediate representation.

A plan is plain data (frozen dataclasses of strings, ints and floats) that says,
for every routed unit, where it is, how wide its stream is, how its mask is
built and which source frames carry the task index to it.  Both emitters (the
live module rewrite and the generated source) consume a plan and nothing else;
``dtrsurgeon inspect`` prints it.  ``Plan.to_json()`` is stable (sorted keys).
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dtrsurgeon.spec.model import MaskParams, TimestepMap

PLAN_VERSION = 2  # 2: a unit's fold is one of the closed set Fold
SUPPORTED_PLAN_VERSIONS = (1, 2)  # version-1 plans read the same


class Mode(enum.StrEnum):
    """How a unit is routed: ``block`` masks the stream on entry and merges the skip on return
    (``y = f(x * m) + x * (1 - m)``), ``branch`` masks each residual branch's input, ``pre_output``
    masks the input of each branch's last projection.  Equal to its string (``Mode.BLOCK == "block"``)."""

    BLOCK = "block"
    BRANCH = "branch"
    PRE_OUTPUT = "pre_output"


class Fold(enum.StrEnum):
    """How the root's samples lie on a unit's stream when not one per row on axis 0: ``interleave``
    (sample b on rows b*F .. b*F+F-1, ``x.reshape(B*F, ...)``), ``repeat`` (rows b, b+B, ...,
    ``x.repeat(F, ...)``), ``sequence_first`` (on axis 1 of ``[L, B, C]``).  Equal to its string."""

    INTERLEAVE = "interleave"
    REPEAT = "repeat"
    SEQUENCE_FIRST = "sequence_first"


class SpanLine(int):
    """A line number that also carries the source span of the call its frame was
    executing (capture records it; :class:`SourceLine` takes it over)."""

    span: tuple[int, int, int, int] | None

    def __new__(cls, line: int, span=None):
        obj = super().__new__(cls, line)
        obj.span = tuple(span) if span is not None else None
        return obj


@dataclass(frozen=True)
class SourceLine:
    file: str
    line: int
    function: str  # qualified name, e.g. "DiT.forward"
    code: str
    # (line, col, end line, end col) of the exact call this frame was executing when it led
    # to the unit (columns count characters, 0-based, end exclusive, as LibCST's); None when
    # unknown (Python < 3.11, plans written before it was recorded, lines that are not calls)
    span: tuple[int, int, int, int] | None = None

    def __post_init__(self):
        span = self.span if self.span is not None else getattr(self.line, "span", None)
        object.__setattr__(self, "line", int(self.line))
        object.__setattr__(self, "span", tuple(int(v) for v in span) if span is not None else None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["span"] is None:
            del d["span"]  # plans without spans stay as they were
        else:
            d["span"] = list(d["span"])
        return d


@dataclass(frozen=True)
class MaskSite:
    """pre_output mode: the input of a residual branch's last projection."""

    module: str  # the projection, e.g. "input_blocks.1.0.out_layers.3"
    call: SourceLine  # the line that calls it (or the Sequential holding it last): in the unit's forward or a helper it hands on
    via: str  # "call": called directly; "sequential": the last module of the Sequential called there
    channel_axis: int
    channels: int


@dataclass(frozen=True)
class Stream:
    """A further stream a multi-stream unit routes (MMDiT joint blocks: the text tokens
    ``encoder_hidden_states`` beside the image tokens), with its own mask table::

        def forward(self, hidden_states, encoder_hidden_states, temb):   # routed: both
            ...
            return encoder_hidden_states, hidden_states                    # out_index 0 and 1
    """

    arg: str  # the forward parameter carrying it (``args[0]``: item 0 of a ``*args``)
    buffer: str  # the unit's mask buffer for it ("dtr_mask_<arg>", "dtr_mask_args_0"; None on instances that do not route it)
    out_index: int  # its position in the tuple the unit returns
    channel_axis: int
    rank: int
    channels: int
    active: int


@dataclass(frozen=True)
class RoutedUnit:
    path: str  # named_modules() name, e.g. "blocks.3"
    cls: str  # "package.module.ClassName"
    mode: Mode
    mode_note: str  # why the mode differs from the spec's, "" otherwise
    channel_axis: int  # axis of the stream that holds channels
    rank: int  # number of dims of the stream, batch included
    channels: int  # C
    active: int  # K = floor(C * beta)
    mask: MaskParams
    stream_arg: str  # forward parameter carrying the routed stream ("args[1]": in *args; "" when it starts inside)
    stream_var: str  # the variable holding the stream in the unit's forward
    stream_line: SourceLine | None  # where the stream starts when not at the unit's input (U-ViT: after the long-skip merge)
    masked_at: str  # in words, for inspect
    call_path: tuple[SourceLine, ...]  # root.forward ... the line that calls this unit
    residual_lines: tuple[SourceLine, ...]  # the residual adds inside the unit
    branch_lines: tuple[SourceLine, ...] = ()  # branch mode: lines where a branch first reads the stream
    sites: tuple[MaskSite, ...] = ()  # pre_output mode
    # the unit returns a tuple: the routed stream's position in it (MMDiT joint blocks), else None
    out_index: int | None = None
    streams: tuple[Stream, ...] = ()  # further routed streams (routing.streams "all")
    # the stream's batch axis holds B*F rows for the root's B samples (frames folded into the batch):
    # "interleave" (sample b owns rows b*F .. b*F+F-1) or "repeat" (rows b, b+B, ...); "sequence_first":
    # the samples lie on axis 1 ([L, B, C]); None: B rows
    fold: Fold | None = None
    # False: the residual add is the caller's (``x = attn(x) + x`` in the root's forward), so the unit
    # only routes its input: attn(x * m) + x is the block form x + f(x * m)
    merge: bool = True

    def __post_init__(self):
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.fold is not None and self.fold not in tuple(Fold):
            raise ValueError(f"unit {self.path!r}: fold {self.fold!r} is not one of "
                             f"{', '.join(str(f) for f in Fold)}")
        if self.fold is not None:
            object.__setattr__(self, "fold", Fold(self.fold))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = str(self.mode)
        d["fold"] = None if self.fold is None else str(self.fold)
        d["mask"] = self.mask.to_dict()
        for key in ("call_path", "residual_lines", "branch_lines"):
            d[key] = [sl.to_dict() for sl in getattr(self, key)]
        d["stream_line"] = self.stream_line.to_dict() if self.stream_line is not None else None
        d["sites"] = [{**asdict(s), "call": s.call.to_dict()} for s in self.sites]
        d["streams"] = [asdict(s) for s in self.streams]
        for key, default in (("out_index", None), ("streams", []), ("fold", None), ("merge", True)):
            if d[key] == default:
                del d[key]  # single-stream plans stay as they were
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RoutedUnit":
        d = dict(d)
        d["mask"] = MaskParams.from_dict(d["mask"])
        d["call_path"] = tuple(SourceLine(**s) for s in d["call_path"])
        d["residual_lines"] = tuple(SourceLine(**s) for s in d["residual_lines"])
        d["branch_lines"] = tuple(SourceLine(**s) for s in d.get("branch_lines", ()))
        d["stream_line"] = SourceLine(**d["stream_line"]) if d.get("stream_line") else None
        d["sites"] = tuple(MaskSite(**{**x, "call": SourceLine(**x["call"])}) for x in d.get("sites", ()))
        d["streams"] = tuple(Stream(**x) for x in d.get("streams", ()))
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    model: str  # class of the root
    timestep: TimestepMap
    spec_sha256: str
    units: tuple[RoutedUnit, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (module path, why) of residual holders not routed
    passthrough: tuple[tuple[str, str, int], ...] = field(default=())  # (path, file, line): non-units called on a unit's call line
    unmatched: tuple[tuple[str, int], ...] = field(default=())  # (path, C) of units the targets leave out
    # (path, call path) of non-units that receive dtr_task: left-out instances of unit classes and
    # other instances of the classes that pass it on
    threads: tuple[tuple[str, tuple[SourceLine, ...]], ...] = field(default=())
    version: int = PLAN_VERSION
    # (file, line) of the lines on which the example call called a module: calls elsewhere ran on paths
    # the example inputs did not take, and the emitters decide them from the source (not serialised)
    seen: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "timestep": self.timestep.to_dict(),
            "spec_sha256": self.spec_sha256,
            "units": [u.to_dict() for u in self.units],
            "skipped": [list(s) for s in self.skipped],
            "passthrough": list(self.passthrough),
            "unmatched": [list(u) for u in self.unmatched],
            "threads": [[p, [sl.to_dict() for sl in lines]] for p, lines in self.threads],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if d.get("version") not in SUPPORTED_PLAN_VERSIONS:
            raise ValueError(f"plan version {d.get('version')!r} is not supported (expected one of "
                             f"{', '.join(map(str, SUPPORTED_PLAN_VERSIONS))})")
        ts = d["timestep"]
        return cls(
            model=d["model"],
            timestep=TimestepMap(arg=ts.get("arg"), num_tasks=ts["num_tasks"], t0=ts["range"][0], t1=ts["range"][1], reverse=ts["reverse"]),
            spec_sha256=d["spec_sha256"],
            units=tuple(RoutedUnit.from_dict(u) for u in d["units"]),
            skipped=tuple(tuple(s) for s in d.get("skipped", ())),
            passthrough=tuple((p, f, int(ln)) for p, f, ln in d.get("passthrough", ())),
            unmatched=tuple((p, int(c)) for p, c in d.get("unmatched", ())),
            threads=tuple((p, tuple(SourceLine(**sl) for sl in lines)) for p, lines in d.get("threads", ())),
        )

    def unit(self, path: str) -> RoutedUnit:
        return next(u for u in self.units if u.path == path)

    def summary(self, spec_label: str | None = None) -> str:
        """The table ``dtrsurgeon inspect`` prints: one row per unit, then widths and notes::

            routed units of DiT (12), spec dit-paper
            path      class     mode   axis  C    K    mask                     called at
            blocks.0  DiTBlock  block  2     384  307  sliding power a=4 b=0.8  dit.py:243 DiT.forward
            ...
        """
        return summary_table(self, spec_label if spec_label is not None else f"sha256 {self.spec_sha256[:12]}")


def _mask_summary(unit: RoutedUnit) -> str:
    m = unit.mask
    tw = m.task_weights
    curve = f"power a={tw.alpha:g}" if tw.curve == "power" else tw.curve
    return f"{m.window_shift} {curve} b={m.channel_ratio:g}"


def _stream_summary(arg, axis, channels, active, out_index) -> str:
    return f"{arg} (axis {axis}, C={channels}, K={active}, returned at [{out_index}])"


def summary_table(plan: Plan, spec_label: str) -> str:
    """``plan`` as the text table of ``dtrsurgeon inspect`` (rendered by rich, no colours)."""
    import io
    import os
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    title = f"routed units of {plan.model.rsplit('.', 1)[-1]} ({len(plan.units)}), spec {spec_label}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in ("path", "class", "mode", "axis", "C", "K", "mask", "masked at", "called at"):
        table.add_column(col, no_wrap=True)
    for u in plan.units:
        call = u.call_path[-1]
        mode = u.mode + (" *" if u.mode_note else "")
        table.add_row(u.path, u.cls.rsplit(".", 1)[1], mode, str(u.channel_axis), str(u.channels), str(u.active),
                      _mask_summary(u), u.masked_at, f"{os.path.basename(call.file)}:{call.line} {call.function}")
    console.print(table)
    widths = Counter(u.channels for u in plan.units)
    console.print("widths: " + ", ".join(f"C={c} x{n}" for c, n in sorted(widths.items())))
    left_out = [(path, c) for path, c in plan.unmatched if path not in dict(plan.skipped)]  # skipped ones: below
    if left_out:
        console.print("not matched by targets: " + ", ".join(f"{path} (C={c})" for path, c in left_out))
    for u in plan.units:
        if u.out_index is not None or u.streams:
            console.print(f"streams of {u.path}: " + ", ".join(_stream_summary(*s) for s in (
                (u.stream_arg, u.channel_axis, u.channels, u.active, u.out_index),
                *((s.arg, s.channel_axis, s.channels, s.active, s.out_index) for s in u.streams))))
        if u.fold == "sequence_first":
            console.print(f"sequence-first stream in {u.path}: the samples lie on axis 1; each takes its task there")
        elif u.fold is not None:
            console.print(f"folded batch in {u.path}: several rows per sample ({u.fold}); each row takes its sample's task")
    for u in plan.units:
        if u.mode_note:
            console.print(f"* {u.path}: {u.mode_note}")
    for path, why in plan.skipped:
        console.print(f"not routed: {path or '<root>'}: {why}")
    return out.getvalue()
