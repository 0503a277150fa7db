"""dtrsurgeon: a declarative model-surgery compiler for Denoising Task Routing.

    >>> import dtrsurgeon
    >>> routed = dtrsurgeon.transform(model, "dit-paper")   # doctest: +SKIP

Pipeline: spec (validated JSON) -> analysis (graph capture, residual chains)
-> plan (JSON-serialisable IR) -> emitters (live module | generated source).
"""

__version__ = "0.1.0"

from dtrsurgeon.api import plan, transform
from dtrsurgeon.errors import (
    CaptureError,
    CheckpointError,
    DtrSurgeonError,
    EmitError,
    NoMatchingUnitError,
    SpecError,
)
from dtrsurgeon.masks import mask_table, task_index
from dtrsurgeon.plan import Plan, RoutedUnit
from dtrsurgeon.spec import Spec, load_spec

__all__ = [
    "CaptureError",
    "CheckpointError",
    "DtrSurgeonError",
    "EmitError",
    "NoMatchingUnitError",
    "Plan",
    "RoutedUnit",
    "Spec",
    "SpecError",
    "__version__",
    "load_spec",
    "mask_table",
    "plan",
    "task_index",
    "transform",
]
