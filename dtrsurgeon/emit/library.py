"""Library emitter: one self-contained file that routes a model whose code is installed or spread over files.

A diffusers model's units live in ``resnet.py``, ``attention.py``, ``unet_2d_blocks.py`` ... of an
installed package, which ``apply`` must not rewrite.  The file written instead holds subclasses of the
library's classes that override only the methods the routing edits (the methods' source, rewritten by
the same :mod:`~dtrsurgeon.emit.transformers` edits as every emitter), the helper block, and
``route(model)``, which swaps the classes of a model the library built and attaches the mask tables::

    class BasicTransformerBlock(diffusers.models.attention.BasicTransformerBlock):
        def forward(self, hidden_states, attention_mask=None, ..., *, dtr_task):
            dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, hidden_states, 2)
            hidden_states, dtr_skip = dtr_route(hidden_states, dtr_keep)
            ...                                   # the library's code
            return dtr_merge(hidden_states, dtr_skip, dtr_keep)

    model = route(DiTTransformer2DModel.from_pretrained("...", subfolder="transformer"))

The file imports torch, the library and the standard library only.  Its header names the
library and its version: ``dtrsurgeon check`` reports a file generated for another version as stale.
"""

from __future__ import annotations

import __future__
import builtins
import dis
import importlib.metadata
import re
import sys
import types
from dataclasses import dataclass, replace

import libcst as cst
from libcst.metadata import GlobalScope, MetadataWrapper, ScopeProvider
from torch import nn

from dtrsurgeon import __version__
from dtrsurgeon.emit.editplan import EditPlan, Form
from dtrsurgeon.emit.edits import unrouted_instances
from dtrsurgeon.emit.lower import edit_plan
from dtrsurgeon.emit.resolve import class_names, defined_in, parse_file, unwrapped
from dtrsurgeon.emit.source import HEADER_MARK, render_helpers
from dtrsurgeon.emit.transformers import apply_edits, function_nodes
from dtrsurgeon.errors import EmitError
from dtrsurgeon.plan import Plan

LIBRARY_FIELD = "# dtrsurgeon: library "
_HEADER_FIELD = re.compile(r"^# dtrsurgeon: (\w+) (.*)$", re.M)


# -- the header -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LibraryHeader:
    """What a library file was generated from: ``model`` is ``pkg.module:Class`` or a model file's
    name (then ``input_sha256`` is its hash); ``libraries`` are (distribution, version or "")."""

    model: str
    input_sha256: str
    spec_name: str
    spec_sha256: str
    entry: str
    kwargs: str  # JSON
    libraries: tuple[tuple[str, str], ...] = ()  # filled in by emit_library: the ones it subclasses

    def render(self) -> str:
        libs = ", ".join(f"{name} {version}" if version else name for name, version in self.libraries)
        lines = [f"{HEADER_MARK} {__version__} from {self.model} ({libs}) with {self.spec_name}: do not edit by hand.",
                 "# Regenerate with `dtrsurgeon apply`; `dtrsurgeon check` tells whether this file is up to date.",
                 f"# dtrsurgeon: model {self.model}" + (f" sha256={self.input_sha256}" if self.input_sha256 else ""),
                 f"# dtrsurgeon: spec {self.spec_name} sha256={self.spec_sha256}",
                 f"# dtrsurgeon: entry {self.entry}",
                 f"# dtrsurgeon: kwargs {self.kwargs}"]
        lines += [f"{LIBRARY_FIELD}{name} {version or '(local)'}" for name, version in self.libraries]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, where: str) -> "LibraryHeader":
        head = text.split("\n\n", 1)[0]
        fields = dict(_HEADER_FIELD.findall(head))
        libraries = tuple((line.split(" ", 1)[0], "" if line.endswith("(local)") else line.split(" ", 1)[1])
                          for line in re.findall(rf"^{LIBRARY_FIELD}(.*)$", head, re.M))
        try:
            model, _, sha = fields["model"].partition(" sha256=")
            spec_name, spec_sha = fields["spec"].rsplit(" sha256=", 1)
            return cls(model, sha, spec_name, spec_sha, fields["entry"], fields["kwargs"], libraries)
        except (KeyError, ValueError):
            raise EmitError(f"{where}: the dtrsurgeon header is damaged; regenerate the file with `dtrsurgeon apply`") from None


