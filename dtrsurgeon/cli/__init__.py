"""The ``dtrsurgeon`` command.

Each verb lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``run=<function(args) -> int>``.

Exit codes (ruff's convention): 0 success / fresh, 1 stale or would change,
2 bad input or a dtrsurgeon error (printed on one line to stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from dtrsurgeon.errors import DtrSurgeonError

VERBS = ("validate", "plot", "inspect", "apply", "check", "cluster")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep its one-line message."""


def build_parser() -> argparse.ArgumentParser:
    from dtrsurgeon import __version__

    parser = _Parser(prog="dtrsurgeon", description=__doc__.split("\n\n")[0] + " Denoising Task Routing compiler.")
    parser.add_argument("--version", action="version", version=f"dtrsurgeon {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        try:
            module = importlib.import_module(f"dtrsurgeon.cli.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"dtrsurgeon.cli.{verb}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # one line per warning, like the errors (units left unrouted, opaque graph regions)
            warnings.showwarning = lambda message, *_, **__: print(
                f"dtrsurgeon {args.verb}: warning: {message}", file=sys.stderr)
            return int(args.run(args))
    except DtrSurgeonError as e:
        print(f"dtrsurgeon {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dtrsurgeon inspect --json | head`: the reader left; not an error
        sys.stderr.close()
        return 0


def entry_point() -> None:
    sys.exit(main())
