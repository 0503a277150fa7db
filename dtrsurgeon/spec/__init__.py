"""Spec v1: the JSON document that says what to route and how.

``load_spec`` validates a document against ``routing.schema.json`` (shipped in
this package) plus the few rules a schema cannot say, and returns an immutable
:class:`Spec` with every default filled in.
"""

from dtrsurgeon.spec.loader import load_spec, spec_schema
from dtrsurgeon.spec.model import MaskParams, Override, Spec, TaskWeights, TimestepMap

__all__ = ["MaskParams", "Override", "Spec", "TaskWeights", "TimestepMap", "load_spec", "spec_schema"]
