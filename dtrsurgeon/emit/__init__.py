"""Emitters: turn a :class:`~dtrsurgeon.plan.Plan` into a routed model.

``module`` rewrites a live ``nn.Module`` (``dtrsurgeon.transform``); ``source``
writes a routed copy of the model's Python file (``dtrsurgeon apply``); ``library``
writes one file of subclasses and ``route(model)`` for a model whose code is installed
or spans several files (``dtrsurgeon apply SPEC pkg.module:Class``).  All three
share the LibCST edits in ``edits`` that thread the task index from the root's
``forward`` down to each unit.
"""
