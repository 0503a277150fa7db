"""Each edit transformer on its own: source before, edits, exact source after; then the edit
plan's JSON form and its lowering from a model."""

import json

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper

from dtrsurgeon.emit.editplan import Edit, EditKind, EditPlan, Form, FunctionEdits
from dtrsurgeon.emit.transformers import (
    AttachMasks,
    BindMethod,
    BindTask,
    ComputeTask,
    FoldTask,
    MaskBranch,
    MaskLoads,
    MaskSite,
    MergeReturn,
    PassTask,
    RouteStream,
    TakeTask,
    apply_edits,
)
from dtrsurgeon.errors import EmitError


def span_of(source: str, text: str, nth: int = 0) -> tuple[int, int, int, int]:
    """(line, column, end line, end column) of the nth occurrence of ``text`` (on one line)."""
    at = -1
    for _ in range(nth + 1):
        at = source.index(text, at + 1)
    line = source.count("\n", 0, at) + 1
    column = at - (source.rfind("\n", 0, at) + 1)
    return line, column, line, column + len(text)


def edit(transformer, source: str, *edits: Edit, qualname: str = "M.forward") -> str:
    functions = [FunctionEdits("m.py", qualname, 2, edits)]
    return MetadataWrapper(cst.parse_module(source)).visit(transformer("m.py", functions)).code


BLOCK = '''class M:
    def forward(self, x, c):
        """Doc."""
        x = x + self.attn(self.norm(x), c)
        return x
'''


def test_take_task_required_optional_and_keyword_only():
    src = "class M:\n    def forward(self, x):\n        return x\n"
    assert edit(TakeTask, src, Edit(EditKind.TAKE_TASK)) == \
        "class M:\n    def forward(self, x, dtr_task):\n        return x\n"
    assert edit(TakeTask, src, Edit(EditKind.TAKE_TASK, required=False)) == \
        "class M:\n    def forward(self, x, dtr_task=None):\n        return x\n"
    with_default = "class M:\n    def forward(self, x, y=1):\n        return x\n"
    assert edit(TakeTask, with_default, Edit(EditKind.TAKE_TASK)) == \
        "class M:\n    def forward(self, x, y=1, *, dtr_task):\n        return x\n"
    already = "class M:\n    def forward(self, x, dtr_task=None):\n        return x\n"
    assert edit(TakeTask, already, Edit(EditKind.TAKE_TASK)) == already


def test_compute_and_fold_task_go_after_the_docstring():
    assert edit(ComputeTask, BLOCK, Edit(EditKind.COMPUTE_TASK, text=("dtr_task = dtr_task_index(c, 0.0, 1.0, 4, False)",))) == (
        'class M:\n    def forward(self, x, c):\n        """Doc."""\n'
        "        dtr_task = dtr_task_index(c, 0.0, 1.0, 4, False)\n"
        "        x = x + self.attn(self.norm(x), c)\n        return x\n")
    assert edit(FoldTask, BLOCK, Edit(EditKind.FOLD_TASK, text=("dtr_task = dtr_fold_task(dtr_task, x, 'repeat')",))) == (
        'class M:\n    def forward(self, x, c):\n        """Doc."""\n'
        "        dtr_task = dtr_fold_task(dtr_task, x, 'repeat')\n"
        "        x = x + self.attn(self.norm(x), c)\n        return x\n")


def test_attach_masks_ends_the_function():
    src = "class M:\n    def __init__(self):\n        self.a = 1\n"
    assert edit(AttachMasks, src, Edit(EditKind.ATTACH_MASKS, text=("dtr_attach_masks(self)",)), qualname="M.__init__") == \
        "class M:\n    def __init__(self):\n        self.a = 1\n        dtr_attach_masks(self)\n"


