"""The edit plan: which function of which file gets which source edit.

The routing :class:`~dtrsurgeon.plan.Plan` says *what* is routed (units, streams, masks); the edit
plan says *where the code changes*, as plain data: per function (file, qualified name, first
line), a list of :class:`Edit` records, each of one :class:`EditKind`, anchored at a line or at
the exact source span of a call.  It is lowered once from the plan (:mod:`dtrsurgeon.emit.lower`)
and consumed by every emitter through :mod:`dtrsurgeon.emit.transformers`, one LibCST transformer
per kind.  ``dtrsurgeon inspect --edits`` prints it.  On DiT (source form)::

    function                     kind          where / what
    dit.py:146 DiTBlock.forward  take_task     required
                                 route_stream  dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 2); x, ...
                                 merge_return  dtr_merge(__out__, dtr_skip, dtr_keep)
    dit.py:171 DiT.__init__      attach_masks  dtr_attach_masks(self)
    dit.py:236 DiT.forward       compute_task  dtr_task = dtr_task_index(t, 0.0, 999.0, 1000, False)
                                 pass_task     243:16 block(x, c)
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

EDIT_PLAN_VERSION = 2  # 2: an edit may be bind_children, which readers of version 1 do not know
SUPPORTED_EDIT_PLAN_VERSIONS = (1, 2)  # a version-1 edit plan holds none and reads the same

Span = tuple[int, int, int, int]  # (line, column, end line, end column) of a node, as LibCST's PositionProvider


class EditKind(enum.StrEnum):
    """The kinds of edit; each has one transformer in :mod:`dtrsurgeon.emit.transformers`."""

    TAKE_TASK = "take_task"  # the function gains a dtr_task parameter (required, or =None)
    COMPUTE_TASK = "compute_task"  # the root's forward computes dtr_task from the timestep on entry
    PASS_TASK = "pass_task"  # the call at `span` gets dtr_task=dtr_task (behind isinstance guards)
    BIND_TASK = "bind_task"  # checkpoint(unit, ...) at `span`: checkpoint(dtr_bind_task(unit, dtr_task), ...)
    BIND_CHILDREN = "bind_children"  # checkpoint_sequential(units, ...) at `span`: (dtr_bind_children(units, dtr_task), ...)
    BIND_METHOD = "bind_method"  # the reference self.helper at `span`: dtr_bind_task(self.helper, dtr_task)
    FOLD_TASK = "fold_task"  # on entry: each row of a folded batch takes its sample's task
    ROUTE_STREAM = "route_stream"  # block mode: route the stream on entry (line 0) or after `line`
    MERGE_RETURN = "merge_return"  # block mode: every returned value goes through `text[0]` (__out__); in a
    # returned tuple, the item `var` (the stream after `line`)
    MASK_BRANCH = "mask_branch"  # branch mode: the residual add on `line` masks its branch's reads of `var`
    MASK_LOADS = "mask_loads"  # branch mode: the assignment on `line` masks its reads of `var`
    MASK_SITE = "mask_site"  # pre_output mode: the call at `span` gets its input masked
    ATTACH_MASKS = "attach_masks"  # the root's __init__ ends by attaching the mask tables


class Form(enum.StrEnum):
    """What the edits are lowered for: the live module (block units wrapped by a generic
    forward), a routed copy of one file, or a file of subclasses of an installed library."""

    MODULE = "module"
    SOURCE = "source"
    LIBRARY = "library"


@dataclass(frozen=True)
class Edit:
    """One edit of one function; the fields a kind does not use keep their defaults."""

    kind: EditKind
    line: int = 0  # the anchor line (0: the function as a whole)
    span: Span | None = None  # call-anchored kinds: the exact node
    text: tuple[str, ...] = ()  # statements or expressions the edit writes
    required: bool = True  # take_task: a required parameter, else dtr_task=None
    guards: tuple[str, ...] = ()  # pass_task: classes (as the file names them) whose instances take the task
    if_given: bool = False  # pass_task / bind_task in a module-level helper: only when its caller gave a task
    var: str = ""  # mask kinds: the stream's variable; merge_return: the item of a returned tuple it merges
    axis: int = 0  # mask kinds: its channel axis
    via: str = ""  # mask_site: "call" or "sequential" (the projection is the Sequential's last module)
    code: str = ""  # span-anchored kinds: the node's source, for people reading the plan

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v != _DEFAULTS[k]}
        d["kind"] = str(self.kind)
        if self.span is not None:
            d["span"] = list(self.span)
        if self.text:
            d["text"] = list(self.text)
        if self.guards:
            d["guards"] = list(self.guards)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Edit":
        d = dict(d)
        d["kind"] = EditKind(d["kind"])
        d["span"] = tuple(d["span"]) if d.get("span") is not None else None
        d["text"] = tuple(d.get("text", ()))
        d["guards"] = tuple(d.get("guards", ()))
        return cls(**d)

    def describe(self) -> str:
        """The edit in one line, for ``inspect --edits``."""
        where = f"{self.span[0]}:{self.span[1]} {self.code}" if self.span else (f"line {self.line}" if self.line else "")
        detail = {
            EditKind.TAKE_TASK: "required" if self.required else "optional (dtr_task=None)",
            EditKind.PASS_TASK: "if " + " and ".join(
                ([f"isinstance({', '.join(self.guards)})"] if self.guards else []) + (["given"] if self.if_given else []))
            if self.guards or self.if_given else "",
            EditKind.MASK_BRANCH: f"{self.var} axis {self.axis}",
            EditKind.MASK_LOADS: f"{self.var} axis {self.axis}",
            EditKind.MASK_SITE: f"{self.via} axis {self.axis}",
        }.get(self.kind, "; ".join(self.text))
        return " ".join(s for s in (where, detail) if s)


_DEFAULTS = {k: v.default for k, v in Edit.__dataclass_fields__.items() if k != "kind"}
_DEFAULTS["kind"] = None


@dataclass(frozen=True)
class FunctionEdits:
    """The edits of one function, named by file and qualified name (``"DiT.forward"``)."""

    file: str
    qualname: str
    line: int  # the line of its ``def``
    edits: tuple[Edit, ...]

    def of(self, kind: EditKind) -> tuple[Edit, ...]:
        return tuple(e for e in self.edits if e.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "qualname": self.qualname, "line": self.line,
                "edits": [e.to_dict() for e in self.edits]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FunctionEdits":
        return cls(d["file"], d["qualname"], int(d["line"]), tuple(Edit.from_dict(e) for e in d["edits"]))


@dataclass(frozen=True)
class EditPlan:
    """Every source edit routing one model takes, for one :class:`Form`.

    ``wrapped``: the block-mode units the module form routes with a generic wrapper forward
    (their class's code is not edited); empty in the source forms, which write the routing inline.
    """

    form: Form
    functions: tuple[FunctionEdits, ...]
    wrapped: tuple[str, ...] = ()
    version: int = field(default=EDIT_PLAN_VERSION)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "form": str(self.form), "wrapped": list(self.wrapped),
                "functions": [f.to_dict() for f in self.functions]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditPlan":
        if d.get("version") not in SUPPORTED_EDIT_PLAN_VERSIONS:
            raise ValueError(f"edit plan version {d.get('version')!r} is not supported (expected one of "
                             f"{', '.join(map(str, SUPPORTED_EDIT_PLAN_VERSIONS))})")
        return cls(Form(d["form"]), tuple(FunctionEdits.from_dict(f) for f in d["functions"]),
                   tuple(d.get("wrapped", ())))

    @classmethod
    def from_json(cls, text: str) -> "EditPlan":
        return cls.from_dict(json.loads(text))

    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.file for f in self.functions))

    def in_file(self, file: str) -> tuple[FunctionEdits, ...]:
        return tuple(f for f in self.functions if f.file == file)

    def kinds(self) -> set[EditKind]:
        return {e.kind for f in self.functions for e in f.edits}

    def binds_task(self) -> bool:
        """Whether the edited code hands units on through ``dtr_bind_task`` (the generated file then
        defines it)."""
        return bool(self.kinds() & {EditKind.BIND_TASK, EditKind.BIND_METHOD, EditKind.BIND_CHILDREN})

    def binds_children(self) -> bool:
        """Whether the edited code hands a Sequential's children to ``checkpoint_sequential`` through
        ``dtr_bind_children`` (the generated file then defines it)."""
        return EditKind.BIND_CHILDREN in self.kinds()

    def table(self) -> str:
        """The text table ``dtrsurgeon inspect --edits`` prints: one row per edit."""
        import io

        from rich.console import Console
        from rich.table import Table

        out = io.StringIO()
        console = Console(file=out, width=240, color_system=None)
        table = Table(title=f"edits ({self.form} form): {sum(len(f.edits) for f in self.functions)} in "
                            f"{len(self.functions)} functions", title_justify="left", box=None, pad_edge=False)
        for col in ("function", "kind", "where / what"):
            table.add_column(col, no_wrap=True)
        for function in self.functions:
            name = f"{os.path.basename(function.file)}:{function.line} {function.qualname}"
            for i, edit in enumerate(function.edits):
                table.add_row(name if i == 0 else "", str(edit.kind), edit.describe())
        console.print(table)
        if self.wrapped:
            console.print("wrapped by a routing forward (class code unchanged): " + ", ".join(self.wrapped))
        return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())
