"""dtrsurgeon: a declarative model-surgery compiler for Denoising Task Routing.

    >>> import dtrsurgeon
    >>> routed = dtrsurgeon.transform(model, "dit-paper")   # doctest: +SKIP

Pipeline: spec (validated JSON) -> analysis (graph capture, residual chains)
-> plan (JSON-serialisable IR) -> edit plan (which function gets which edit)
-> emitters (live module | generated source).
"""

__version__ = "0.1.0"

import logging

# the library logs (progress of long captures, re-captures on loading) and never prints; show it
# with logging.basicConfig(level=logging.INFO)
logging.getLogger("dtrsurgeon").addHandler(logging.NullHandler())

from dtrsurgeon import runtime as _runtime  # noqa: E402
from dtrsurgeon.api import plan, transform  # noqa: E402
from dtrsurgeon.emit.editplan import EditPlan  # noqa: E402
from dtrsurgeon.emit.lower import edit_plan  # noqa: E402
from dtrsurgeon.errors import (  # noqa: E402
    CaptureError,
    CheckpointError,
    DtrSurgeonError,
    EmitError,
    NoMatchingUnitError,
    SpecError,
)
from dtrsurgeon.lifecycle import routing_disabled, set_routing, unroute  # noqa: E402
from dtrsurgeon.masks import mask_table, task_index  # noqa: E402
from dtrsurgeon.persist import from_pretrained, save_pretrained  # noqa: E402
from dtrsurgeon.plan import Plan, RoutedUnit  # noqa: E402
from dtrsurgeon.spec import Spec, load_spec  # noqa: E402


def _fused_kernels():
    """The Triton kernels module, imported the first time a routed unit sees a CUDA tensor."""
    from dtrsurgeon import kernels

    return kernels


_runtime.dtr_use_fused_kernels(_fused_kernels)

__all__ = [
    "CaptureError",
    "CheckpointError",
    "DtrSurgeonError",
    "EditPlan",
    "EmitError",
    "NoMatchingUnitError",
    "Plan",
    "RoutedUnit",
    "Spec",
    "SpecError",
    "__version__",
    "edit_plan",
    "from_pretrained",
    "load_spec",
    "mask_table",
    "plan",
    "routing_disabled",
    "save_pretrained",
    "set_routing",
    "task_index",
    "transform",
    "unroute",
]