def test_route_stream_on_entry_and_after_a_line():
    route = ("dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 1)", "x, dtr_skip = dtr_route(x, dtr_keep)")
    assert edit(RouteStream, BLOCK, Edit(EditKind.ROUTE_STREAM, text=route)) == (
        'class M:\n    def forward(self, x, c):\n        """Doc."""\n'
        "        dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 1)\n"
        "        x, dtr_skip = dtr_route(x, dtr_keep)\n"
        "        x = x + self.attn(self.norm(x), c)\n        return x\n")
    src = "class M:\n    def forward(self, x, skip):\n        x = torch.cat(\n            [x, skip], 1)\n        return self.mlp(x)\n"
    assert edit(RouteStream, src, Edit(EditKind.ROUTE_STREAM, line=4, text=route)) == (
        "class M:\n    def forward(self, x, skip):\n        x = torch.cat(\n            [x, skip], 1)\n"
        "        dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 1)\n"
        "        x, dtr_skip = dtr_route(x, dtr_keep)\n"
        "        return self.mlp(x)\n")


def test_merge_return_wraps_each_return_of_the_function_only():
    src = ("class M:\n    def forward(self, x):\n        def inner(y):\n            return y\n"
           "        if x is None:\n            return inner(x)\n        return x + 1\n")
    assert edit(MergeReturn, src, Edit(EditKind.MERGE_RETURN, text=("dtr_merge(__out__, dtr_skip, dtr_keep)",))) == (
        "class M:\n    def forward(self, x):\n        def inner(y):\n            return y\n"
        "        if x is None:\n            return dtr_merge(inner(x), dtr_skip, dtr_keep)\n"
        "        return dtr_merge(x + 1, dtr_skip, dtr_keep)\n")
    several = "dtr_merge_outputs(__out__, ((1, dtr_skip, dtr_keep),))"
    pair = "class M:\n    def forward(self, x, c):\n        return c, x\n"
    assert edit(MergeReturn, pair, Edit(EditKind.MERGE_RETURN, text=(several,))) == \
        "class M:\n    def forward(self, x, c):\n        return dtr_merge_outputs((c, x), ((1, dtr_skip, dtr_keep),))\n"
    one = "dtr_merge(__out__, dtr_skip, dtr_keep)"
    assert edit(MergeReturn, pair, Edit(EditKind.MERGE_RETURN, text=(one,), var="x")) == \
        "class M:\n    def forward(self, x, c):\n        return (c, dtr_merge(x, dtr_skip, dtr_keep))\n"
    with pytest.raises(EmitError, match=r"m.py:3: .*this returned tuple has no stream variable"):
        edit(MergeReturn, pair, Edit(EditKind.MERGE_RETURN, text=(one,)))
    twice = "class M:\n    def forward(self, x, c):\n        return x, x\n"
    with pytest.raises(EmitError, match=r"m.py:3: .*holds the stream variable 'x' 2 times"):
        edit(MergeReturn, twice, Edit(EditKind.MERGE_RETURN, text=(one,), var="x"))
    split = ("class M:\n    def forward(self, x, c):\n        x = x + c\n        x = (x.float() + c).type_as(x)\n"
             "        x += c\n        x = x.clip(-1, 1)\n        if c is None:\n            return x, c\n"
             "        c, x = x[:, :2], x[:, 2:]\n        return c, x\n")
    routed_after = Edit(EditKind.MERGE_RETURN, line=3, text=(one,), var="x")
    with pytest.raises(EmitError, match=r"m.py:10: .*returns 'x', which line 9 may have rebound"):
        edit(MergeReturn, split, routed_after)
    kept = edit(MergeReturn, split.replace("        c, x = x[:, :2], x[:, 2:]\n", ""), routed_after)
    assert kept.count("dtr_merge(x, dtr_skip, dtr_keep)") == 2
    for rebinding in ("        x @= c\n", "        for x in c:\n            pass\n", "        with c as x:\n            pass\n",
                      "        c = (x := c)\n", "        del x\n"):
        body = "class M:\n    def forward(self, x, c):\n        x = x + c\n" + rebinding + "        return c, x\n"
        with pytest.raises(EmitError, match=r"returns 'x', which line 4 may have rebound"):
            edit(MergeReturn, body, routed_after)
    bare = "class M:\n    def forward(self, x):\n        return\n"
    with pytest.raises(EmitError, match=r"m.py:3: block mode needs the unit to return its stream, found a bare return"):
        edit(MergeReturn, bare, Edit(EditKind.MERGE_RETURN, text=(one,), var="x"))


