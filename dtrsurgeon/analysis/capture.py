"""Capture pass: the model's forward as an ATen-level torch.fx graph.

Plain ``torch.fx.symbolic_trace`` fails on real backbones (``int()`` of a
Proxy, Python control flow on shapes, iterating a Proxy), so capture uses
``torch.export.export(..., strict=False)``: the model's own Python runs on fake
tensors, shapes are concrete, and every node keeps ``nn_module_stack`` (which
module it belongs to) and ``stack_trace`` (file and line).  The captured graph
is only analysed; the model that trains is the user's own code.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import operator
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from dtrsurgeon.analysis.callsites import live_frames
from dtrsurgeon.errors import CaptureError


@dataclass
class Capture:
    graph: fx.Graph
    args: tuple
    kwargs: dict
    callers: dict[str, list]  # module path -> source frames that led to its first call (root.forward first)
    params: dict[str, str]  # placeholder name -> parameter / buffer / constant name
    returns_tensor: dict[str, bool]  # module path -> whether its first call returned a plain tensor
    # (operator, module path, modules inside) of sub-graph regions left opaque (torch.cond, ...): not analysed
    opaque: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


class OpaqueRegionWarning(UserWarning):
    """Part of the captured forward sits in a sub-graph the analysis cannot see into."""


def _module_paths(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def _where_capture_stopped(paths: dict[int, str], exc: BaseException) -> str:
    """'module path (file:line: code)' of the innermost user frame that ran
    inside one of the model's modules when ``exc`` was raised."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        filename = frame.f_code.co_filename
        if owner is None or id(owner) not in paths or "/torch/" in filename:
            continue
        found = (paths[id(owner)] or "<root>", type(owner).__name__, filename, lineno)
    if found is None:
        return "outside the model's modules"
    path, cls, filename, lineno = found
    import linecache

    code = linecache.getline(filename, lineno).strip()
    return f"module {path!r} ({cls}) at {filename}:{lineno}: {code}"


