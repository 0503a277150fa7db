"""The one error type of :mod:`dtrsurgeon.mtl`.

It is a :class:`~dtrsurgeon.errors.DtrSurgeonError` (so ``dtrsurgeon cluster``
prints it on one line and exits 2) and a :class:`ValueError` (so library users
who already catch ``ValueError`` for bad arguments keep working).
"""

from __future__ import annotations

from dtrsurgeon.errors import DtrSurgeonError


class MtlError(DtrSurgeonError, ValueError):
    """Bad input to the ANT toolkit: a schedule, a clustering request, an
    affinity matrix or a weighting setting that cannot work.

    The message names what was asked, what was found and what to do instead.
    """
