"""The ``dtrsurgeon`` command.

Each verb lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``run=<function(args) -> int>``.

Exit codes (ruff's convention): 0 success / fresh, 1 stale or would change,
2 bad input or any other error (printed on one line to stderr; ``--traceback`` or
``DTRSURGEON_TRACEBACK=1`` adds the traceback), 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
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
    parser.add_argument("--traceback", action="store_true", help=_TRACEBACK_HELP)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        try:
            module = importlib.import_module(f"dtrsurgeon.cli.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"dtrsurgeon.cli.{verb}":
                raise
            continue
        module.register(sub)
    for verb_parser in sub.choices.values():  # `dtrsurgeon apply ... --traceback` too
        verb_parser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=_TRACEBACK_HELP)
    return parser


_TRACEBACK_HELP = "on an error, print the traceback too (or set DTRSURGEON_TRACEBACK=1)"


def _one_line(error: BaseException) -> str:
    """The message of an error the verb did not expect, on one line: an ``OSError`` names its file."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; every failure is one line on stderr and an exit code (module docstring).

    Errors dtrsurgeon raises on purpose print their message; anything else (a bug, an
    ``OSError``) prints its type and message; ``--traceback`` adds the traceback.  Ctrl-C and
    SIGTERM print one line and exit ``128 + signal`` after the writer has removed its
    temporary file.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    show_traceback = args.traceback or os.environ.get("DTRSURGEON_TRACEBACK", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            # one line per warning, like the errors (units left unrouted, opaque graph regions)
            warnings.showwarning = lambda message, *_, **__: print(
                f"dtrsurgeon {args.verb}: warning: {message}", file=sys.stderr)
            return int(args.run(args))
    except BrokenPipeError:  # `dtrsurgeon inspect --json | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"dtrsurgeon {args.verb}: interrupted ({signal.Signals(signum).name})",
              file=sys.stderr)
        return 128 + signum
    except Exception as e:
        if show_traceback:
            traceback.print_exception(e)
        message = str(e) if isinstance(e, DtrSurgeonError) else _one_line(e)
        hint = "" if show_traceback or isinstance(e, DtrSurgeonError) else " (--traceback shows where)"
        print(f"dtrsurgeon {args.verb}: error: {' '.join(message.split())}{hint}", file=sys.stderr)
        return 2


def entry_point() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # before a verb runs (while the verbs' modules are imported)
        print("dtrsurgeon: interrupted (SIGINT)", file=sys.stderr)
        code = 130
    sys.exit(code)