def capture(model: nn.Module, args: tuple, kwargs: dict) -> Capture:
    """Export ``model(*args, **kwargs)`` in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    paths = _module_paths(model)
    callers: dict[str, list] = {}

    returns_tensor: dict[str, bool] = {}

    def record_caller(module, _inputs):
        path = paths.get(id(module))
        if path is not None and path not in callers:
            callers[path] = _user_frames(model, live_frames(sys._getframe(1)))

    def record_output(module, _inputs, output):
        path = paths.get(id(module))
        if path is not None and path not in returns_tensor:
            returns_tensor[path] = type(output) is torch.Tensor or isinstance(output, torch.nn.Parameter)

    # One eager call records who calls each module (export may run copies of the
    # modules, so it cannot tell); then export gives the graph.
    handles = [nn.modules.module.register_module_forward_pre_hook(record_caller),
               nn.modules.module.register_module_forward_hook(record_output)]
    stage = "eager"
    try:
        with torch.no_grad():
            model(*args, **kwargs)
        for h in handles:
            h.remove()
        stage = "export"
        with _quiet_torch_logs():
            ep = torch.export.export(model, tuple(args), dict(kwargs), strict=False)
    except Exception as exc:  # every capture failure becomes one actionable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("The model failed on the example inputs themselves: check them (pass example_inputs=, "
                "CLI --example-inputs FILE.pt)." if stage == "eager" else
                "Capture runs the forward on fake tensors, so data-dependent Python (if on tensor values, "
                ".item(), .tolist(), numpy) cannot be followed: make that code shape-only, or route the "
                "blocks below it by calling dtrsurgeon on that submodule.")
        raise CaptureError(
            f"cannot capture {type(model).__name__}.forward: {type(exc).__name__}: {first[:300]} -- "
            f"stopped in {_where_capture_stopped(paths, exc)}. {hint}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    sig = ep.graph_signature
    params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    graph, opaque = inline_subgraphs(ep.graph_module)
    for op, path, inside in opaque:
        where = f"module {path!r} ({named_class(model, path)})" if path else f"{type(model).__name__}.forward"
        warnings.warn(
            f"dtrsurgeon: a {op} region in {where} is a sub-graph the analysis does not enter; residual blocks "
            f"that run inside it ({', '.join(inside) if inside else 'none found'}) are not routed",
            OpaqueRegionWarning, stacklevel=3)
    return Capture(graph=graph, args=tuple(args), kwargs=dict(kwargs), callers=callers, params=params,
                   returns_tensor=returns_tensor, opaque=tuple(opaque))


def named_class(model: nn.Module, path: str) -> str:
    module = dict(model.named_modules()).get(path)
    return type(module).__name__ if module is not None else "?"


# Higher-order ops that only run their sub-graph under a mode (grad mode, autocast) or call it
# once (invoke_subgraph): their body is inlined into the analysed graph.  Value: the index of the
# sub-graph argument and of the first operand.  torch.export (strict=False) turns every switch of
# grad mode inside the forward (``with torch.no_grad():`` in guided-diffusion's checkpoint
# Function) into ``wrap_with_set_grad_enabled(enabled, submod, *operands)``.
_INLINED_HOPS = {
    "wrap_with_set_grad_enabled": (1, 2),
    "wrap_with_autocast": (4, 5),
    "invoke_subgraph": (0, 2),
}


def _hop_name(node: fx.Node) -> str | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.HigherOrderOperator):
        return None
    return node.target.name()


def _innermost_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def inline_subgraphs(gm: fx.GraphModule) -> tuple[fx.Graph, list]:
    """A flat copy of ``gm``'s graph: the bodies of grad-mode, autocast and
    invoke_subgraph wrappers are copied in place of the wrapper (their nodes keep
    their metadata: module stack, stack trace, fake values), and the wrapper's
    ``getitem`` outputs become the body's outputs.  Other higher-order ops with
    sub-graphs (``torch.cond``, ``map``, loops) stay opaque and are returned as
    ``(op, module path, module paths inside)``.
    """
    graph = fx.Graph()
    opaque: list = []

    def sub_module(owner: fx.GraphModule, arg) -> fx.GraphModule | None:
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            value = getattr(owner, arg.target, None)
            return value if isinstance(value, fx.GraphModule) else None
        return None

    def modules_inside(owner: fx.GraphModule, node: fx.Node) -> list[str]:
        paths = []
        for arg in node.args:
            sub = sub_module(owner, arg)
            if sub is not None:
                for n in sub.graph.nodes:
                    paths.append(_innermost_path(n))
                    if _hop_name(n):
                        paths += modules_inside(sub, n)
        return paths

    def copy(owner: fx.GraphModule, env: dict) -> object:
        """Copy ``owner``'s nodes into ``graph`` with placeholders already in ``env``; returns the output value."""
        inlined: dict[fx.Node, object] = {}  # wrapper node -> its body's output value
        for node in owner.graph.nodes:
            if node.op == "placeholder":
                if node not in env:
                    env[node] = graph.node_copy(node)
                continue
            if node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: env[n])
            if node.op == "call_function" and node.target is operator.getitem and node.args[0] in inlined:
                out = inlined[node.args[0]]
                env[node] = out[node.args[1]] if isinstance(out, (tuple, list)) else out
                continue
            name = _hop_name(node)
            if name in _INLINED_HOPS:
                at, first = _INLINED_HOPS[name]
                sub = sub_module(owner, node.args[at]) if len(node.args) > at else None
                if sub is not None:
                    phs = [n for n in sub.graph.nodes if n.op == "placeholder"]
                    operands = list(node.args[first:])
                    if len(operands) == len(phs):
                        inner = {ph: fx.node.map_arg(op, lambda n: env[n]) for ph, op in zip(phs, operands)}
                        inlined[node] = copy(sub, inner)
                        env[node] = inlined[node]  # used by getitem (above) or, single output, directly
                        continue
            if name is not None and any(sub_module(owner, a) is not None for a in node.args):
                inside = [p for p in dict.fromkeys(modules_inside(owner, node)) if p]
                opaque.append((name, _innermost_path(node), tuple(inside)))
            env[node] = graph.node_copy(node, lambda n: env[n])
        return None

    graph.output(copy(gm, {}))
    for node in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:
        graph.erase_node(node)  # sub-graphs of inlined wrappers
    return graph, opaque


@contextlib.contextmanager
def _quiet_torch_logs():
    """Export logs and prints its partial graph when it fails; our one-line error says it all."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


_TORCH_DIR = os.path.dirname(torch.__file__)
_CONTAINERS = os.path.join(_TORCH_DIR, "nn", "modules", "container.py")


def _user_frames(model: nn.Module, stack: list) -> list:
    """The frames from the root's forward down to a module call: the model's
    own code and torch's containers (nn.Sequential calls its children), not
    torch's machinery (``_call_impl``, export, checkpoint internals)."""
    from dtrsurgeon.analysis.callsites import is_frame_of

    frames = list(stack)
    root = next((i for i, f in enumerate(frames) if is_frame_of(f, type(model).forward)), None)
    if root is None:
        return []
    return [f for f in frames[root:] if not f.file.startswith(_TORCH_DIR) or f.file == _CONTAINERS]


# -- example inputs -----------------------------------------------------------

