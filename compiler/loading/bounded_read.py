"""Reading user-supplied files with limits, so that no file can hang the CLI or exhaust memory.

Everything a user names on the command line (model, inputs, config) is read through here:

* only regular files: a FIFO, device (``/dev/zero``), socket or directory is refused
  from ``os.stat`` before it is opened, and again from ``fstat`` after a non-blocking
  open (so a file swapped for a FIFO in between cannot block us either);
* at most the size cap is read, and a file over it is refused;
* zip archives (``.npz``) are checked from their end record and central directory
  (entry count, total decompressed size) before anything is extracted, and ``.npy``
  headers against their entry sizes (numpy allocates what the header says);
* parsed JSON/TOML/YAML may nest at most ``AUTOGLM_MAX_NESTING`` levels (a parser's
  ``RecursionError`` is a refusal too) and hold at most ``AUTOGLM_MAX_DOC_NODES``
  values, counted as a consumer would see them (YAML aliases can expand a small
  file to billions of values).

================================  ============  ==============================================
environment variable              default       what it caps
================================  ============  ==============================================
``AUTOGLM_MAX_MODEL_BYTES``       16 GiB        model files (``.pt2``, state dicts)
``AUTOGLM_MAX_INPUTS_BYTES``      2 GiB         example-inputs / ``run --inputs`` files
``AUTOGLM_MAX_CONFIG_BYTES``      16 MiB        ``--config`` files
``AUTOGLM_MAX_UNZIPPED_BYTES``    2 GiB         total decompressed size of a zip (``.npz``)
``AUTOGLM_MAX_ZIP_MEMBERS``       10000         entries in a zip archive
``AUTOGLM_MAX_NESTING``           64            nesting depth of a JSON/TOML/YAML document
``AUTOGLM_MAX_DOC_NODES``         10000000      values in one parsed document
================================  ============  ==============================================

Sizes are bytes, optionally with a ``K``/``M``/``G``/``T`` suffix (powers of 1024),
e.g. ``AUTOGLM_MAX_INPUTS_BYTES=8G``. Every refusal raises the ``error`` class the
caller passes (``ModelLoadError``, ``ConfigError``, ...), which the CLI reports as
one ``autoglm: error:`` line with exit status 1.
"""
from __future__ import annotations

import io
import math
import os
import re
import stat
import struct
import zipfile
from typing import Any, Callable

__all__ = ["FileLimitError", "limit", "require_regular_file", "read_user_file", "open_zip", "check_zip_limits", "check_npz",
           "check_nesting", "parse_document", "loads_json", "format_size"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# name -> (environment variable, default); *_BYTES limits are shown as sizes in messages
_LIMITS: dict[str, tuple[str, int]] = {
    "model": ("AUTOGLM_MAX_MODEL_BYTES", 16 * GiB),
    "inputs": ("AUTOGLM_MAX_INPUTS_BYTES", 2 * GiB),
    "config": ("AUTOGLM_MAX_CONFIG_BYTES", 16 * MiB),
    "unzipped": ("AUTOGLM_MAX_UNZIPPED_BYTES", 2 * GiB),
    "zip_members": ("AUTOGLM_MAX_ZIP_MEMBERS", 10_000),
    "nesting": ("AUTOGLM_MAX_NESTING", 64),
    "doc_nodes": ("AUTOGLM_MAX_DOC_NODES", 10_000_000),
}
_SIZE_RE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_ErrorType = Callable[[str], Exception]


class FileLimitError(ValueError):
    """A file is not a regular file or exceeds a limit (used when the caller names no error class)."""


def format_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def limit(name: str, error: _ErrorType = FileLimitError) -> int:
    """The cap ``name`` (a key of the table in the module docstring), from its variable or the default."""
    env, default = _LIMITS[name]
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    m = _SIZE_RE.fullmatch(raw)
    if not m or int(m.group(1)) == 0:
        raise error(f"{env}={raw!r} is not a positive number (e.g. 1000, 512M or 8G)")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def _over(what: str, amount: str, name: str, cap: int) -> str:
    """The refusal message for limit ``name``: what was found, the cap, and the variable that raises it."""
    env = _LIMITS[name][0]
    shown = format_size(cap) if env.endswith("_BYTES") else f"{cap:,}"
    return f"{what} {amount}, over the {shown} limit (set {env} to raise it)"


def _beyond(what: str, name: str) -> str:
    return f"{what}; refused (set {_LIMITS[name][0]} to raise the limit)"


# ---------------------------------------------------------------- plain files

_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _require_regular(st: os.stat_result, path: str, what: str, error: _ErrorType) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a directory, expected a file")
    kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
    raise error(f"{what} {path} is {kind}, not a regular file; refused (reading it could block or never end)")


def _open_nonblocking(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))


