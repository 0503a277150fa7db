"""Emitters: turn a :class:`~dtrsurgeon.plan.Plan` into a routed model.

``module`` rewrites a live ``nn.Module`` (``dtrsurgeon.transform``); ``source``
writes a routed copy of the model's Python file (``dtrsurgeon apply``).  Both
share the LibCST edits in ``edits`` that thread the task index from the root's
``forward`` down to each unit.
"""
