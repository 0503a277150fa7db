"""Emitters: turn a :class:`~dtrsurgeon.plan.Plan` into a routed model.

``module`` rewrites a live ``nn.Module`` (``dtrsurgeon.transform``); ``source``
writes a routed copy of the model's Python file (``dtrsurgeon apply``); ``library``
writes one file of subclasses and ``route(model)`` for a model whose code is installed
or spans several files (``dtrsurgeon apply SPEC pkg.module:Class``).  All three consume
one :class:`~dtrsurgeon.emit.editplan.EditPlan`, lowered from the plan by ``lower``
(``edits`` decides which function needs what, ``locate`` finds the calls, ``resolve``
finds the live objects behind the names) and applied by ``transformers``, one LibCST
transformer per kind of edit.
"""