def _read_at_most(f: io.BufferedReader, size_hint: int, max_bytes: int) -> bytes:
    # One read of the expected size: a model can be GiBs, so no chunk list + join (a second copy).
    data = f.read(min(size_hint, max_bytes) + 1)
    if len(data) <= size_hint:
        return data
    # Longer than fstat said (a growing file, or a /proc-style file that reports 0): read on, up to the cap.
    chunks, total = [data], len(data)
    while total <= max_bytes:
        chunk = f.read(min(16 * MiB, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def require_regular_file(path: str | os.PathLike, what: str, cap: str, *,
                         error: _ErrorType = FileLimitError) -> os.stat_result:
    """``os.stat(path)``, refusing anything but a regular file of at most ``limit(cap)`` bytes.

    For readers that open the file themselves (safetensors maps it): checked from the path,
    before opening, since opening a device or a FIFO can already have effects or block.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError as exc:
        raise error(f"{what} {p} does not exist") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    _require_regular(st, p, what, error)
    max_bytes = limit(cap, error)
    if st.st_size > max_bytes:
        raise error(_over(f"{what} {p}", f"is {format_size(st.st_size)}", cap, max_bytes))
    return st


def read_user_file(path: str | os.PathLike, what: str, cap: str, *, error: _ErrorType = FileLimitError) -> bytes:
    """The bytes of the regular file ``path``, refusing anything else and files over ``limit(cap)``.

    ``what`` names the file in messages ("model file", "config file"); ``cap`` is a key of the
    limits table ("model", "inputs", "config").
    """
    p = os.fspath(path)
    max_bytes = limit(cap, error)
    require_regular_file(p, what, cap, error=error)
    try:
        with open(p, "rb", opener=_open_nonblocking) as f:
            st = os.fstat(f.fileno())
            _require_regular(st, p, what, error)  # swapped between stat and open
            if st.st_size > max_bytes:
                raise error(_over(f"{what} {p}", f"is {format_size(st.st_size)}", cap, max_bytes))
            data = _read_at_most(f, st.st_size, max_bytes)
    except FileNotFoundError as exc:
        raise error(f"{what} {p} does not exist") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise error(_over(f"{what} {p}", "is larger", cap, max_bytes))
    return data


# ---------------------------------------------------------------- zip archives

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (zipfile.structEndArchive)
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end record (zipfile.structEndArchive64)
_ZIP_ENTRY_BYTES = 1024  # central-directory bytes allowed per permitted entry (a typical one is < 100)


def _declared_directory(data: bytes) -> tuple[int, int] | None:
    """(entries, central directory bytes) from the zip's end record, before zipfile parses the directory."""
    pos = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if pos < 0 or pos + _EOCD.size > len(data):
        return None
    fields = _EOCD.unpack_from(data, pos)
    entries, size = fields[4], fields[5]
    if (entries == 0xFFFF or size == 0xFFFFFFFF) and pos >= 20:  # zip64: a locator precedes the end record
        sig, _, offset, _ = struct.unpack_from("<4sLQL", data, pos - 20)
        if sig == b"PK\x06\x07" and offset + _EOCD64.size <= len(data):
            fields64 = _EOCD64.unpack_from(data, offset)
            if fields64[0] == b"PK\x06\x06":
                entries, size = fields64[7], fields64[8]
    return entries, size


def check_zip_limits(zf: zipfile.ZipFile, label: str, *, error: _ErrorType = FileLimitError,
                     max_unzipped: int | None = None, max_members: int | None = None) -> None:
    """Refuse an open zip whose central directory lists too many entries or too many decompressed bytes.

    The declared sizes are a real bound: zipfile stops decompressing an entry at its
    ``file_size`` (and then fails its CRC check), so a lying entry cannot inflate further.
    """
    max_members = limit("zip_members", error) if max_members is None else max_members
    max_unzipped = limit("unzipped", error) if max_unzipped is None else max_unzipped
    infos = zf.infolist()
    if len(infos) > max_members:
        raise error(_over(label, f"has {len(infos):,} zip entries", "zip_members", max_members))
    total = sum(i.file_size for i in infos)
    if total > max_unzipped:
        raise error(_over(label, f"would decompress to {format_size(total)}", "unzipped", max_unzipped))


def open_zip(data: bytes, label: str, *, error: _ErrorType = FileLimitError, max_unzipped: int | None = None,
             max_members: int | None = None) -> zipfile.ZipFile:
    """A ``ZipFile`` over ``data`` whose directory is within the caps; nothing has been extracted yet."""
    max_members = limit("zip_members", error) if max_members is None else max_members
    declared = _declared_directory(data)
    # zipfile builds one object per directory entry while opening: check the declared count and size first.
    if declared is not None and declared[0] > max_members:
        raise error(_over(label, f"declares {declared[0]:,} zip entries", "zip_members", max_members))
    if declared is not None and declared[1] > max_members * _ZIP_ENTRY_BYTES:
        raise error(_beyond(f"{label} has a {format_size(declared[1])} zip directory, too large for the "
                            f"{max_members:,} entries allowed", "zip_members"))
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise error(f"{label} is not a readable zip archive ({type(exc).__name__}: {exc})") from exc
    try:
        check_zip_limits(zf, label, error=error, max_unzipped=max_unzipped, max_members=max_members)
    except BaseException:
        zf.close()
        raise
    return zf


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], Any] | None:
    import numpy.lib.format as npformat

    with zf.open(info) as fh:
        if fh.read(len(npformat.MAGIC_PREFIX)) != npformat.MAGIC_PREFIX:
            return None  # numpy returns such entries as raw bytes, bounded by the entry size
        version = tuple(fh.read(2))
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")  # 3.0: non-latin-1 field names only
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
    return tuple(shape), dtype


