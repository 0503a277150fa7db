"""Every diffusers backbone whose forward takes a timestep, routed with the default spec.

The classes come from ``diffusers.models.transformers`` and ``diffusers.models.unets`` as
installed; each is either built from a tiny config (tests/diffusers_models.py) and checked here,
or listed in LEFT_OUT with the reason.  For each built class: every residual block on the routed
stream is a unit (UNITS: the expected count, by class of unit), identity at channel_ratio 1, each
sample routed as if run alone, a training step with finite gradients, a 0-d timestep routed as that
timestep given to every sample (where the vanilla model takes one), and one
``torch.compile(fullgraph=True)`` graph for every timestep (where the vanilla model compiles so:
NO_FULLGRAPH).  The training step needs a vanilla backward on CPU (NO_BACKWARD lists where it has none).
"""

import copy
import inspect
from unittest import mock

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from torch._dynamo.testing import CompileCounter  # noqa: E402

import dtrsurgeon  # noqa: E402
from tests import diffusers_models as dm  # noqa: E402
from tests import sweep  # noqa: E402

SPEC = {"version": 1, "routing": {"channel_ratio": 0.5}}

# class -> {unit class: count}, for the tiny configs of tests/diffusers_models.py
UNITS = {
    "UNet2DModel": {"ResnetBlock2D": 8, "Attention": 4},
    "UNet2DConditionModel": {"ResnetBlock2D": 8, "BasicTransformerBlock": 4},
    "DiTTransformer2DModel": {"BasicTransformerBlock": 2},
    "SD3Transformer2DModel": {"JointTransformerBlock": 2},
    "FluxTransformer2DModel": {"FluxTransformerBlock": 2, "FluxSingleTransformerBlock": 2},
    "ChromaTransformer2DModel": {"ChromaTransformerBlock": 2, "ChromaSingleTransformerBlock": 2},
    "QwenImageTransformer2DModel": {"QwenImageTransformerBlock": 2},
    "CogView4Transformer2DModel": {"CogView4TransformerBlock": 2},
    "CogVideoXTransformer3DModel": {"CogVideoXBlock": 2},
    "AuraFlowTransformer2DModel": {"AuraFlowJointTransformerBlock": 2, "AuraFlowSingleTransformerBlock": 2},
    # frames folded into the batch (sample-major): spatial resnets and the spatial / temporal transformer
    # blocks; the TemporalConvLayers start their stream inside a reshape and are left out (plan.skipped)
    "UNet3DConditionModel": {"ResnetBlock2D": 8, "BasicTransformerBlock": 9},
    "LatteTransformer3DModel": {"BasicTransformerBlock": 2},
    "PixArtTransformer2DModel": {"BasicTransformerBlock": 2},
    "SanaTransformer2DModel": {"SanaTransformerBlock": 2},
    "WanTransformer3DModel": {"WanTransformerBlock": 2},
}
LEFT_OUT = {
    "Transformer2DModel": "a wrapper of BasicTransformerBlocks that returns an output object; routed inside the "
                          "U-Nets and DiT above, where it is used",
    "DualTransformer2DModel": "two Transformer2DModels mixed by a ratio, used inside versatile-diffusion U-Nets only",
    "TransformerTemporalModel": "the temporal layer of the video U-Nets; routed inside UNet3DConditionModel above",
    "PriorTransformer": "a prior over CLIP image embeddings (unCLIP), not a denoiser of a sample grid",
}
# class -> why its vanilla model does not compile with fullgraph=True (checked: the vanilla compile raises)
NO_FULLGRAPH: dict = {}
# class -> why its vanilla model has no backward on CPU (checked: the vanilla backward raises)
NO_BACKWARD: dict = {}
for _group in sweep.GROUPS:
    UNITS.update(_group.UNITS)
    LEFT_OUT.update(_group.LEFT_OUT)
    NO_FULLGRAPH.update(getattr(_group, "NO_FULLGRAPH", {}))
    NO_BACKWARD.update(getattr(_group, "NO_BACKWARD", {}))


def timestep_classes() -> list[str]:
    """Every nn.Module class in diffusers.models.transformers / .unets whose forward takes a timestep."""
    from diffusers.models import transformers, unets

    found = set()
    for package in (transformers, unets):
        for name in dir(package):
            obj = getattr(package, name)
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
                params = inspect.signature(obj.forward).parameters
                if any(p in params for p in ("timestep", "timesteps", "t", "time", "sigma")):
                    found.add(name)
    return sorted(found)


def test_every_timestep_class_is_built_or_left_out_with_a_reason():
    classes = set(timestep_classes())
    listed = set(UNITS) | set(LEFT_OUT)
    assert not set(UNITS) & set(LEFT_OUT)
    assert classes - listed == set(), "classes neither checked nor left out"
    assert set(UNITS) <= classes
    assert set(NO_FULLGRAPH) <= set(UNITS)
    assert set(NO_BACKWARD) <= set(UNITS)


@pytest.mark.slow
def test_every_sweep_model_is_built_the_same_whatever_memory_torch_empty_returns():
    """The cached model and a fresh build must hold the same weights (the library-file test compares a
    route() of a fresh build with the cached routed model).  A parameter a library never initialises
    (LuminaNext's ``pad_token = nn.Parameter(torch.empty(hidden))``) holds what the allocator hands back:
    free-list pointers on reused memory, zeros on a fresh heap page, as after a long run of other tests;
    the build must not depend on which."""
    real_empty = torch.empty

    def zeroed_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).zero_()

    for name in UNITS:
        built_here = dm.sweep_model(name).state_dict()
        with mock.patch("torch.empty", zeroed_empty):
            on_a_fresh_page = dm.sweep_model(name).state_dict()
        differing = [k for k in built_here if not torch.equal(built_here[k], on_a_fresh_page[k])]
        assert not differing, f"{name}: {differing}"


