"""``python -m dtrsurgeon``: the same as the ``dtrsurgeon`` command."""

import sys

try:
    from dtrsurgeon.cli import entry_point
except KeyboardInterrupt:  # Ctrl-C while torch is being imported: one line, like anywhere else
    print("dtrsurgeon: interrupted (SIGINT)", file=sys.stderr)
    sys.exit(130)

entry_point()
