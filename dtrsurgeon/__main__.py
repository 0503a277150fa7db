"""``python -m dtrsurgeon``: the same as the ``dtrsurgeon`` command."""

from dtrsurgeon.cli import entry_point

entry_point()
