"""Every file the CLI writes goes through here: check the target first, then write atomically.

``check_output`` runs before any work, so a bad ``-o`` costs nothing and changes nothing::

    $ dtrsurgeon apply spec.json model.py -o model.py --force
    dtrsurgeon apply: error: -o model.py is the input model file; it changes only with --in-place
    $ dtrsurgeon plot spec.json --channels 64 -o masks.xyz
    dtrsurgeon plot: error: -o masks.xyz: unknown image format '.xyz'; the suffix names the format, use one of: .eps, ...

``write_output`` writes a hidden temporary file beside the target and renames it over the
target, so a reader sees the old file or the whole new one.  An error, SIGINT or SIGTERM
removes the temporary file; every ``OSError`` (full disk, read-only folder) becomes one
:class:`OutputError` line.  New files get ``0666 & ~umask`` (0644 under the usual umask),
a replaced file keeps its mode (``--in-place`` keeps the input's).
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from dtrsurgeon.errors import DtrSurgeonError

PYTHON = (".py",)


class OutputError(DtrSurgeonError):
    """An output file cannot be written where it was asked to go."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the CLI exits ``128 + signum`` after cleaning up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def image_formats() -> tuple[str, ...]:
    """The suffixes matplotlib can write (``.png``, ``.pdf``, ``.svg``, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return tuple(sorted(f".{ext}" for ext in Figure().canvas.get_supported_filetypes()))


def _read_only(path: Path) -> bool:
    """No write permission for us, or no write bit for anyone (root may write anyway: it still asked not to)."""
    return not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222


def check_output(path, *, flag: str = "-o", formats: Iterable[str], kind: str = "image format", inputs: Iterable[tuple[str, object]] = (),
                 force: bool = False, in_place: bool = False, replace_existing: bool = False) -> Path:
    """Refuse an output target before any work is done; returns it as a ``Path``.

    ``formats``: the suffixes this output may have (``kind`` names them in the error); ``inputs``: ``(what, path)`` of the
    files the command reads (never overwritten unless ``in_place``); an existing target
    needs ``force`` unless ``replace_existing`` (plots) or ``in_place``; a read-only one
    needs ``force`` always.
    """
    target = Path(path)
    where = f"{flag} {target}"
    suffix = target.suffix.lower()
    formats = tuple(formats)
    if target.is_dir():
        raise OutputError(f"{where}: that is a folder; name a file")
    if suffix not in formats:
        named = f"unknown {kind} {target.suffix!r}" if suffix else f"no suffix to name the {kind}"
        raise OutputError(f"{where}: {named}; the suffix names the format, use one of: {', '.join(formats)}")
    folder = target.parent
    if not folder.exists():
        raise OutputError(f"{where}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{where}: {folder} is not a folder")
    if _read_only(folder):
        raise OutputError(f"{where}: the folder {folder} is read-only")
    if not target.exists():
        return target
    for what, source in inputs:
        if source is not None and Path(source).exists() and os.path.samefile(source, target) and not in_place:
            raise OutputError(f"{where} is the input {what}; it changes only with --in-place")
    if not (force or replace_existing or in_place):
        raise OutputError(f"{where}: {target} exists; pass --force to overwrite it")
    if _read_only(target) and not force:
        raise OutputError(f"{where}: {target} is read-only; pass --force to replace it anyway")
    return target


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class _SignalGuard:
    """SIGINT/SIGTERM handlers that defer the signal while a file operation must not be cut in
    half, and raise :class:`Interrupted` at once while the (long) write itself runs.

    Outside the main thread signals cannot be handled: the guard does nothing there.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.deferring = True
        self.pending: int | None = None
        self.saved = {}

    def _handle(self, signum, frame):
        if self.deferring:
            self.pending = signum
            return
        raise Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)
        if self.pending is not None:
            raise Interrupted(self.pending)

    def interruptible(self) -> _Interruptible:
        return _Interruptible(self)


class _Interruptible:
    def __init__(self, guard: _SignalGuard):
        self.guard = guard

    def __enter__(self):
        self.guard.deferring = False
        if self.guard.pending is not None:
            signum, self.guard.pending = self.guard.pending, None
            raise Interrupted(signum)

    def __exit__(self, *exc):
        self.guard.deferring = True


def write_output(target, write: Callable[[str], None], *, flag: str = "-o") -> None:
    """Write ``target`` by ``write(temporary_path)``, then rename; nothing is left on failure.

    The temporary file is ``.NAME.XXXX.tmpSUFFIX`` in the target's folder (same file system,
    so the rename is atomic; the suffix lets writers that infer the format from the name
    work).  A symbolic link is written through: the file it points to is replaced.
    """
    target = Path(target)
    final = target.resolve() if target.is_symlink() else target
    mode = stat.S_IMODE(os.stat(final).st_mode) if final.exists() else _new_file_mode()
    tmp = None
    try:
        with _SignalGuard() as guard:
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
                os.close(fd)
                with guard.interruptible():
                    write(tmp)
                os.chmod(tmp, mode)
                os.replace(tmp, final)
                tmp = None
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{flag} {target}: cannot write it: {e.strerror or e}") from e


def write_text(target, text: str, *, flag: str = "-o") -> None:
    write_output(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), flag=flag)