def is_library_file(text: str) -> bool:
    """A file written by :func:`emit_library` (its header lists the libraries it routes)."""
    return text.startswith(HEADER_MARK) and LIBRARY_FIELD in text.split("\n\n", 1)[0]


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, "" when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def libraries_of(modules: list[str]) -> tuple[tuple[str, str], ...]:
    """(distribution, version) of the top-level packages of ``modules`` (a local module or package: its
    own name and no version), sorted: ``["diffusers.models.resnet"]`` -> ``(("diffusers", "0.42.1"),)``."""
    found = {}
    dists = importlib.metadata.packages_distributions()
    for module in modules:
        top = module.split(".")[0]
        for dist in dists.get(top, [top]):
            found[dist] = installed_version(dist)
    return tuple(sorted(found.items()))


def version_change(header: LibraryHeader) -> str | None:
    """Why a library file no longer fits the installed libraries (None: it does)."""
    for name, version in header.libraries:
        now = installed_version(name)
        if version and now != version:
            return f"generated for {name} {version}, {name} {now or '(not installed)'} is installed"
    return None


# -- the routed methods -----------------------------------------------------------------------

def routed_function_nodes(edits: EditPlan) -> dict[tuple[str, str], cst.FunctionDef]:
    """(file, qualname) -> the rewritten definition of every function ``edits`` edits."""
    nodes = {}
    for file in edits.files():
        in_file = edits.in_file(file)
        missing = sorted(f.qualname for f in in_file if not f.line)
        if missing:
            raise EmitError(f"{file}: could not find {missing[0]} to rewrite")
        rewritten = function_nodes(apply_edits(file, parse_file(file), in_file))
        nodes.update(((file, f.qualname), rewritten[f.qualname]) for f in in_file)
    return nodes


def _overrides(model: nn.Module, nodes) -> dict[type, list[tuple[type, str, cst.FunctionDef]]]:
    """class -> [(class defining it, method name, rewritten definition)] for every class of the
    model's modules whose MRO resolves a method name to an edited function."""
    found: dict[type, list] = {}
    owned = set()
    for cls in dict.fromkeys(type(m) for m in model.modules()):
        seen = set()
        for base in cls.__mro__:
            for name, value in vars(base).items():
                if name in seen:
                    continue
                seen.add(name)
                func = unwrapped(value)
                key = (defined_in(func), getattr(func, "__qualname__", None))
                if key in nodes:
                    found.setdefault(cls, []).append((base, name, nodes[key]))
                    owned.add(key)
    stray = sorted(set(nodes) - owned)
    if stray:
        raise EmitError(f"{stray[0][0]}: {stray[0][1]} is edited by the routing but is no method of the model's "
                        "modules, so a subclass cannot override it; use dtrsurgeon.transform for this model")
    return found


class _ExplicitSuper(cst.CSTTransformer):
    """``super()`` -> ``super(Base, self)``: the method moves into a subclass, where the zero-argument
    form would start the lookup one class too low."""

    def __init__(self, base: str, self_name: str):
        self.base, self.self_name = base, self_name

    def leave_Call(self, original, updated):
        if isinstance(updated.func, cst.Name) and updated.func.value == "super" and not updated.args:
            return cst.parse_expression(f"super({self.base}, {self.self_name})")
        return updated


def _method_code(node: cst.FunctionDef, owner_ref: str, where: str) -> str:
    """The rewritten method's text, ``super()`` made explicit for its new place in a subclass."""
    code = cst.Module(body=[]).code_for_node(node.with_changes(leading_lines=[]))
    if re.search(r"\.__[A-Za-z]\w*(?<!__)\b", code):
        raise EmitError(f"{where}: uses a private (name-mangled) attribute; a subclass cannot override it, "
                        "use dtrsurgeon.transform for this model")
    params = node.params.params
    self_name = params[0].name.value if params else "self"
    return cst.Module(body=[node.visit(_ExplicitSuper(owner_ref, self_name))]).code


def _rename_globals(code: str, renames: dict[str, str]) -> str:
    """Rename the global reads ``renames`` names (locals, attributes and keywords of the same name stay):
    two modules' ``logger`` s in one file become ``logger`` and ``logger_attention_processor``."""
    if not renames:
        return code
    wrapper = MetadataWrapper(cst.parse_module(code))
    targets = {}
    for scope in set(wrapper.resolve(ScopeProvider).values()):
        for name, new in renames.items():
            for access in scope.accesses[name]:
                if all(isinstance(r.scope, GlobalScope) for r in access.referents):
                    targets[id(access.node)] = new

    class _Rename(cst.CSTTransformer):
        def leave_Name(self, original, updated):
            return updated.with_changes(value=targets[id(original)]) if id(original) in targets else updated

    return wrapper.module.visit(_Rename()).code