# -- one build and one capture per class, shared by the tests here and test_apply_library's ---------------

_cache, _routed = {}, {}


def built(name):
    if name not in _cache:
        model = dm.sweep_model(name)
        _cache[name] = (model, dm.sweep_inputs(name, model))
    return _cache[name]


def routed_model(name):
    """A deep copy of ``transform(model, SPEC)``, the transform run once per class: training and
    compiling leave state (gradients, train mode, Dynamo's caches) on the copy a test gets, not on
    the next test's.  The model runs once first, as a model in use has: state a forward builds lazily
    (BriaFibo2's rotary table, which Dynamo cannot build: a ``torch.device`` context) is in the copy."""
    if name not in _routed:
        model, kwargs = built(name)
        with torch.no_grad():
            model(**kwargs)
        _routed[name] = dtrsurgeon.transform(model, SPEC, example_inputs=((), kwargs))
    return copy.deepcopy(_routed[name])


def first(output):
    """The sample of a forward's output tuple; a list of per-sample tensors (ZImage) stacked; a forward
    that returns its bare sample tensor when ``return_dict=False`` (Kandinsky 5) as it is."""
    if isinstance(output, torch.Tensor):
        return output
    sample = output[0]
    return torch.stack(sample) if isinstance(sample, list) else sample


def split(kwargs, i, batch_size):
    """The keyword arguments of sample i alone: every per-sample tensor or list sliced, other lists
    (one tensor per layer) sliced item by item."""
    def one(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch_size:
            return v[i:i + 1]
        if isinstance(v, list) and len(v) == batch_size:
            return v[i:i + 1]
        if isinstance(v, list):
            return [one(item) for item in v]
        return v
    return {k: one(v) for k, v in kwargs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNITS))
def test_routes_every_block_per_sample_and_trains(name):
    model, kwargs = built(name)
    routed = routed_model(name)
    plan = routed.dtr_plan
    counts = {}
    for unit in plan.units:
        cls = unit.cls.rsplit(".", 1)[1]
        counts[cls] = counts.get(cls, 0) + 1
    assert counts == UNITS[name], plan.skipped
    with torch.no_grad():
        ref = first(model(**kwargs))
        identity = dtrsurgeon.transform(model, {**SPEC, "routing": {"channel_ratio": 1.0}}, example_inputs=((), kwargs))
        assert torch.allclose(first(identity(**kwargs)), ref, atol=1e-6)
        out = first(routed(**kwargs))
        assert not torch.allclose(out, ref, atol=1e-4)
        alone = torch.cat([first(routed(**split(kwargs, i, len(ref)))) for i in range(len(ref))])
        assert torch.allclose(out, alone, atol=1e-4, rtol=1e-4)
    if name in NO_BACKWARD:
        with pytest.raises(RuntimeError):  # NotImplementedError is one
            first(model(**kwargs)).square().mean().backward()
        pytest.skip(NO_BACKWARD[name])
    routed.train()
    first(routed(**kwargs)).square().mean().backward()
    grads = [p.grad for p in routed.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNITS))
def test_a_0d_timestep_routes_as_that_timestep_for_every_sample(name):
    """What diffusers' sampling loops pass: one timestep for the batch.  The routed model must take it
    wherever the vanilla model does, and route every sample by it."""
    model, _ = built(name)
    scalar = dm.sweep_inputs(name, model, timestep=torch.tensor(500))
    broadcast = dm.sweep_inputs(name, model, timestep=torch.full((3,), 500))
    with torch.no_grad():
        try:
            vanilla = first(model(**scalar))
        except Exception as e:  # noqa: BLE001 - any refusal of the vanilla model is a reason to skip
            pytest.skip(f"the vanilla model does not take a 0-d timestep: {type(e).__name__}: {e}")
        routed = routed_model(name)
        out = first(routed(**scalar))
        assert torch.allclose(out, first(routed(**broadcast)), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, vanilla, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNITS))
def test_compiles_fullgraph_one_graph_for_every_timestep(name):
    """``torch.compile(routed, fullgraph=True)`` under the "eager" backend (Dynamo's capture only: the
    graph breaks and recompiles are what is checked, and it keeps CPU time down): one frame for two
    calls with other timesteps and samples, each equal to the uncompiled routed model."""
    model, kwargs = built(name)
    torch._dynamo.reset()
    if name in NO_FULLGRAPH:
        with pytest.raises(Exception), torch.no_grad():
            torch.compile(model, fullgraph=True, backend="eager")(**kwargs)
        pytest.skip(NO_FULLGRAPH[name])
    routed = routed_model(name)
    counter = CompileCounter()
    compiled = torch.compile(routed, fullgraph=True, backend=counter)
    with torch.no_grad():
        for seed, t in ((0, None), (1, torch.tensor([3, 998, 17]))):
            call = dm.sweep_inputs(name, model, seed=seed, timestep=t)
            assert torch.allclose(first(compiled(**call)), first(routed(**call)), atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1