_IMAGE_ARGS = {"x", "sample", "hidden_states", "input", "inputs", "img", "image", "images", "latents", "z", "x_t", "xt"}
_TIME_ARGS = {"t", "timestep", "timesteps", "time", "noise_labels", "sigma", "sigmas", "noise_level"}
_LABEL_ARGS = {"y", "class_labels", "labels", "label", "class_label", "classes"}
_CHANNEL_ATTRS = ("in_channels", "in_chans", "img_channels", "channels")
_SIZE_ATTRS = ("input_size", "img_size", "image_size", "sample_size", "img_resolution", "resolution")
# Number of classes of an integer class-id input (an nn.Embedding table): DiT, ADM, U-ViT, diffusers.
_LABEL_COUNTS = ("num_classes", "n_classes", "num_embeds_ada_norm", "num_class_embeds")
# Length of a float label vector, a class given one-hot (EDM / EDM2 convention; 0 = unconditional).
_LABEL_DIMS = ("label_dim",)
# A label embedding by its attribute name (map_label, emb_label, label_emb, class_embedding, ...).
_LABEL_MODULE = re.compile(r"(label|class).*(emb|map|proj)|(emb|map|proj).*(label|class)", re.IGNORECASE)
# Token grid of a patch model: positional embedding [1, extras + (side / patch)**2, dim].
_POS_EMBEDS = ("pos_embed", "pos_embedding", "positional_embedding", "position_embedding")
_EXTRA_TOKENS = ("extras", "num_prefix_tokens", "num_extra_tokens")
# Side of the example image when the model stores no size: 64 = 2**6 survives the halvings
# of a U-Net with up to six downsamplings and is a multiple of the usual patch sizes (2 to 64).
DEFAULT_IMAGE_SIZE = 64


class GuessedInputWarning(UserWarning):
    """An example input was guessed without the model saying its size."""


def _int(value: Any, zero: bool = False) -> int | None:
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], int):
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (zero and value == 0)):
        return value
    return None


def _attr(mod: nn.Module, name: str, zero: bool = False) -> int | None:
    with warnings.catch_warnings():  # diffusers warns on config values read as attributes
        warnings.simplefilter("ignore")
        return _int(getattr(mod, name, None), zero)


def _first_attr(model: nn.Module, names: tuple[str, ...], zero: bool = False) -> int | None:
    """The first positive int (or first item of an int tuple) stored under one of
    ``names``: on ``model`` itself first, then on its modules in ``modules()`` order."""
    for name in names:
        if (value := _attr(model, name, zero)) is not None:
            return value
    for name in names:
        for mod in model.modules():
            if (value := _attr(mod, name, zero)) is not None:
                return value
    return None


def _image_channels(model: nn.Module) -> int | None:
    """Channels of the image input.

    The named attributes first (``in_channels`` is also what the first conv of
    a U-Net and the conv of a patch embedding store, and ``modules()`` yields
    modules in the order they were assigned, so the input conv comes before
    the convs inside the blocks).  Then a patch embedding made of a linear
    layer over flattened patches: ``in_features / patch_size**2``.
    """
    channels = _first_attr(model, _CHANNEL_ATTRS)
    if channels is not None:
        return channels
    for mod in model.modules():
        patch = _attr(mod, "patch_size")
        if patch is None:
            continue
        for sub in mod.modules():
            features = _attr(sub, "in_features")
            if features is not None and features % (patch * patch) == 0:
                return features // (patch * patch)
    return None


def _token_grid_size(model: nn.Module) -> int | None:
    """Image side from a patch model's positional embedding: a [1, L, D] tensor
    ``pos_embed`` with ``patch_size`` on its module (or on a module inside it,
    the patch embedding) and ``extras`` non-image tokens (default 0) gives
    ``sqrt(L - extras) * patch_size`` when ``L - extras`` is a square."""
    for mod in model.modules():
        for name in _POS_EMBEDS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = getattr(mod, name, None)
            if not isinstance(table, torch.Tensor) or table.dim() != 3 or table.shape[0] != 1:
                continue
            patch = _first_attr(mod, ("patch_size",))
            if patch is None:
                continue
            tokens = table.shape[1] - (_first_attr(mod, _EXTRA_TOKENS) or 0)
            side = math.isqrt(tokens) if tokens > 0 else 0
            if side > 0 and side * side == tokens:
                return side * patch
    return None


def _label_input(model: nn.Module) -> tuple[str | None, int]:
    """How the model takes class labels: ("ids", n) integer ids in [0, n),
    ("onehot", n) float vectors [B, n], ("none", 0) unconditional (pass None),
    (None, 0) nothing said."""
    if (n := _first_attr(model, _LABEL_COUNTS)) is not None:
        return "ids", n
    if (n := _first_attr(model, _LABEL_DIMS, zero=True)) is not None:
        return ("onehot", n) if n else ("none", 0)
    for path, mod in model.named_modules():
        if not _LABEL_MODULE.search(path.rsplit(".", 1)[-1]):
            continue
        if (n := _attr(mod, "num_embeddings")) is not None:
            return "ids", n
        if (n := _attr(mod, "in_features")) is not None or (n := _attr(mod, "in_channels")) is not None:
            return "onehot", n
    for mod in model.modules():  # an empty label slot (`self.map_label = None`): unconditional
        slots = {**vars(mod), **mod._modules}
        if any(value is None and _LABEL_MODULE.search(name) for name, value in slots.items()):
            return "none", 0
    return None, 0


