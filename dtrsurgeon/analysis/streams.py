"""Stream pass: what a unit's streams look like, seen from the captured graph.

* the channel axis of a stream, from the ops that consume it (feature maps ``[B, C, H, W]``
  -> 1; tokens ``[B, L, C]`` and channels-last grids ``[B, H, W, C]`` -> the last axis);
* the streams of a unit that returns a tuple (MMDiT joint blocks carry the image tokens and
  the text tokens side by side)::

      def forward(self, hidden_states, encoder_hidden_states, temb):
          ...
          return encoder_hidden_states, hidden_states   # streams: hidden_states -> 1, encoder_hidden_states -> 0

* how the root's B samples lie on a stream whose batch axis holds B*F rows (video models
  fold frames into the batch: ``x.permute(0, 2, 1, 3, 4).reshape(B * F, C, H, W)`` puts
  sample b on rows b*F .. b*F+F-1, "interleave"; ``x.repeat(F, 1, 1)`` on rows b, b+B, ..., "repeat").
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import textwrap
from dataclasses import dataclass

import torch
from torch import fx, nn

from dtrsurgeon.analysis.residuals import SHAPE_OPS, data_inputs

aten = torch.ops.aten
_CHANNEL_FIRST = {"convolution", "conv1d", "conv2d", "conv3d", "group_norm", "native_group_norm", "batch_norm",
                  "_native_batch_norm_legit_no_training", "instance_norm"}
_CHANNEL_LAST = {"linear", "layer_norm", "native_layer_norm", "rms_norm", "addmm", "mm"}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
          aten.unflatten.int}
_SAME_LAYOUT = {aten.clone.default, aten.contiguous.default, aten.alias.default, aten._to_copy.default,
                aten.to.dtype, aten.to.dtype_layout, aten.dropout.default}


def op_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def channel_axis(node: fx.Node) -> int:
    """Feature maps [B, C, H, W] (and [B, C]) -> 1; tokens [B, L, C] and channels-last grids
    [B, H, W, C] -> the last axis when the ops reading the stream treat it as channels (Linear,
    LayerNorm), 1 when they treat axis 1 so (Conv, GroupNorm).  Undecided: 3-D streams are
    tokens, 4-D and 5-D ones feature maps."""
    rank = node.meta["val"].dim()
    if rank < 3:
        return 1
    frontier, seen = [node], 0
    while frontier and seen < 32:
        nxt = []
        for n in frontier:
            for user in n.users:
                seen += 1
                name = op_name(user)
                if name in _CHANNEL_FIRST and user.args and user.args[0] is n:
                    return 1
                if name in _CHANNEL_LAST:
                    return rank - 1
                if user.op == "call_function" and user.target in SHAPE_OPS:
                    nxt.append(user)
        frontier = nxt
    return 2 if rank == 3 else 1


def inside(node: fx.Node, path: str) -> bool:
    return any(p == path or p.startswith(path + ".") for p, _ in (node.meta.get("nn_module_stack") or {}).values())


def origin(node: fx.Node, path: str, params: set[str]) -> fx.Node:
    """Walk back from ``node`` through reshapes and casts inside the unit."""
    while inside(node, path) and node.op == "call_function" and node.target in SHAPE_OPS:
        inputs = data_inputs(node, params)
        if len(inputs) != 1:
            break
        node = inputs[0]
    return node


# -- units that return several streams ------------------------------------------------------------

@dataclass(frozen=True)
class FoundStream:
    arg: str  # the forward parameter carrying it (``args[1]``: item 1 of its ``*args``)
    node: fx.Node  # its value entering the unit
    out_index: int  # its position in the returned tuple
    position: int = -1  # its place among the positional arguments of the call, where matched by shape


class NoStreams(Exception):
    """A tuple-returning unit whose streams cannot be told apart; the message says why."""


def _returned_names(cls: type) -> list[tuple[str | None, ...]]:
    """The names of each ``return a, b`` statement of ``cls.forward`` (None for other items)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cls.forward))))
    except (OSError, TypeError, SyntaxError):
        return []
    func = tree.body[0]
    returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and isinstance(n.value, ast.Tuple)]
    return [tuple(e.id if isinstance(e, ast.Name) else None for e in r.value.elts) for r in returns]


def _inputs_of(stream: fx.Node, path: str, code: str, params: list[str],
               value_params: set[str]) -> list[tuple[str, fx.Node]]:
    """(parameter, node) of the unit inputs a residual chain starts from: the stream itself, or
    the parts a ``torch.cat`` inside the unit joins (Flux's single-stream block joins text and
    image tokens: ``hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)``)."""
    start = origin(stream, path, value_params)
    if not inside(start, path):
        names = [n for n in _names_in(code) if n in params]
        return [(names[0], start)] if names else []
    if start.op == "call_function" and start.target is aten.cat.default:
        parts = [origin(p, path, value_params) for p in start.args[0]]
        names = [n for n in _cat_names(code) if n in params]
        if len(parts) == len(names) and not any(inside(p, path) for p in parts):
            return list(zip(names, parts))
    return []


