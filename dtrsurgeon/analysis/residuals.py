"""Residual pass: which adds are residual connections, grouped into chains.

An ``add(a, b)`` (or ``lerp(a, b, w)``, EDM2's magnitude-preserving sum) is residual when one operand is computed from the other
(``b`` is reachable from ``a`` in the data-flow graph: ``a`` is the skip, ``b``
the branch), or when the skip is a short projection of the branch's source
(``conv1x1(x) + f(x)``, ``avgpool(x) + f(x)``: a projection skip).  A projection
may add its bias as a separate broadcast add and resample with a filter it
computes per call (EDM's ``Conv2d``: ``conv2d(x, w).add_(b.reshape(1, -1, 1, 1))``,
``conv_transpose2d(x, f.tile(...), stride=2)``): its stream is the conv's input.
``x + pos_embed`` and ``t_emb + y_emb`` have no such path and are never taken; nor is an add
or a ``lerp`` inside a module whose branch comes from outside that module (a long skip merged into
the stream, ``torch.lerp(skip, x, fac)`` in hourglass transformers; an embedding each block adds
again, ``x + extra_pos_emb``, which the stream carries since the first block added it);
a concat skip is no add at all.  Consecutive residual adds on one stream form
a chain, attributed to the innermost module that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import fx

aten = torch.ops.aten
_ADDS = {aten.add.Tensor, aten.add_.Tensor}
# magnitude-preserving sums (EDM2: ``x.lerp(y, t) / sqrt(...)``) are residual joins too
_LERPS = {aten.lerp.Scalar, aten.lerp.Tensor, aten.lerp_.Scalar, aten.lerp_.Tensor}
# ops that move or re-type a tensor without computing across channels
SHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.alias.default, aten.clone.default, aten.contiguous.default, aten.to.dtype,
             aten._to_copy.default, aten.to.dtype_layout, aten.dropout.default}
# ops a projection skip may apply to the stream
_SKIP_OPS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default,
             aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input,
             aten.linear.default, aten.avg_pool1d.default, aten.avg_pool2d.default, aten.max_pool2d.default,
             aten.upsample_nearest2d.default, aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.default,
             aten.upsample_bilinear2d.vec, aten._upsample_nearest_exact2d.default}
# ops that re-type or copy a tensor and nothing else (``x.float()``, ``x.type_as(y)``): their first argument
_CASTS = {aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.type_as.default, aten.alias.default,
          aten.clone.default, aten.contiguous.default}
PROJECTIONS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default,
               aten.linear.default, aten.addmm.default, aten.mm.default}


@dataclass
class ResidualAdd:
    node: fx.Node
    stream: fx.Node  # the tensor both the skip and the branch come from
    skip: fx.Node  # the add's skip operand (the stream itself, or a projection of it)
    branch: fx.Node
    module: str  # innermost module path ("" for the root)
    module_key: str  # nn_module_stack key (distinguishes repeated calls)

    @property
    def projection(self) -> bool:
        return uncast(self.skip) is not uncast(self.stream)

    @property
    def skip_casts(self) -> list[fx.Node]:
        """The casts that make the skip from the stream (``x.float()``), skip first; [] for a projection."""
        casts, node = [], self.skip
        while node is not self.stream and node.op == "call_function" and node.target in _CASTS:
            casts.append(node)
            node = node.args[0]
        return casts if node is self.stream else []


@dataclass
class ResidualChain:
    module: str
    module_key: str
    adds: list[ResidualAdd] = field(default_factory=list)

    @property
    def start(self) -> fx.Node:
        """The stream entering the chain."""
        return self.adds[0].stream

    @property
    def end(self) -> fx.Node:
        return self.adds[-1].node


def uncast(node: fx.Node) -> fx.Node:
    """The tensor ``node`` re-types or copies: ``x.float()`` and ``x.float().type_as(y)`` -> ``x``."""
    while node.op == "call_function" and node.target in _CASTS and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _cast_source(skip: fx.Node, branch: fx.Node, flow: nx.DiGraph, path: str) -> fx.Node | None:
    """The stream when ``skip`` is a cast of a tensor the branch is computed from.  Each ``.float()``
    call is a node of its own, so ``(x.float() + attn(norm(x.float()))).type_as(x)`` (Wan's blocks)
    adds one cast of ``x`` to a branch computed from another: the stream is ``x``, the value the casts
    start from inside module ``path`` (a float32 ``x.float()`` is ``x`` itself, so the graph may chain
    one such cast onto the last: the branch's own ``norm(x.float())`` is no stream)."""
    source = skip
    while (source.op == "call_function" and source.target in _CASTS and isinstance(source.args[0], fx.Node)
           and (not path or _computed_in(source, path))):
        source = source.args[0]
    return source if source is not skip and nx.has_path(flow, source, branch) else None


def dataflow_graph(graph: fx.Graph) -> nx.DiGraph:
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node)
        for inp in node.all_input_nodes:
            g.add_edge(inp, node)
    return g


def innermost_module(node: fx.Node) -> tuple[str, str]:
    """(module path, stack key) of the innermost module that ran ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    key, (path, _cls) = list(stack.items())[-1]
    return path, key


def data_inputs(node: fx.Node, params: set[str]) -> list[fx.Node]:
    """Inputs that carry activations (not parameters, buffers or constants)."""
    return [n for n in node.all_input_nodes
            if n.op != "get_attr" and not (n.op == "placeholder" and n.name in params)
            and isinstance(n.meta.get("val"), torch.Tensor)]


def _bias_add_input(node: fx.Node, params: set[str]) -> fx.Node | None:
    """``h`` for ``h + b`` where ``b`` is broadcast into ``h`` (a bias added after a conv), else None."""
    if node.target not in _ADDS:
        return None
    inputs = data_inputs(node, params)
    shape = node.meta["val"].shape
    full = [n for n in inputs if n.meta["val"].shape == shape]
    if len(full) == 1 and all(n.meta["val"].numel() < full[0].meta["val"].numel() for n in inputs if n is not full[0]):
        return full[0]
    return None


def _projection_source(skip: fx.Node, branch: fx.Node, flow: nx.DiGraph, params: set[str]) -> fx.Node | None:
    """The stream a projection skip was computed from, if ``skip`` is one: a few reshapes,
    convs, pools and bias adds on a tensor the branch is computed from too."""
    node, projected = skip, False
    for _ in range(8):
        if node.op != "call_function":
            return None
        if node.target in _SKIP_OPS:
            projected = True
            node = node.args[0]  # the activation; the weight may be computed (EDM's resampling filter)
        elif node.target in SHAPE_OPS:
            inputs = data_inputs(node, params)
            if len(inputs) != 1:
                return None
            node = inputs[0]
        elif (inner := _bias_add_input(node, params)) is not None:
            node = inner
        else:
            return None
        if not isinstance(node, fx.Node):
            return None
        if projected and nx.has_path(flow, node, branch):
            return node
    return None


def _computed_in(node: fx.Node, path: str) -> bool:
    """Is ``node`` computed inside module ``path`` (not handed to it, and not in the root)?"""
    return bool(path) and any(p == path or p.startswith(path + ".") for p, _ in (node.meta.get("nn_module_stack") or {}).values())


def find_residual_adds(graph: fx.Graph, params: set[str] = frozenset(), flow: nx.DiGraph | None = None) -> list[ResidualAdd]:
    """Every add (or lerp) of ``graph`` that merges a branch back into the stream it was computed from."""
    flow = dataflow_graph(graph) if flow is None else flow
    found = []
    for node in graph.nodes:
        if not _same_shape_tensor_add(node):
            continue
        path, key = innermost_module(node)
        roles = _operand_roles(node.args[0], node.args[1], flow, params, path)
        if roles is None:
            continue
        stream, skip, branch = roles
        if _broadcast(skip) and not _reaches_past_its_adds(skip, branch, flow, path):
            continue  # a modulation expanded to the stream's shape, added to the normalised stream
        if (node.target in _LERPS or path) and not _computed_in(branch, path):
            # the branch comes into the module from outside: a long skip merged into the stream (hourglass
            # U-Nets), or an embedding every block adds again (Cosmos' ``x + extra_pos_emb``), not a residual block
            continue
        found.append(ResidualAdd(node=node, stream=stream, skip=skip, branch=branch, module=path, module_key=key))
    return found


def _same_shape_tensor_add(node: fx.Node) -> bool:
    """An add or lerp of two graph tensors of the output's shape: one operand broadcast into the other
    (``x + bias``, ``x + pos_embed``) is a bias or an embedding, never a stream meeting its branch."""
    if node.op != "call_function" or node.target not in _ADDS | _LERPS:
        return False
    a, b = node.args[0], node.args[1]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return False
    va, vb, vo = (n.meta.get("val") for n in (a, b, node))
    return all(isinstance(v, torch.Tensor) for v in (va, vb, vo)) and va.shape == vo.shape == vb.shape


def _operand_roles(a: fx.Node, b: fx.Node, flow: nx.DiGraph, params: set[str], module: str):
    """(stream, skip, branch) of ``a + b``, or None where neither operand leads to the other: the branch is
    computed from the skip (``x + attn(norm(x))``: the skip is the stream), or the skip is a cast of the
    stream the branch is computed from (``x.float() + attn(norm(x.float()))``), or a projection of it
    (``skip_conv(h) + convs(h)``, a U-Net ResBlock changing width): the stream is then ``x`` or ``h``."""
    for first, second in ((a, b), (b, a)):
        if nx.has_path(flow, first, second):
            return first, first, second
    for find in (lambda x, y: _cast_source(x, y, flow, module), lambda x, y: _projection_source(x, y, flow, params)):
        for first, second in ((a, b), (b, a)):
            if (src := find(first, second)) is not None:
                return src, first, second
    return None


def _broadcast(node: fx.Node) -> bool:
    """Is ``node`` a smaller tensor expanded to a stream's shape (through casts and copies)?
    ``shift.unsqueeze(0).expand(L, -1, -1).contiguous()``: an adaLN shift every block adds to its
    normalised input, ``norm(x) * (1 + scale) + shift``; it fed the blocks before, so the stream is
    computed from it and the add looks like a residual one with the shift for its skip."""
    node = uncast(node)
    return node.op == "call_function" and node.target is aten.expand.default


def _reaches_past_its_adds(skip: fx.Node, branch: fx.Node, flow: nx.DiGraph, module: str) -> bool:
    """Is ``branch`` computed from the expanded ``skip`` other than through adds of it, inside ``module``
    (the module running the add; the whole graph when that is the root)?  Learned queries expanded to the
    batch, ``q = self.queries.expand(B, -1, -1)``, then ``q = q + attn(norm(q), ctx)``: the branch reads
    ``q`` itself, so ``q`` is the stream entering the chain.  An adaLN shift reaches a later block's branch
    only through the earlier blocks' ``norm(x) * (1 + scale) + shift``: a conditioning vector broadcast over
    tokens, no stream.  Only paths inside the module count: a conditioning ``c`` a block adds to its
    normalised input, ``h = norm1(x) + c``, and gates its MLP with, ``x + mlp(norm2(x)) * gate(c)``, reaches
    the next block's ``norm1(x)`` through this block's gate, which is no stream entering the next block."""
    adds_of_it = [u for u in skip.users if u.op == "call_function" and u.target in _ADDS | _LERPS]
    if module:
        flow = flow.subgraph([n for n in flow.nodes if n is skip or _computed_in(n, module)])
    return branch in flow and nx.has_path(nx.restricted_view(flow, adds_of_it, []), skip, branch)


def _on_stream(src: fx.Node, dst: fx.Node, depth: int = 3) -> bool:
    """Is ``dst`` ``src`` itself, or ``src`` passed through at most ``depth``
    single-input, shape-preserving ops (``(x + h) / scale``, a view, ``.type_as(y)``)?"""
    frontier = [src]
    for _ in range(depth + 1):
        if dst in frontier:
            return True
        frontier = [
            u for n in frontier for u in n.users
            if (len(u.all_input_nodes) == 1 or (u.target in _CASTS and u.args[0] is n))
            and getattr(u.meta.get("val"), "shape", None) == n.meta["val"].shape
        ]
    return False


def group_chains(adds: list[ResidualAdd]) -> list[ResidualChain]:
    """Chains of consecutive residual adds, per module call, in graph order."""
    chains: list[ResidualChain] = []
    for add in adds:
        for chain in chains:
            if chain.module_key == add.module_key and _on_stream(chain.end, add.stream):
                chain.adds.append(add)
                break
        else:
            chains.append(ResidualChain(module=add.module, module_key=add.module_key, adds=[add]))
    return chains