def test_pass_task_only_at_its_span_with_guards_where_asked():
    src = "class M:\n    def forward(self, x):\n        x = self.a(x) + self.b(x)\n        return self.c(self.a(x))\n"
    out = edit(PassTask, src, Edit(EditKind.PASS_TASK, span=span_of(src, "self.b(x)")),
               Edit(EditKind.PASS_TASK, span=span_of(src, "self.a(x)", nth=1)))
    assert out == ("class M:\n    def forward(self, x):\n        x = self.a(x) + self.b(x, dtr_task=dtr_task)\n"
                   "        return self.c(self.a(x, dtr_task=dtr_task))\n")
    loop = "class M:\n    def forward(self, x):\n        for b in self.blocks:\n            x = b(x)\n        return x\n"
    guarded = Edit(EditKind.PASS_TASK, span=span_of(loop, "b(x)"), guards=("Block", "Other"))
    assert edit(PassTask, loop, guarded) == (
        "class M:\n    def forward(self, x):\n        for b in self.blocks:\n"
        "            x = b(x, dtr_task=dtr_task) if isinstance(b, (Block, Other)) else b(x)\n        return x\n")
    inner = "def helper(fn, x):\n    return 2 * fn(x)\n"
    given = Edit(EditKind.PASS_TASK, span=span_of(inner, "fn(x)"), if_given=True)
    assert edit(PassTask, inner, given, qualname="helper") == \
        "def helper(fn, x):\n    return 2 * (fn(x, dtr_task=dtr_task) if dtr_task is not None else fn(x))\n"


def test_bind_task_and_bind_method():
    src = "class M:\n    def forward(self, x):\n        x = checkpoint(self.block, x)\n        return checkpoint(self._fwd, x)\n"
    bound = edit(BindTask, src, Edit(EditKind.BIND_TASK, span=span_of(src, "checkpoint(self.block, x)")))
    assert bound == ("class M:\n    def forward(self, x):\n        x = checkpoint(dtr_bind_task(self.block, dtr_task), x)\n"
                     "        return checkpoint(self._fwd, x)\n")
    helper = "def ckpt(fn, x):\n    return checkpoint(fn, x)\n"
    assert edit(BindTask, helper, Edit(EditKind.BIND_TASK, span=span_of(helper, "checkpoint(fn, x)"), if_given=True),
                qualname="ckpt") == \
        "def ckpt(fn, x):\n    return checkpoint((dtr_bind_task(fn, dtr_task) if dtr_task is not None else fn), x)\n"
    method = edit(BindMethod, src, Edit(EditKind.BIND_METHOD, span=span_of(src, "self._fwd")))
    assert method == ("class M:\n    def forward(self, x):\n        x = checkpoint(self.block, x)\n"
                      "        return checkpoint(dtr_bind_task(self._fwd, dtr_task), x)\n")


def test_mask_site_direct_and_last_of_a_sequential():
    src = "class M:\n    def forward(self, x):\n        h = self.proj(self.act(x), 1)\n        return x + self.out(h)\n"
    assert edit(MaskSite, src, Edit(EditKind.MASK_SITE, span=span_of(src, "self.proj(self.act(x), 1)"), via="call", axis=1)) == (
        "class M:\n    def forward(self, x):\n        h = self.proj(dtr_masked(self.act(x), self.dtr_mask, dtr_task, 1), 1)\n"
        "        return x + self.out(h)\n")
    assert edit(MaskSite, src, Edit(EditKind.MASK_SITE, span=span_of(src, "self.out(h)"), via="sequential", axis=2)) == (
        "class M:\n    def forward(self, x):\n        h = self.proj(self.act(x), 1)\n"
        "        return x + self.out[-1](dtr_masked(self.out[:-1](h), self.dtr_mask, dtr_task, 2))\n")


