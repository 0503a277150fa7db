"""``dtrsurgeon check SPEC MODEL_PY GENERATED_PY``: is a generated file up to date?

Regenerates in memory with the entry and arguments recorded in GENERATED_PY's
header and compares.  A file made with ``--example-inputs FILE`` is checked with the
same flag (its header records the file's name and sha256; a different file is a
change like any other).  Exit 0: fresh.  Exit 1: stale, the diff is printed.
Exit 2: bad input.  For downstream CI, like ``ruff --check``.  A file of
a library model (``apply SPEC pkg.module:Class``) is stale as soon as the
library's installed version differs from the one its header names.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check", help="exit 1 (with a diff) if a generated file is stale", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("model_py")
    p.add_argument("generated_py")
    p.add_argument("--example-inputs", default=None, metavar="FILE.pt",
                   help="the example inputs GENERATED_PY was made with (its header names the file)")
    p.set_defaults(run=run)


def _regenerate_command(args, header) -> str:
    parts = ["dtrsurgeon", "apply", args.spec, args.model_py, "--entry", header.entry]
    if header.kwargs != "{}":
        parts += ["--kwargs", header.kwargs]
    if args.example_inputs:
        parts += ["--example-inputs", args.example_inputs]
    return shlex.join(parts + ["-o", args.generated_py, "--force"])


def run(args) -> int:
    from dtrsurgeon.cli._model import ModelFileError
    from dtrsurgeon.cli.apply import generate, unified_diff
    from dtrsurgeon.emit.library import LibraryHeader, is_library_file, version_change
    from dtrsurgeon.emit.source import Header

    generated = Path(args.generated_py)
    if not generated.is_file():
        raise ModelFileError(f"{generated}: no such file")
    try:
        current = generated.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{generated}: byte offset {e.start}: not valid UTF-8; not a file dtrsurgeon wrote") from None
    if is_library_file(current):  # `route()` file of a library model: its library version first
        header = LibraryHeader.parse(current, str(generated))
        reason = version_change(header)
        if reason:
            print(f"{generated}: stale: {reason}; run `dtrsurgeon apply {args.spec} {args.model_py} -o {generated} --force`")
            return 1
    else:
        header = Header.parse(current, str(generated))
        recorded = header.inputs_file
        if recorded is not None and args.example_inputs is None:
            name, sha = recorded
            raise ModelFileError(f"{generated}: made with --example-inputs {name} (sha256 {sha[:12]}...); "
                                 f"pass --example-inputs {shlex.quote(name)} to check it")
    kwargs = None if header.kwargs == "{}" else header.kwargs
    expected = generate(args.spec, args.model_py, header.entry, kwargs, args.example_inputs)
    if expected == current:
        print(f"{generated}: up to date")
        return 0
    print(unified_diff(current, expected, str(generated), f"{generated} (regenerated)"), end="")
    print(f"{generated}: stale; run `{_regenerate_command(args, header)}`")
    return 1