def _cat_names(code: str) -> list[str]:
    """The names ``torch.cat([a, b], ...)`` joins on a source line, in order."""
    try:
        tree = ast.parse(code.strip().removeprefix("return ").rstrip(":") or "0")
    except SyntaxError:
        return []
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if (isinstance(node, ast.Call) and getattr(func, "attr", getattr(func, "id", "")) in ("cat", "concat")
                and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))):
            return [e.id if isinstance(e, ast.Name) else "" for e in node.args[0].elts]
    return []


def _names_in(code: str) -> list[str]:
    try:
        tree = ast.parse(code.strip().removeprefix("return ").rstrip(":") or "0")
    except SyntaxError:
        return []
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]


def tuple_streams(path: str, module: nn.Module, starts: list[tuple[fx.Node, str]], output_shapes: tuple,
                  value_params: set[str], input_shapes: tuple = ()) -> list[FoundStream]:
    """The streams of a unit that returns a tuple, in forward-parameter order.  ``starts``:
    (stream entering a residual chain, the source line that starts the chain or builds its input).
    A stream is a forward parameter a residual chain starts from, returned under its own name
    with its own shape; raises :class:`NoStreams` when there is none.  A forward that returns a
    tuple another function builds has its streams matched by shape (see :func:`_streams_by_shape`)."""
    sig = [n for n, p in inspect.signature(module.forward).parameters.items()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    returns = _returned_names(type(module))
    if not returns:
        found = _streams_by_shape(path, module, [n for n, _ in starts], input_shapes, output_shapes, value_params)
        if not found:
            raise NoStreams("it returns a tuple that is not a tuple of names in its forward's source, and no "
                            "argument of it comes back in that tuple with a shape no other argument or item has")
        return found
    found: dict[str, FoundStream] = {}
    for stream, code in starts:
        for arg, node in _inputs_of(stream, path, code, sig, value_params):
            places = {names.index(arg) for names in returns if arg in names}
            if len(places) != 1 or arg in found:
                continue
            index = places.pop()
            shape = tuple(node.meta["val"].shape)
            if index < len(output_shapes) and output_shapes[index] == shape:
                found[arg] = FoundStream(arg=arg, node=node, out_index=index)
    if not found:
        raise NoStreams("it returns a tuple, and no item of it is a residual stream returned under the name "
                        "of the forward parameter it came in by, with the same shape")
    return sorted(found.values(), key=lambda s: sig.index(s.arg))


def returned_place(cls: type, var: str, shape: tuple, output_shapes: tuple) -> int:
    """Where a tuple-returning forward returns the stream it makes inside itself in variable ``var``:
    the one place every ``return a, b`` of the forward puts ``var``, whose captured item has the
    stream's ``shape``.  A first control block makes its stream from the control input and the hidden
    state, so no forward parameter carries it; its name tells its item apart::

        control = self.proj_in(control) + x        # var "control", made inside the unit
        ...
        return hint, control                       # -> 1

    Raises :class:`NoStreams` with the reason when the returns do not tell."""
    returns = _returned_names(cls)
    places = {names.index(var) for names in returns if var in names}
    if not var or not returns or len(places) != 1 or any(var not in names for names in returns):
        raise NoStreams(f"nor does it return the stream it makes inside itself ({var!r}) as one item of each "
                        "tuple it returns")
    index = places.pop()
    if index >= len(output_shapes) or tuple(output_shapes[index]) != tuple(shape):
        raise NoStreams(f"nor is item {index} of what it returned shaped like the stream it makes inside itself "
                        f"({var!r})")
    return index


def identifier(arg: str) -> str:
    """A name made from a stream's argument for variables and buffers: ``args[1]`` -> ``args_1``."""
    return "_".join(part for part in re.split(r"\W+", arg) if part)


def positional_name(forward, position: int) -> str | None:
    """The name of positional argument ``position`` of ``forward`` (a bound method): its parameter, or
    ``args[i]`` where it lands in a ``*args`` (``def forward(self, *args, **kwargs)`` -> ``args[1]``)."""
    params = list(inspect.signature(forward).parameters.values())
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if position < len(named):
        return named[position]
    rest = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
    return None if rest is None else f"{rest}[{position - len(named)}]"


def assigned_item(code: str, index: int) -> str:
    """The name a tuple-unpacking statement assigns item ``index`` of its value to, else "":
    ``context, x = block(context, x, c=c)`` (or ``= checkpoint(block, context, x)``), 1 -> ``x``."""
    try:
        tree = ast.parse(code.strip() or "0")
    except SyntaxError:
        return ""
    stmt = tree.body[0] if len(tree.body) == 1 else None
    targets = stmt.targets if isinstance(stmt, ast.Assign) else []
    if len(targets) != 1 or not isinstance(targets[0], (ast.Tuple, ast.List)):
        return ""
    items = targets[0].elts
    return items[index].id if index < len(items) and isinstance(items[index], ast.Name) else ""


def _unique_index(shapes: tuple, shape: tuple) -> int | None:
    places = [i for i, s in enumerate(shapes) if s == shape]
    return places[0] if len(places) == 1 else None


def _streams_by_shape(path: str, module: nn.Module, starts: list[fx.Node], input_shapes: tuple, output_shapes: tuple,
                      value_params: set[str]) -> list[FoundStream]:
    """Streams of a unit whose forward returns a tuple built elsewhere (SD3's reference joint block:
    ``def forward(self, *args, **kwargs): return block_mixing(*args, ..., **kwargs)``), told apart by
    shape: a residual chain starts from a positional argument of the unit's call whose shape no other
    argument has, and one item of the returned tuple, no other, has that shape::

        context, x = block(context, x, c=c)   # [B, 154, C], [B, 4096, C] -> streams args[0] -> 0, args[1] -> 1
    """
    found: dict[str, FoundStream] = {}
    for start in starts:
        node = origin(start, path, value_params)
        if inside(node, path):
            continue
        shape = tuple(node.meta["val"].shape)
        position, index = _unique_index(input_shapes, shape), _unique_index(output_shapes, shape)
        name = positional_name(module.forward, position) if position is not None else None
        if name is not None and index is not None:
            found.setdefault(name, FoundStream(arg=name, node=node, out_index=index, position=position))
    return sorted(found.values(), key=lambda s: s.position)


# -- folded batches ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    axis: int | None  # the axis holding the root's samples
    fold: str | None  # that axis holds F rows per sample: "interleave" or "repeat"; None: one row each


def _merged(in_shape, out_shape) -> int | None:
    """k when a view merges the first k axes of in_shape into out_shape's first axis, else None."""
    return next((k for k in range(2, len(in_shape) + 1) if math.prod(in_shape[:k]) == out_shape[0]), None)


def _view_layout(node: fx.Node, src: _Layout, batch: int) -> _Layout | None:
    """The layout after a view: the samples' axis kept, merged with the axes after it (folded) or
    before it, or split back out of a folded axis.  Leading axes of size 1 (``x[None]``) are skipped."""
    inp = node.args[0]
    in_shape, out_shape = tuple(inp.meta["val"].shape), tuple(node.meta["val"].shape)
    if src.axis is None or not out_shape:
        return None
    lead_in = next((i for i, s in enumerate(in_shape) if s != 1), len(in_shape))
    lead_out = next((i for i, s in enumerate(out_shape) if s != 1), len(out_shape))
    if 0 < lead_in <= src.axis or lead_out:
        inner = _view_layout_of(in_shape[lead_in:], out_shape[lead_out:], _Layout(src.axis - lead_in, src.fold), batch)
        return None if inner is None or inner.axis is None else _Layout(inner.axis + lead_out, inner.fold)
    return _view_layout_of(in_shape, out_shape, src, batch)


def _view_layout_of(in_shape: tuple, out_shape: tuple, src: _Layout, batch: int) -> _Layout | None:
    if src.axis < 0 or not out_shape or not in_shape:
        return None
    if src.axis == 0 and out_shape[0] == in_shape[0]:
        return src
    k = _merged(in_shape, out_shape) if src.fold is None else None
    if k is not None and src.axis < k:
        kept = [in_shape[i] for i in range(k) if i != src.axis]
        if src.axis == 0 or all(s == 1 for s in kept[:src.axis]):
            return _Layout(0, "interleave")
        if all(s == 1 for s in kept[src.axis:]):
            return _Layout(0, "repeat")
        return None
    if src.axis == 0 and len(out_shape) > 1 and out_shape[0] * out_shape[1] == in_shape[0]:
        # unfolded again: [B*F, ...] -> [B, F, ...] (interleaved) or [F*B, ...] -> [F, B, ...] (repeated)
        if src.fold == "interleave" and out_shape[0] == batch:
            return _Layout(0, None)
        if src.fold == "repeat" and out_shape[1] == batch:
            return _Layout(1, None)
    return None


def _reorders_rows(node: fx.Node) -> bool:
    """Does ``node`` gather or permute the rows of its input's first axis (``x[idx]``, ``x.flip(0)``)?"""
    args = node.args
    if node.target is aten.index.Tensor:
        return bool(args[1]) and args[1][0] is not None
    if node.target in (aten.index_select.default, aten.gather.default):
        return args[1] == 0
    if node.target in (aten.flip.default, aten.roll.default):
        dims = args[1] if node.target is aten.flip.default else (args[2] if len(args) > 2 else ())
        return 0 in dims or not dims
    return False


def _layout(node: fx.Node, layouts: dict, value_params: set[str], batch: int) -> _Layout | None:
    """How the root's samples lie on ``node``, from its inputs' layouts."""
    inputs = [n for n in data_inputs(node, value_params) if layouts.get(n) is not None]
    if not inputs:
        return None
    shape = tuple(node.meta["val"].shape)
    src, first = layouts[inputs[0]], inputs[0]
    if node.target is aten.permute.default and src.axis is not None:
        return _Layout(list(node.args[1]).index(src.axis) if src.axis in node.args[1]
                       else [d % len(shape) for d in node.args[1]].index(src.axis), src.fold)
    if node.target is aten.transpose.int and src.axis is not None:
        a, b = (d % len(shape) for d in node.args[1:3])
        return _Layout(b if src.axis == a else a if src.axis == b else src.axis, src.fold)
    if node.target in _VIEWS and node.args[0] is first:
        return _view_layout(node, src, batch)
    if node.target is aten.repeat_interleave.self_int and src == _Layout(0, None) and node.args[2:3] == (0,):
        return _Layout(0, "interleave")
    if node.target is aten.repeat.default and src == _Layout(0, None) and list(node.args[1][1:]) == [1] * (len(shape) - 1):
        return _Layout(0, "repeat")
    if node.target in _SAME_LAYOUT:
        return src
    if node.target is aten.unsqueeze.default and src.axis is not None:
        dim = node.args[1] % len(shape)
        return _Layout(src.axis + (dim <= src.axis), src.fold)
    if node.target is aten.slice.Tensor and src.axis is not None:
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(shape)
        return src if dim != src.axis or shape[dim] == first.meta["val"].shape[dim] else None
    if node.target is aten.select.int and src.axis is not None:
        dim = node.args[1] % first.meta["val"].dim()
        return None if dim == src.axis else _Layout(src.axis - (dim < src.axis), src.fold)
    if node.target is aten.cat.default:
        return _cat_layout(node, layouts)
    if _reorders_rows(node):
        return None
    rows = {layouts[n] for n in inputs if layouts[n].axis is not None and n.meta["val"].dim() == len(shape)
            and n.meta["val"].shape[layouts[n].axis] == shape[layouts[n].axis]}
    return rows.pop() if len(rows) == 1 else None


def _cat_layout(node: fx.Node, layouts: dict) -> _Layout | None:
    """A ``torch.cat`` along another axis than the samples' keeps their layout when every part
    computed from the inputs holds them alike (the others: learned tokens, constants):
    ``torch.cat([img, txt], dim=0)`` of sequence-first [L, B, C] tokens."""
    rank = node.meta["val"].dim()
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
    found = {layouts[p] for p in node.args[0] if p in layouts}
    if len(found) != 1:
        return None
    layout = found.pop()
    return layout if layout is not None and layout.axis is not None and layout.axis != dim else None


def batch_layouts(graph: fx.Graph, value_params: set[str], batch: int) -> dict[fx.Node, _Layout]:
    """For each node computed from the root's inputs: where the samples lie (one forward pass).
    Root inputs with ``batch`` rows hold one sample per row."""
    layouts: dict[fx.Node, _Layout] = {}
    for node in graph.nodes:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() == 0:
            continue
        if node.op == "placeholder":
            if node.name not in value_params and val.shape[0] == batch:
                layouts[node] = _Layout(0, None)
        elif node.op == "call_function":
            found = _layout(node, layouts, value_params, batch)
            if found is not None:
                layouts[node] = found
    return layouts


def fold_of(node: fx.Node, layouts: dict, batch: int) -> tuple[bool, str | None]:
    """(known, fold) of a stream: (True, None) for one row per sample, (True, "interleave" /
    "repeat") for F rows per sample, (True, "sequence_first") for samples on axis 1 ([L, B, C]),
    (False, None) when the analysis cannot tell."""
    shape = node.meta["val"].shape
    layout = layouts.get(node)
    if layout is not None and layout.axis == 0 and (layout.fold is None) == (shape[0] == batch):
        return True, layout.fold
    if layout == _Layout(1, None) and shape[1] == batch:
        return True, "sequence_first"
    return shape[0] == batch, None
