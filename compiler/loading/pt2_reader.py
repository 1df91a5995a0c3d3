"""Reading ``torch.export.save`` archives (``.pt2``) without running code from them.

torch reads an archive with its own C++ zip reader, which does not see a zip
the way Python's ``zipfile`` does (duplicate names, names that differ only in
case, data between members). Checking one view and letting torch read the
other is how earlier pre-checks were bypassed. So torch never reads the user's
file here:

1. the zip's central directory is read with ``zipfile``; duplicate names,
   case-colliding names, odd paths, members outside the exact layout torch
   writes (below) and oversized totals are refused;
2. every member is read and checked (``autoglm.loading.pt2_checks``: call targets
   through the exact op table, names as identifiers, no pickles);
3. a **new** archive is written with torch's own writer from the checked bytes
   only (the sample inputs emptied: torch would unpickle them, possibly with
   its ``weights_only=False`` fallback); ``torch.export.load`` reads that;
4. the sample inputs are read by us with the ``weights_only`` unpickler, and
   the loaded graph's call targets are checked against the table once more.

Layout accepted (``<m>`` a model name, ``<p>`` a payload file name)::

    archive_format  archive_version  byteorder  .data/version  .data/serialization_id
    models/<m>.json                         data/sample_inputs/<m>.pt
    data/weights/<m>_weights_config.json    data/weights/<p>
    data/constants/<m>_constants_config.json data/constants/<p>
    extra/<name>

``trust_remote_code=True`` hands the original bytes to torch unchanged (the user
vouches for the file: pickled constants, custom objects and legacy layouts).
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import torch

from autoglm.loading.file_safety import ModelLoadError, UnsafeFileError, first_line, quiet_torch_export_logs, \
    safe_torch_load
from autoglm.loading.op_table import TRUST_FLAG, is_loadable_function
from autoglm.loading.bounded_read import loads_json
from autoglm.loading.pt2_checks import MAX_JSON_DEPTH, check_model_doc, check_payload_config

__all__ = ["read_pt2", "MAX_MEMBERS"]

MAX_MEMBERS = 100_000
_NAME = r"[A-Za-z0-9_]+"
_LAYOUT = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    rf"|models/{_NAME}\.json|data/sample_inputs/{_NAME}\.pt"
    rf"|data/(weights|constants)/{_NAME}(_weights_config\.json|_constants_config\.json)?"
    rf"|extra/{_NAME}(\.{_NAME})*)\Z")
_BOOKKEEPING = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")


def _members(data: bytes, label: str) -> dict[str, bytes]:
    """Relative member name -> bytes, from the central directory, refusing anything ambiguous."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"{label} is not a torch.export archive (not a readable zip file)") from exc
    if not infos:
        raise ModelLoadError(f"{label} is an empty zip file, not a torch.export archive")
    if len(infos) > MAX_MEMBERS:
        raise ModelLoadError(f"{label} has {len(infos)} members (more than {MAX_MEMBERS}); refused")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names) or len({n.lower() for n in names}) != len(names):
        raise UnsafeFileError(f"{label} has zip members whose names repeat or differ only in case; zip readers "
                              "disagree on which one counts, so the archive is refused")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not all("/" in n for n in names) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", next(iter(roots))):
        raise ModelLoadError(f"{label} is not a torch.export archive (expected one top-level folder)")
    root = roots.pop() + "/"
    total = sum(i.file_size for i in infos)
    if total > 4 * len(data) + (64 << 20):  # torch stores members uncompressed: a large ratio is a zip bomb
        raise UnsafeFileError(f"{label} would inflate to {total} bytes from {len(data)}; refused")
    out: dict[str, bytes] = {}
    for info in infos:
        rel = info.filename[len(root):]
        if rel.startswith("data/aotinductor/"):
            raise UnsafeFileError(f"{label} contains AOTInductor compiled code (shared libraries that would be "
                                  "loaded and run); refused. Save with torch.export.save instead of "
                                  "aoti_compile_and_package")
        if info.is_dir():
            continue
        if not _LAYOUT.match(rel):
            raise UnsafeFileError(f"{label} has an unexpected member {rel[:80]!r} that torch may execute or "
                                  "unpickle; refused")
        try:
            out[rel] = zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ModelLoadError(f"{label} is a damaged zip archive ({first_line(exc)})") from exc
    return out