def test_mask_branch_masks_the_branch_not_the_skip():
    src = ("class M:\n    def forward(self, x):\n        x = x + self.attn(self.norm(x), x.shape[0])\n"
           "        x += self.mlp(x)\n        y = x + self.other(x)\n        return y\n")
    out = edit(MaskBranch, src, Edit(EditKind.MASK_BRANCH, line=3, var="x", axis=2),
               Edit(EditKind.MASK_BRANCH, line=4, var="x", axis=2))
    assert out == ("class M:\n    def forward(self, x):\n"
                   "        x = x + self.attn(self.norm(dtr_masked(x, self.dtr_mask, dtr_task, 2)), x.shape[0])\n"
                   "        x += self.mlp(dtr_masked(x, self.dtr_mask, dtr_task, 2))\n"
                   "        y = x + self.other(x)\n        return y\n")


def test_mask_loads_follows_plain_aliases_and_refuses_a_line_without_a_read():
    src = "class M:\n    def forward(self, x):\n        h = x\n        h = self.norm(h)\n        return x + self.f(h)\n"
    assert edit(MaskLoads, src, Edit(EditKind.MASK_LOADS, line=4, var="x", axis=1)) == (
        "class M:\n    def forward(self, x):\n        h = x\n"
        "        h = self.norm(dtr_masked(h, self.dtr_mask, dtr_task, 1))\n        return x + self.f(h)\n")
    no_read = "class M:\n    def forward(self, x):\n        h = self.bias * 2\n        return x + h\n"
    with pytest.raises(EmitError, match=r"m.py:3: branch mode found no read of 'x'"):
        edit(MaskLoads, no_read, Edit(EditKind.MASK_LOADS, line=3, var="x", axis=1))


def test_edits_of_a_function_leave_nested_and_other_functions_alone():
    src = ("class M:\n    def forward(self, x):\n        def g(y):\n            return self.a(y)\n        return self.a(x)\n\n"
           "    def other(self, x):\n        return self.a(x)\n")
    anchored = Edit(EditKind.PASS_TASK, span=span_of(src, "self.a(y)"))  # a span inside the nested function
    out = edit(PassTask, src, anchored, Edit(EditKind.PASS_TASK, span=span_of(src, "self.a(x)", nth=1)))
    assert out == src


def test_all_kinds_in_one_pass_anchor_at_the_text_as_written():
    src = ('class M:\n    def forward(self, x, t):\n        """Doc."""\n'
           "        x = self.a(x) + self.a(x)\n        return x\n")
    edits = (Edit(EditKind.TAKE_TASK, required=False), Edit(EditKind.COMPUTE_TASK, text=("dtr_task = f(t)",)),
             Edit(EditKind.ROUTE_STREAM, text=("x = g(x)",)), Edit(EditKind.MERGE_RETURN, text=("h(__out__)",)),
             Edit(EditKind.PASS_TASK, span=span_of(src, "self.a(x)")),
             Edit(EditKind.PASS_TASK, span=span_of(src, "self.a(x)", nth=1)))
    out = apply_edits("m.py", MetadataWrapper(cst.parse_module(src)), [FunctionEdits("m.py", "M.forward", 2, edits)])
    assert out.code == ('class M:\n    def forward(self, x, t, dtr_task=None):\n        """Doc."""\n'
                        "        dtr_task = f(t)\n        x = g(x)\n"
                        "        x = self.a(x, dtr_task=dtr_task) + self.a(x, dtr_task=dtr_task)\n"
                        "        return h(x)\n")