def _global_reads(code: str) -> set[str]:
    """Names ``code`` reads from its globals: in function bodies, decorators and default values."""
    flags = __future__.annotations.compiler_flag
    stack, names = [compile(code, "<routed>", "exec", flags=flags, dont_inherit=True)], set()
    while stack:
        co = stack.pop()
        names |= {i.argval for i in dis.get_instructions(co) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
        stack += [c for c in co.co_consts if isinstance(c, types.CodeType)]
    return names


# -- the file ---------------------------------------------------------------------------------

IMPORT_NAME = "__dtrsurgeon_import_name__"  # set on a module loaded under another name than its users import


def _import_of(name: str, value, module: str) -> str:
    if isinstance(value, types.ModuleType):
        return f"import {value.__name__}" if value.__name__ == name else f"import {value.__name__} as {name}"
    return f"from {module} import {name}"


def _reference(cls: type) -> tuple[str, str]:
    """(module, dotted reference) under which the generated file reaches ``cls``."""
    module = sys.modules.get(cls.__module__)
    # a model file the CLI imported under a private name is imported by its stem beside it
    name = getattr(module, IMPORT_NAME, cls.__module__)
    for attr in (cls.__qualname__, cls.__name__):
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if obj is cls:
            return name, f"{name}.{attr}"
    raise EmitError(f"class {cls.__qualname__} cannot be imported from {cls.__module__}: the generated file "
                    "subclasses it by name")


@dataclass
class _Imports:
    """The names the generated file binds at module level, and the statement importing each."""

    lines: dict[str, str]  # bound name -> import statement
    values: dict[str, object]  # bound name -> what it is

    def claim(self, name: str, value) -> None:
        """A name the file binds itself (a routed class, a helper): globals of that name get an alias."""
        self.values[name] = value

    def bind(self, name: str, value, module: str) -> str:
        """The name under which the file provides ``value`` (``name`` read from ``module``): ``name``
        itself, or ``name_<module>`` where ``name`` already means something else."""
        alias, n = name, 1
        while alias in self.values and self.values[alias] is not value:
            n += 1
            alias = f"{name}_{module.rsplit('.', 1)[-1]}" + (f"_{n}" if n > 2 else "")
        if alias not in self.values:
            self.values[alias] = value
            statement = _import_of(name, value, module)
            self.lines[alias] = statement if alias == name else f"{statement.split(' as ')[0]} as {alias}"
        return alias


ROUTE = '''

DTR_CLASSES = (  # the routed subclasses, each of the library class it derives from
{classes}
)


def route(model):
    """Route ``model`` in place: a {root} its library built, with the configuration this file was
    generated from.  Its modules' classes become the routed subclasses above (same parameters,
    buffers and state_dict keys) and the routed units get their mask tables.  Returns ``model``."""
    routed = {{cls.__bases__[0]: cls for cls in DTR_CLASSES}}
    if type(model) not in routed and type(model) not in DTR_CLASSES:
        raise TypeError(f"route() takes a {root}, got {{type(model).__qualname__}}")
    named = dict(model.named_modules())
    for path in DTR_UNITS:
        if not isinstance(named.get(path), tuple(routed)):
            raise ValueError(f"route(): the model has no routed module {{path!r}}: this file routes the configuration "
                             "it was generated from; regenerate it with `dtrsurgeon apply` for this one")
    for module in named.values():
        module.__class__ = routed.get(type(module), type(module))
    dtr_attach_masks(model)
    for path in DTR_UNITS:
        module = named[path]
        place = next(iter(module.parameters()), None)
        if module.dtr_mask is not None and place is not None:
            module.dtr_mask = module.dtr_mask.to(place.device)
    return model
'''


def emit_library(model: nn.Module, plan: Plan, header: LibraryHeader) -> str:
    """The text of a self-contained file that routes instances of ``type(model)`` as ``plan`` says."""
    names = class_names(model)
    edits = edit_plan(model, plan, Form.LIBRARY)
    overrides = _overrides(model, routed_function_nodes(edits))
    if type(model) not in overrides:
        raise EmitError(f"{type(model).__qualname__}.forward is not edited by the routing; nothing to route")
    refs = {c: _reference(c) for cls, methods in overrides.items() for c in [cls] + [m[0] for m in methods]}
    class_modules = {module for module, _ in refs.values()}
    imports = _Imports({}, {})
    helpers = render_helpers(plan, unrouted_instances(model, plan), binds_task=True, binds_children=True)
    for name in _defined(helpers) | {names[c] for c in overrides}:
        imports.claim(name, object())
    for module in ("bisect", "math", "torch", *class_modules):
        imports.claim(module.split(".")[0], sys.modules.get(module.split(".")[0], module))
    classes = [(cls, refs[cls][1], [_routed_method(owner, name, node, refs[owner][1], imports)
                                    for owner, name, node in methods])
               for cls, methods in overrides.items()]
    header = replace(header, libraries=libraries_of(sorted(class_modules)))
    return _render(model, plan, header, imports, classes, names, class_modules, edits)


def _routed_method(owner: type, name: str, node: cst.FunctionDef, owner_ref: str, imports: _Imports) -> cst.FunctionDef:
    """``owner.name`` as rewritten, for a subclass in the generated file: the globals it reads are
    imported from its module (``imports``), under an alias where the file binds that name already."""
    func = unwrapped(vars(owner)[name])
    where = f"{defined_in(func)}: {owner.__qualname__}.{name}"
    code = _method_code(node, owner_ref, where)
    renames = {}
    for read in sorted(_global_reads(code)):
        if read in func.__globals__:
            alias = imports.bind(read, func.__globals__[read], func.__globals__["__name__"])
            if alias != read:
                renames[read] = alias
        elif not hasattr(builtins, read) and read not in imports.values:
            raise EmitError(f"{where}: reads {read!r}, which its module does not define")
    return cst.parse_statement(_rename_globals(code, renames))


def _defined(helpers: str) -> set[str]:
    """Names the helper block binds (``dtr_mask_table``, ``DTR_UNITS`` ...)."""
    defs = {n.name.value for n in cst.parse_module(helpers).body if isinstance(n, (cst.FunctionDef, cst.ClassDef))}
    return defs | set(re.findall(r"^(\w+) = ", helpers, re.M))


def _import_block(imports: _Imports, class_modules: set[str]) -> str:
    """``import bisect, math``, then torch, the modules of the subclassed classes, then the names the routed
    methods read, grouped by the module they are read from."""
    plain = {"import torch"} | {f"import {m}" for m in class_modules}
    froms: dict[str, list[str]] = {}
    for line in imports.lines.values():
        if line.startswith("from "):
            module, name = line[len("from "):].split(" import ")
            froms.setdefault(module, []).append(name)
        else:
            plain.add(line)
    lines = ["import bisect", "import math", ""] + sorted(plain)
    lines += [f"from {module} import {', '.join(sorted(names))}" for module, names in sorted(froms.items())]
    return "\n".join(lines) + "\n"


def _render(model, plan, header, imports: _Imports, classes, names, class_modules: set[str], edits: EditPlan) -> str:
    class_nodes = []
    for cls, base_ref, methods in classes:
        doc = f'"""{base_ref} with Denoising Task Routing: {", ".join(m.name.value for m in methods)} edited."""'
        node = cst.parse_statement(f"class {names[cls]}({base_ref}):\n    {doc}\n")
        body = [node.body.body[0]] + [m.with_changes(leading_lines=[cst.EmptyLine(indent=False)]) for m in methods]
        class_nodes.append(cst.Module(body=[node.with_changes(body=node.body.with_changes(body=body))]).code)
    classes_code = "\n\n".join(class_nodes)
    helpers = render_helpers(plan, unrouted_instances(model, plan), binds_task=edits.binds_task(),
                             binds_children=edits.binds_children())
    root = f"{type(model).__module__}.{type(model).__qualname__}"
    routed = "\n".join(f"    {names[c]}," for c, _, _ in classes)
    return "".join([
        header.render(),
        f'"""Denoising Task Routing for {root}, generated by dtrsurgeon.\n\n'
        f'    model = route({type(model).__name__}(...))   # or .from_pretrained(...): routes the model in place\n"""\n\n',
        "from __future__ import annotations\n\n",
        _import_block(imports, class_modules), "\n\n", helpers, "\n\n", classes_code,
        ROUTE.format(classes=routed, root=type(model).__name__),
    ])
