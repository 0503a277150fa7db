"""Error types.

Every error a user can cause is a :class:`DtrSurgeonError`; the CLI prints its
message on one line and exits 2.  Messages say what was asked, what was found,
and what to do next.
"""

from __future__ import annotations


class DtrSurgeonError(Exception):
    """Base class of every error dtrsurgeon raises on purpose."""


class SpecError(DtrSurgeonError, ValueError):
    """A routing spec violates the schema.

    ``pointer`` is the JSON pointer (RFC 6901) of the offending value, ``""`` for
    the document itself.
    """

    def __init__(self, pointer: str, message: str):
        self.pointer = pointer
        self.detail = message
        super().__init__(f"spec {pointer or '/'}: {message}")


class CaptureError(DtrSurgeonError):
    """The model's forward could not be captured as a graph."""


class NoMatchingUnitError(DtrSurgeonError, ValueError):
    """``targets`` or an override pattern selected no routable unit."""


class EmitError(DtrSurgeonError):
    """A plan could not be turned into a routed module or into source."""


class CheckpointError(DtrSurgeonError, ValueError):
    """A checkpoint does not fit the routed model (e.g. foreign mask tables disagree)."""
