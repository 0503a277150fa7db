"""Target matching: one pure function, one meaning for every spec.

Precedence: a unit is routed when it matches some ``include`` pattern (or
``include`` is empty) and no ``exclude`` pattern; exclude wins.  A pattern is
an ``fnmatch`` glob over the ``named_modules()`` path, so an exact path is a
pattern that matches itself.  An include pattern that matches no unit is an
error, because it is almost always a typo.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

from dtrsurgeon.errors import NoMatchingUnitError


def _preview(paths: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def select_units(units: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """The units to route, in the order given."""
    if not units:
        raise NoMatchingUnitError(
            "the analysis found no residual unit in this model (no add whose one operand is computed from the "
            "other inside a submodule); run `dtrsurgeon inspect` to see what was captured"
        )
    for i, pattern in enumerate(include):
        if not any(fnmatch.fnmatchcase(u, pattern) for u in units):
            raise NoMatchingUnitError(
                f"spec /targets/include/{i}: pattern {pattern!r} matches no routable unit; "
                f"units found: {_preview(list(units))} (run `dtrsurgeon inspect` to list them)"
            )
    chosen = [
        u for u in units
        if (not include or any(fnmatch.fnmatchcase(u, p) for p in include))
        and not any(fnmatch.fnmatchcase(u, p) for p in exclude)
    ]
    if not chosen:
        raise NoMatchingUnitError(
            f"spec /targets: include {list(include)} minus exclude {list(exclude)} leaves no unit; "
            f"units found: {_preview(list(units))}"
        )
    return chosen


def check_overrides(units: Sequence[str], patterns: Sequence[str]) -> None:
    for i, pattern in enumerate(patterns):
        if not any(fnmatch.fnmatchcase(u, pattern) for u in units):
            raise NoMatchingUnitError(
                f"spec /overrides/{i}/match: pattern {pattern!r} matches no routed unit; routed: {_preview(list(units))}"
            )