def _check_format(members: dict[str, bytes], label: str) -> None:
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    if "archive_format" not in members or "archive_version" not in members:
        raise ModelLoadError(f"{label} is not a torch.export archive (no archive_format/archive_version); "
                             "older layouts are refused because torch reads them by unpickling")
    fmt, version = members["archive_format"].decode(errors="replace"), members["archive_version"].decode(
        errors="replace")
    if fmt.strip() != "pt2":
        raise ModelLoadError(f"{label}: archive_format is {fmt[:20]!r}, expected 'pt2'")
    if version.strip() != ARCHIVE_VERSION_VALUE:
        raise ModelLoadError(f"{label}: archive version {version[:20]!r} is not {ARCHIVE_VERSION_VALUE!r} "
                             f"(saved by another torch version; re-export with torch {torch.__version__})")


def _checked_members(members: dict[str, bytes], label: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The members torch may read (JSON re-serialised after checking) and the sample-input pickles."""
    models = [r[len("models/"):-len(".json")] for r in members if r.startswith("models/")]
    if not models:
        raise ModelLoadError(f"{label} holds no exported program (no models/*.json)")
    safe: dict[str, bytes] = {}
    samples: dict[str, bytes] = {}
    payloads = {d: {r[len(f"data/{d}/"):] for r in members if r.startswith(f"data/{d}/")}
                for d in ("weights", "constants")}
    for name in models:
        doc = loads_json(members[f"models/{name}.json"], f"{label}: models/{name}.json", error=ModelLoadError,
                         max_depth=MAX_JSON_DEPTH)
        check_model_doc(doc, f"{label}: models/{name}.json")
        safe[f"models/{name}.json"] = json.dumps(doc).encode()
        for folder in ("weights", "constants"):
            if f"data/{folder}/{name}.pt" in members:
                raise UnsafeFileError(f"{label}: data/{folder}/{name}.pt is the legacy pickled layout; refused. "
                                      f"Re-export with torch.export.save on torch {torch.__version__}, or, "
                                      f"if you trust this file, {TRUST_FLAG}")
            config_name = f"data/{folder}/{name}_{folder}_config.json"
            if config_name not in members:
                raise ModelLoadError(f"{label}: {config_name} is missing")
            config = loads_json(members[config_name], f"{label}: {config_name}", error=ModelLoadError,
                                max_depth=MAX_JSON_DEPTH)
            check_payload_config(config, f"{label}: {config_name}", payloads[folder])
            safe[config_name] = json.dumps(config).encode()
            for payload in {m["path_name"] for m in config["config"].values()}:
                safe[f"data/{folder}/{payload}"] = members[f"data/{folder}/{payload}"]
        samples[name] = members.get(f"data/sample_inputs/{name}.pt", b"")
        safe[f"data/sample_inputs/{name}.pt"] = b""  # torch reads b"" as "no example inputs"
    for rel, blob in members.items():
        if rel.startswith("extra/"):
            safe[rel] = blob
    return safe, samples


def _rebuilt_archive(safe: dict[str, bytes]) -> bytes:
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    buf = io.BytesIO()
    with PT2ArchiveWriter(buf) as writer:  # torch's own writer adds the format/version bookkeeping records
        for rel, blob in safe.items():
            if rel not in _BOOKKEEPING:
                writer.write_bytes(rel, blob)
    return buf.getvalue()


def _check_loaded_graph(ep: Any, label: str) -> None:
    for gm in ep.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op == "call_function" and not is_loadable_function(node.target):
                raise UnsafeFileError(f"{label}: node {node.name} calls {node.target!r}, which is not in "
                                      "autoglm's table of loadable operators; refused")


def read_pt2(data: bytes, label: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(exported_program, (args, kwargs) or None)`` from an archive's bytes; see the module doc."""
    if trust_remote_code:
        archive, samples = data, {}
    else:
        members = _members(data, label)
        _check_format(members, label)
        safe, samples = _checked_members(members, label)
        archive = _rebuilt_archive(safe)
    try:
        with quiet_torch_export_logs():
            ep = torch.export.load(io.BytesIO(archive))
    except Exception as exc:  # noqa: BLE001 - corrupted graphs fail in many ways inside torch
        raise ModelLoadError(f"{label}: the exported graph is corrupted or from an incompatible torch "
                             f"({first_line(exc)})") from exc
    if not trust_remote_code:
        _check_loaded_graph(ep, label)
    example = ep.example_inputs
    blob = next(iter(samples.values()), b"")
    if blob:
        example = safe_torch_load(blob, f"{label}: data/sample_inputs")
        if not (isinstance(example, tuple) and len(example) == 2 and isinstance(example[1], dict)):
            raise ModelLoadError(f"{label}: sample inputs are not an (args, kwargs) pair")
    return ep, example
