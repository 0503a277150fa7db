"""Turn what a user hands ``load_spec`` into a plain JSON document, or a one-line SpecError.

A spec arrives as a path, a preset name, a JSON string or a dict.  Whatever the
source, the document that reaches the schema is plain JSON: finite numbers,
string keys, each key once, at most :data:`MAX_DEPTH` levels deep.  Python's
``json`` accepts ``NaN``, ``Infinity`` and repeated keys (the last wins) and
turns ``1e400`` into ``inf``; here each of those is an error at its pointer::

    '{"version": 1, "routing": {"channel_ratio": NaN}}'
        -> SpecError: spec /routing/channel_ratio: expected a finite number, got NaN
    '{"version": 1, "version": 1}'
        -> SpecError: spec /version: duplicate key 'version'

Echoed values and pointers are cut by :func:`preview`, so an error line stays
short whatever the document holds.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from dtrsurgeon.errors import SpecError
from dtrsurgeon.spec.model import Spec

MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; 1 MiB holds thousands of overrides
MAX_DEPTH = 32  # the schema's deepest value is 5 levels down (/overrides/0/task_weights/points/0/0)
MAX_INT_DIGITS = 40  # wider integers are out of every bound the schema states
PREVIEW_CHARS = 60


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """``value`` as JSON, cut to ``limit`` characters: ``"aaaa...(1000000 chars)"``."""
    if isinstance(value, _NonFinite):
        return value.text
    try:
        text = json.dumps(value, default=repr)
    except (ValueError, RecursionError):  # a cyclic or very deep value
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def quote_key(key: str) -> str:
    """``'name'``, as Python quotes it, cut like :func:`preview`."""
    text = repr(key)
    return text if len(text) <= PREVIEW_CHARS else f"{text[:PREVIEW_CHARS]}...({len(key)} chars)"


def pointer(parts) -> str:
    """RFC 6901 pointer of a path, each part cut to a short preview."""
    out = []
    for p in parts:
        s = str(p).replace("~", "~0").replace("/", "~1")
        out.append(s if len(s) <= PREVIEW_CHARS else f"{s[:PREVIEW_CHARS]}...")
    return "".join(f"/{s}" for s in out)


# --- presets ------------------------------------------------------------------------


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (``dit-paper``, ``adm``, ``uvit``)."""
    folder = resources.files("dtrsurgeon.spec").joinpath("presets")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def preset_path(name: str) -> Path | None:
    """The file of preset ``name`` (with or without ``.json``), or None."""
    stem = name.removesuffix(".json")
    if stem not in preset_names():
        return None
    return Path(str(resources.files("dtrsurgeon.spec").joinpath("presets", f"{stem}.json")))


# --- sources --------------------------------------------------------------------------


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


def _is_file(text: str) -> bool:
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):  # a name too long for the OS, a NUL byte
        return False


def resolve_source(source: str | os.PathLike) -> tuple[str, Path | None, str | None]:
    """``(name, path, text)`` of a spec given as a path, a preset name or a JSON string.

    Exactly one of ``path`` and ``text`` is set.  An existing file wins over a
    preset of the same name; a string that is neither is an error listing the presets.
    """
    if isinstance(source, os.PathLike):
        return os.path.basename(os.fspath(source)), Path(source), None
    if not isinstance(source, str):
        raise TypeError(f"spec must be a path, a preset name, a JSON string, a dict or a Spec, got {type(source).__name__}")
    if _is_file(source):
        return os.path.basename(source), Path(source), None
    if _looks_like_json(source):
        return "<string>", None, source
    path = preset_path(source)
    if path is not None:
        return path.name, path, None
    raise SpecError("", f"no spec file or preset named {preview(source)}; presets: {', '.join(preset_names())}")


def source_folder(source) -> Path:
    """The folder a spec's relative file paths resolve against: a spec file's own
    folder, else the working directory (a dict, a JSON string, a Spec)."""
    if isinstance(source, (str, os.PathLike)):
        _, path, _ = resolve_source(source)
        if path is not None:
            return path.parent
    return Path.cwd()