def example_inputs(model: nn.Module, timestep_arg: str, t_range: tuple[float, float], batch_size: int = 2):
    """(args, kwargs) to capture ``model`` with.

    Uses ``model.example_inputs()`` when the model has one; otherwise guesses
    each forward parameter from its name and the model:

    - timestep (``timestep_arg`` or ``t``/``timesteps``/``sigma``/...): values
      drawn in ``t_range``, integers when both ends are;
    - image (``x``/``sample``/...): ``[B, C, S, S]``.  ``C``: an
      ``in_channels``/``in_chans``/``img_channels``/``channels`` attribute of
      the model, else of its first module that has one (the first conv of a
      U-Net, the conv of a patch embedding: the image goes into it first),
      else a linear patch embedding's ``in_features / patch_size**2``.  ``S``:
      an ``input_size``/``img_size``/``image_size``/``sample_size``/
      ``img_resolution``/``resolution`` attribute, else the token grid of a
      ``pos_embed`` [1, L, D] with ``patch_size`` and ``extras``
      (``sqrt(L - extras) * patch_size``), else DEFAULT_IMAGE_SIZE (64, with a
      GuessedInputWarning: code that depends on the resolution may take
      another path than at the real size);
    - class labels (``y``/``class_labels``/...): integer ids in ``[0, n)`` for
      ``num_classes``-style models (DiT, ADM, U-ViT, diffusers), a one-hot
      float ``[B, label_dim]`` for ``label_dim`` models (EDM), ``None`` when the
      model is unconditional (``label_dim == 0``, an empty label embedding
      slot); defaulted label parameters are left to their defaults unless the
      model has classes.

    Other parameters with defaults keep them; one without raises a CaptureError.
    """
    if callable(getattr(model, "example_inputs", None)):
        args, kwargs = model.example_inputs(batch_size)
        return like_model(model, (tuple(args), dict(kwargs)))
    sig = inspect.signature(model.forward)
    gen = torch.Generator().manual_seed(0)
    kwargs: dict[str, Any] = {}
    label_kind, labels = _label_input(model)
    where = f"{type(model).__name__}.forward argument"
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty and name != timestep_arg and not (name in _LABEL_ARGS and labels):
            continue
        if name == timestep_arg or name in _TIME_ARGS:
            t0, t1 = t_range
            kwargs[name] = t0 + (t1 - t0) * torch.rand(batch_size, generator=gen)
            if float(t0).is_integer() and float(t1).is_integer():
                kwargs[name] = kwargs[name].round().long()
        elif name in _IMAGE_ARGS:
            channels = _image_channels(model)
            if channels is None:
                raise CaptureError(
                    f"cannot guess an example value for {where} {name!r}: no in_channels/in_chans/img_channels "
                    "attribute and no conv or patch embedding that says the input channels; "
                    "pass example_inputs=(args, kwargs) (CLI: --example-inputs FILE.pt)"
                )
            size = _first_attr(model, _SIZE_ATTRS) or _token_grid_size(model)
            if size is None:
                patch = _first_attr(model, ("patch_size",)) or 1
                size = patch * -(-DEFAULT_IMAGE_SIZE // patch)
                warnings.warn(
                    f"{where} {name!r}: no size attribute or positional-embedding grid, so the example image is "
                    f"{size}x{size}; pass example_inputs (CLI: --example-inputs FILE.pt) to capture at the real size",
                    GuessedInputWarning,
                    stacklevel=2,
                )
            kwargs[name] = torch.randn(batch_size, channels, size, size, generator=gen)
        elif name in _LABEL_ARGS:
            if label_kind == "onehot":
                ids = torch.randint(0, labels, (batch_size,), generator=gen)
                kwargs[name] = torch.nn.functional.one_hot(ids, labels).float()
            elif label_kind == "none":
                kwargs[name] = None
            else:
                kwargs[name] = torch.randint(0, labels or 1, (batch_size,), generator=gen)
        else:
            raise CaptureError(
                f"cannot guess an example value for {where} {name!r}; "
                "pass example_inputs=(args, kwargs) (CLI: --example-inputs FILE.pt)"
            )
    return like_model(model, ((), kwargs))


def like_model(model: nn.Module, inputs):
    """Floating-point inputs in the model's dtype, every tensor on its device."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return inputs

    def convert(v):
        if isinstance(v, torch.Tensor):
            return v.to(device=param.device, dtype=param.dtype if v.is_floating_point() else v.dtype)
        return v

    return torch.utils._pytree.tree_map(convert, inputs)
