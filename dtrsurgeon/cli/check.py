"""``dtrsurgeon check SPEC MODEL_PY GENERATED_PY``: is a generated file up to date?

Regenerates in memory with the entry and arguments recorded in GENERATED_PY's
header and compares.  Exit 0: fresh.  Exit 1: stale, the diff is printed.
Exit 2: bad input.  For downstream CI, like ``ruff --check``.  A file of
a library model (``apply SPEC pkg.module:Class``) is stale as soon as the
library's installed version differs from the one its header names.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check", help="exit 1 (with a diff) if a generated file is stale", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("model_py")
    p.add_argument("generated_py")
    p.set_defaults(run=run)


def run(args) -> int:
    from dtrsurgeon.cli._model import ModelFileError
    from dtrsurgeon.cli.apply import generate, unified_diff
    from dtrsurgeon.emit.library import LibraryHeader, is_library_file, version_change
    from dtrsurgeon.emit.source import Header

    generated = Path(args.generated_py)
    if not generated.is_file():
        raise ModelFileError(f"{generated}: no such file")
    current = generated.read_text()
    if is_library_file(current):  # `route()` file of a library model: its library version first
        header = LibraryHeader.parse(current, str(generated))
        reason = version_change(header)
        if reason:
            print(f"{generated}: stale: {reason}; run `dtrsurgeon apply {args.spec} {args.model_py} -o {generated} --force`")
            return 1
    else:
        header = Header.parse(current, str(generated))
    kwargs = None if header.kwargs == "{}" else header.kwargs
    expected = generate(args.spec, args.model_py, header.entry, kwargs)
    if expected == current:
        print(f"{generated}: up to date")
        return 0
    print(unified_diff(current, expected, str(generated), f"{generated} (regenerated)"), end="")
    print(f"{generated}: stale; run `dtrsurgeon apply {args.spec} {args.model_py} --entry {header.entry} "
          f"-o {generated} --force`")
    return 1