def source_bytes(source) -> tuple[str, bytes]:
    """``(name, bytes)`` identifying a spec source, for generated files' headers.

    A path or a preset gives its file name and bytes; a JSON string or a dict
    its canonical JSON (``<string>`` / ``<dict>``).
    """
    if isinstance(source, (str, os.PathLike)):
        name, path, text = resolve_source(source)
        if path is not None:
            return name, _read_bytes(path)
        return name, json.dumps(plain(parse_text(text, name)), sort_keys=True).encode()
    if isinstance(source, Spec):
        return "<spec>", source.to_json().encode()
    return "<dict>", json.dumps(plain(source), sort_keys=True).encode()


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, reading at most one byte past the bound (``/dev/zero`` never ends)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError("", f"cannot read {preview(str(path))}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the path
        raise SpecError("", f"cannot read {preview(str(path))}: {e}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError("", f"{preview(str(path))}: over {MAX_SPEC_BYTES} bytes; a spec is at most {MAX_SPEC_BYTES} bytes")
    return data


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError("", f"{name}: not UTF-8 at byte {e.start} ({data[e.start:e.start + 1]!r})") from None


# --- parsing ---------------------------------------------------------------------------


class _NonFinite:
    """A number JSON can spell but a spec cannot hold (NaN, Infinity, 1e400, a 5000-digit integer)."""

    def __init__(self, text: str, expected: str = "a finite number"):
        self.text = text if len(text) <= PREVIEW_CHARS else f"{text[:PREVIEW_CHARS]}...({len(text)} chars)"
        self.expected = expected


class _DuplicateKeys(dict):
    """An object in which ``duplicate`` appeared more than once."""

    duplicate: str


def _object(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    seen: set[str] = set()
    first = next(k for k, _ in pairs if k in seen or seen.add(k))
    d = _DuplicateKeys(d)
    d.duplicate = first
    return d


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_INT_DIGITS else _NonFinite(text, f"an integer of at most {MAX_INT_DIGITS} digits")


def parse_text(text: str, name: str) -> Any:
    """JSON text -> value; malformed text and nesting too deep to parse are one-line SpecErrors."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError("", f"{name}: {len(text)} characters; a spec is at most {MAX_SPEC_BYTES} bytes")
    try:
        return json.loads(text, object_pairs_hook=_object, parse_float=_float, parse_int=_int, parse_constant=_NonFinite)
    except json.JSONDecodeError as e:
        raise SpecError("", f"{name}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    except RecursionError:
        raise SpecError("", f"{name}: nested too deeply; a spec is at most {MAX_DEPTH} levels deep") from None


# --- the plain document ------------------------------------------------------------------


def plain(value: Any, path: tuple = (), depth: int = 0) -> Any:
    """A deep copy of ``value`` as plain JSON (dict, list, str, int, finite float, bool, None).

    Raises SpecError at the first value that is not: a non-finite or too wide
    number, a duplicate or non-string key, a non-JSON type, nesting deeper than
    :data:`MAX_DEPTH`.
    """
    if depth > MAX_DEPTH:
        raise SpecError(pointer(path), f"nested too deeply; a spec is at most {MAX_DEPTH} levels deep")
    if isinstance(value, _NonFinite):
        raise SpecError(pointer(path), f"expected {value.expected}, got {value.text}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        if abs(value) >= 10**MAX_INT_DIGITS:
            raise SpecError(pointer(path), f"expected an integer of at most {MAX_INT_DIGITS} digits, got {preview(value)}")
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise SpecError(pointer(path), f"expected a finite number, got {value}")
        return float(value)
    if isinstance(value, Mapping):
        return _plain_object(value, path, depth)
    if isinstance(value, (list, tuple)):
        return [plain(v, (*path, i), depth + 1) for i, v in enumerate(value)]
    raise SpecError(pointer(path), f"expected a JSON value, got a {type(value).__name__}: {preview(value)}")


def _plain_object(value: Mapping, path: tuple, depth: int) -> dict:
    if isinstance(value, _DuplicateKeys):
        raise SpecError(pointer((*path, value.duplicate)), f"duplicate key {quote_key(value.duplicate)}")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise SpecError(pointer((*path, key)), f"expected a string key, got a {type(key).__name__}: {preview(key)}")
        out[key] = plain(item, (*path, key), depth + 1)
    return out


def read_document(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The source as a plain JSON object, or a one-line SpecError."""
    if isinstance(source, Mapping):
        doc = plain(source)
    else:
        name, path, text = resolve_source(source)
        if path is not None:
            text = _decode(_read_bytes(path), str(path))
        doc = plain(parse_text(text, name))
    if not isinstance(doc, dict):
        raise SpecError("", f"expected a JSON object, got {_json_type(doc)}")
    return doc


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