def test_edit_plan_json_round_trip():
    plan = EditPlan(Form.SOURCE, (
        FunctionEdits("/m.py", "M.forward", 2, (
            Edit(EditKind.TAKE_TASK, required=False),
            Edit(EditKind.PASS_TASK, line=4, span=(4, 8, 4, 17), guards=("Block",), if_given=True),
            Edit(EditKind.MASK_SITE, line=5, span=(5, 1, 5, 9), via="sequential", axis=2),
            Edit(EditKind.ROUTE_STREAM, line=7, text=("a = 1", "b = 2")))),
    ), wrapped=("blocks.0",))
    text = plan.to_json()
    assert EditPlan.from_json(text) == plan
    data = json.loads(text)
    assert data["form"] == "source" and data["functions"][0]["edits"][0] == {"kind": "take_task", "required": False}
    assert data["functions"][0]["edits"][1]["span"] == [4, 8, 4, 17]
    with pytest.raises(ValueError, match="edit plan version 7"):
        EditPlan.from_dict({**data, "version": 7})


def test_lowering_a_model_lists_each_edit_once_and_round_trips():
    import dtrsurgeon
    from dtrsurgeon.emit.resolve import parse_file
    from tests import toy_models

    model = toy_models.CheckpointingNet()
    plan = dtrsurgeon.plan(model, {"version": 1})
    module = dtrsurgeon.edit_plan(model, plan)
    assert module.form == Form.MODULE and module.wrapped == ("blocks.0", "blocks.1", "blocks.2")
    (forward,) = module.functions  # the wrapper routes the blocks: only the root's forward changes
    assert forward.qualname == "CheckpointingNet.forward"
    assert [(e.kind, e.code) for e in forward.edits] == [
        (EditKind.COMPUTE_TASK, ""),
        (EditKind.BIND_TASK, "checkpoint(block, h, c, use_reentrant=False)"),  # the branch the capture did not take
        (EditKind.PASS_TASK, "block(h, c)")]
    library = dtrsurgeon.edit_plan(model, plan, "library")
    block = next(f for f in library.functions if f.qualname == "Block.forward")
    assert [e.kind for e in block.edits] == [EditKind.TAKE_TASK, EditKind.ROUTE_STREAM, EditKind.MERGE_RETURN]
    assert not library.wrapped
    again = EditPlan.from_json(library.to_json())
    assert again == library
    file = block.file
    assert apply_edits(file, parse_file(file), again.in_file(file)).code == \
        apply_edits(file, parse_file(file), library.in_file(file)).code
    with pytest.raises(ValueError, match="form 'sources' is not one of module, source, library"):
        dtrsurgeon.edit_plan(model, plan, "sources")


def test_source_form_refuses_edits_in_another_file_and_library_form_lists_both(tmp_path, monkeypatch):
    import dtrsurgeon
    from dtrsurgeon.errors import EmitError

    (tmp_path / "outer_net.py").write_text(
        "import torch\nfrom tests.toy_models import TokenNet\n\n\nclass Outer(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.inner = TokenNet()\n\n"
        "    def forward(self, x, t):\n        return self.inner(x, t)\n\n"
        "    def example_inputs(self, batch_size=2):\n        return self.inner.example_inputs(batch_size)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from outer_net import Outer

    model = Outer()
    plan = dtrsurgeon.plan(model, {"version": 1})
    with pytest.raises(EmitError, match=r"outer_net.py: routing Outer also edits .*toy_models.py; .* library form"):
        dtrsurgeon.edit_plan(model, plan, "source")
    library = dtrsurgeon.edit_plan(model, plan, "library")
    assert sorted((f.file.rsplit("/", 1)[-1], f.qualname) for f in library.functions) == [
        ("outer_net.py", "Outer.forward"), ("toy_models.py", "Block.forward"), ("toy_models.py", "TokenNet.forward")]
