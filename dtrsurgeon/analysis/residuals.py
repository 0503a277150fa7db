"""Residual pass: which adds are residual connections, grouped into chains.

An ``add(a, b)`` is residual when one operand is computed from the other:
``b`` is reachable from ``a`` in the data-flow graph (``a`` is the skip, ``b``
the branch).  ``x + pos_embed`` and ``t_emb + y_emb`` have no such path and are
never taken; a concat skip is no add at all.  Consecutive residual adds on one
stream (the output of one is, through shape-preserving unary ops, the skip of
the next) form a chain, attributed to the innermost module that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import fx

_ADDS = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}


@dataclass
class ResidualAdd:
    node: fx.Node
    skip: fx.Node  # the operand the branch was computed from
    branch: fx.Node
    module: str  # innermost module path ("" for the root)
    module_key: str  # nn_module_stack key (distinguishes repeated calls)


@dataclass
class ResidualChain:
    module: str
    module_key: str
    adds: list[ResidualAdd] = field(default_factory=list)

    @property
    def start(self) -> fx.Node:
        """The stream entering the chain (the first add's skip operand)."""
        return self.adds[0].skip

    @property
    def end(self) -> fx.Node:
        return self.adds[-1].node


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


def find_residual_adds(graph: fx.Graph, flow: nx.DiGraph | None = None) -> list[ResidualAdd]:
    flow = dataflow_graph(graph) if flow is None else flow
    found = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _ADDS:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        va, vb, vo = (n.meta.get("val") for n in (a, b, node))
        if not all(isinstance(v, torch.Tensor) for v in (va, vb, vo)):
            continue
        if va.shape != vo.shape and vb.shape != vo.shape:
            continue
        if nx.has_path(flow, a, b):
            skip, branch = a, b
        elif nx.has_path(flow, b, a):
            skip, branch = b, a
        else:
            continue
        if skip.meta["val"].shape != vo.shape:
            continue  # the "skip" is broadcast into the result: a bias, not a stream
        path, key = innermost_module(node)
        found.append(ResidualAdd(node=node, skip=skip, branch=branch, module=path, module_key=key))
    return found


def _on_stream(src: fx.Node, dst: fx.Node, depth: int = 3) -> bool:
    """Is ``dst`` ``src`` itself, or ``src`` passed through at most ``depth``
    single-input, shape-preserving ops (``(x + h) / scale``, a view)?"""
    frontier = [src]
    for _ in range(depth + 1):
        if dst in frontier:
            return True
        frontier = [
            u for n in frontier for u in n.users
            if len(u.all_input_nodes) == 1 and getattr(u.meta.get("val"), "shape", None) == n.meta["val"].shape
        ]
    return False


def group_chains(adds: list[ResidualAdd]) -> list[ResidualChain]:
    """Chains of consecutive residual adds, per module call, in graph order."""
    chains: list[ResidualChain] = []
    for add in adds:
        for chain in chains:
            if chain.module_key == add.module_key and _on_stream(chain.end, add.skip):
                chain.adds.append(add)
                break
        else:
            chains.append(ResidualChain(module=add.module, module_key=add.module_key, adds=[add]))
    return chains