def check_npz(data: bytes, label: str, *, error: _ErrorType = FileLimitError) -> None:
    """Refuse an ``.npz`` that would make numpy decompress or allocate past the caps.

    numpy allocates ``shape x itemsize`` from each ``.npy`` header before reading the data,
    and the data can be no longer than the entry's declared size, so a larger header is a lie.
    """
    with open_zip(data, label, error=error) as zf:
        for info in zf.infolist():
            try:
                header = _npy_header(zf, info)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
                raise error(f"{label}: entry {info.filename!r} is not a readable .npy array "
                            f"({type(exc).__name__}: {exc})") from exc
            if header is None:
                continue
            shape, dtype = header
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise error(f"{label}: array {info.filename!r} claims shape {list(shape)} "
                            f"({format_size(nbytes)}) but its entry holds {format_size(info.file_size)}; refused")


# ---------------------------------------------------------------- parsed documents


def _children(obj: Any) -> Any:
    if isinstance(obj, dict):
        return obj.values()
    if isinstance(obj, (list, tuple)):
        return obj
    return None


def check_nesting(doc: Any, label: str, *, error: _ErrorType = FileLimitError, max_depth: int | None = None,
                  max_nodes: int | None = None) -> None:
    """Refuse a parsed document nested deeper than ``max_depth`` containers or holding over ``max_nodes`` values.

    Iterative, so the check itself cannot hit the recursion limit (code walking the document
    recursively later would). Shared objects (YAML aliases) count every time they appear,
    as they would for any consumer; values are counted before being queued, so the walk is
    bounded by ``max_nodes`` however the document is shaped.
    """
    max_depth = limit("nesting", error) if max_depth is None else max_depth
    max_nodes = limit("doc_nodes", error) if max_nodes is None else max_nodes
    stack, nodes = [(doc, 1)], 1
    while stack:
        obj, depth = stack.pop()
        children = _children(obj)
        if children is None:
            continue
        if depth > max_depth:
            raise error(_beyond(f"{label} nests containers more than {max_depth} levels deep", "nesting"))
        nodes += len(children)
        if nodes > max_nodes:
            raise error(_beyond(f"{label} holds more than {max_nodes:,} values", "doc_nodes"))
        stack.extend((c, depth + 1) for c in children if _children(c) is not None)


def _too_deep(label: str, error: _ErrorType) -> Exception:
    return error(_beyond(f"{label} nests too deeply to parse (the limit is {limit('nesting', error)} levels)",
                         "nesting"))


def parse_document(parse: Callable[[Any], Any], text: Any, label: str, *,
                   error: _ErrorType = FileLimitError) -> Any:
    """``parse(text)``, refusing documents nested too deeply (the parser's ``RecursionError`` included).

    Other parser exceptions propagate, for the caller to word as syntax errors.
    """
    try:
        doc = parse(text)
    except RecursionError as exc:
        raise _too_deep(label, error) from exc
    check_nesting(doc, label, error=error)
    return doc


def loads_json(data: str | bytes, label: str, *, error: _ErrorType = FileLimitError,
               max_depth: int | None = None) -> Any:
    """``json.loads`` for untrusted JSON: syntax errors, deep nesting and huge documents all raise ``error``.

    ``max_depth``: the nesting allowed (default ``AUTOGLM_MAX_NESTING``; our own files nest deeper).
    """
    import json

    try:
        doc = json.loads(data)
    except RecursionError as exc:
        raise _too_deep(label, error) from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the int digit-count limit
        raise error(f"{label} is not valid JSON ({exc})") from exc
    check_nesting(doc, label, error=error, max_depth=max_depth)
    return doc
