"""Hostile ``torch.export`` archives: a real ``torch.export.save`` file, then edited.

Each case is ``(class, name, edit)``; ``edit(members, canary)`` changes the
ordered list of ``[name, bytes]`` zip members, which is written back with
Python's ``zipfile`` (duplicates and odd names included, as an attacker could).
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from tests.hostile.payload import pickle_bytes, python, shell

Members = list[list]  # [name, bytes]
Edit = Callable[[Members, str], None]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)) * x.shape[0]


def base_archive(path: Path, dynamic: bool = False) -> Path:
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    shapes = {"x": {0: torch.export.Dim("batch", min=2, max=64)}} if dynamic else None
    ep = torch.export.export(Tiny().eval(), (x,), dynamic_shapes=shapes, strict=False)
    torch.export.save(ep, str(path))
    return path


def read_members(path: Path) -> Members:
    with zipfile.ZipFile(path) as zf:
        return [[i.filename, zf.read(i)] for i in zf.infolist()]


def write_members(members: Members, path: Path, compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, blob in members:
            zf.writestr(zipfile.ZipInfo(name), blob, compress_type=compress)
    return path


def _root(members: Members) -> str:
    return members[0][0].split("/", 1)[0]


def _find(members: Members, suffix: str) -> list:
    return next(m for m in members if m[0].endswith(suffix))


def _edit_model_json(members: Members, change: Callable[[dict], None]) -> None:
    entry = _find(members, "models/model.json")
    doc = json.loads(entry[1])
    change(doc)
    entry[1] = json.dumps(doc).encode()


def _replace_text(members: Members, old: str, new: str) -> None:
    """Replace a JSON string value everywhere in the graph and its weights config."""
    for entry in members:
        if entry[0].endswith(".json"):
            entry[1] = entry[1].replace(json.dumps(old).encode(), json.dumps(new).encode())


def _target(name: str) -> Edit:
    def edit(members: Members, canary: str) -> None:
        def change(doc: dict) -> None:
            doc["graph_module"]["graph"]["nodes"][0]["target"] = name
        _edit_model_json(members, change)
    return edit


def _input_name(members: Members, canary: str) -> None:
    _replace_text(members, "x", f"x={python(canary)}")


def _fqn(members: Members, canary: str) -> None:
    _replace_text(members, "lin.weight", f'lin.weight"),{python(canary)},("')


def _arg_name(members: Members, canary: str) -> None:
    _replace_text(members, "relu", f"relu;{python(canary)}")


def _expr(members: Members, canary: str) -> None:
    entry = _find(members, "models/model.json")
    text = entry[1].decode()
    start = text.index('"expr_str": "') + len('"expr_str": "')
    end = text.index('"', start)
    entry[1] = (text[:start] + python(canary).replace("'", "\\u0027") + text[end:]).encode()


def _guard(members: Members, canary: str) -> None:
    _edit_model_json(members, lambda doc: doc.__setitem__("guards_code", [python(canary)]))


def _string_with_quote(members: Members, canary: str) -> None:
    def change(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["metadata"]["torch_fn"] = f'a"); {python(canary)}; ("'
    _edit_model_json(members, change)


def _sample_pickle(members: Members, canary: str) -> None:
    _find(members, "data/sample_inputs/model.pt")[1] = pickle_bytes(canary)


def _duplicate_member(members: Members, canary: str) -> None:
    # zipfile reads the last of two same-named members, torch's reader the first.
    name = _find(members, "data/sample_inputs/model.pt")[0]
    members.insert(0, [name, pickle_bytes(canary)])


def _case_collision(members: Members, canary: str) -> None:
    name = _find(members, "data/sample_inputs/model.pt")[0]
    members.append([name.replace("model.pt", "MODEL.pt"), pickle_bytes(canary)])


def _case_folder(members: Members, canary: str) -> None:
    members.append([f"{_root(members)}/Data/sample_inputs/model.pt", pickle_bytes(canary)])


def _renamed_model(members: Members, canary: str) -> None:
    # a second model whose sample inputs are a payload, and the folder it sits in renamed
    root = _root(members)
    members.append([f"{root}/models/evil.json", _find(members, "models/model.json")[1]])
    members.append([f"{root}/data/sample_inputs/evil.pt", pickle_bytes(canary)])


def _second_root(members: Members, canary: str) -> None:
    members.append([f"other/data/sample_inputs/model.pt", pickle_bytes(canary)])


def _pickled_weight(members: Members, canary: str) -> None:
    entry = _find(members, "model_weights_config.json")
    doc = json.loads(entry[1])
    meta = doc["config"]["lin.weight"]
    meta["use_pickle"] = True
    _find(members, "data/weights/" + meta["path_name"])[1] = pickle_bytes(canary)
    entry[1] = json.dumps(doc).encode()


def _opaque_constant(members: Members, canary: str) -> None:
    root = _root(members)
    entry = _find(members, "model_constants_config.json")
    doc = json.loads(entry[1])
    doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}
    entry[1] = json.dumps(doc).encode()
    members.append([f"{root}/data/constants/opaque_obj_0", pickle_bytes(canary)])


def _extra_member(name: str) -> Edit:
    return lambda members, canary: members.append([f"{_root(members)}/{name}", pickle_bytes(canary)])


def _legacy_weights(members: Members, canary: str) -> None:
    members.append([f"{_root(members)}/data/weights/model.pt", pickle_bytes(canary)])


def _path_escape(members: Members, canary: str) -> None:
    members.append([f"{_root(members)}/../../evil.pt", pickle_bytes(canary)])


def _deep_json(members: Members, canary: str) -> None:
    entry = _find(members, "models/model.json")
    entry[1] = b'{"extra": ' + b"[" * 100_000 + b"]" * 100_000 + b", " + entry[1][1:]


def _truncated(members: Members, canary: str) -> None:
    members[:] = [["TRUNCATE", b""]]


CASES: list[tuple[str, str, Edit, bool]] = [  # (class, name, edit, needs the dynamic-shape base)
    *[("call-target", t, _target(t), False) for t in (
        "torch.os.system", "builtins.eval", "_operator.call", "_operator.attrgetter", "_operator.methodcaller",
        "torch.ops.aten.save.default", "torch.load", "torch.ops.load_library", "math.__builtins__",
        "torch.ops.higher_order.__class__")],
    ("generated-code", "input-name", _input_name, False),
    ("generated-code", "parameter-fqn", _fqn, False),
    ("generated-code", "value-name", _arg_name, False),
    ("generated-code", "quote-in-metadata", _string_with_quote, False),
    ("generated-code", "sympy-expr", _expr, True),
    ("generated-code", "guard-code", _guard, False),
    ("pickle", "sample-inputs", _sample_pickle, False),
    ("pickle", "use-pickle-weight", _pickled_weight, False),
    ("pickle", "opaque-constant", _opaque_constant, False),
    ("pickle", "legacy-weights", _legacy_weights, False),
    ("zip-layout", "duplicate-member", _duplicate_member, False),
    ("zip-layout", "case-colliding-member", _case_collision, False),
    ("zip-layout", "case-colliding-folder", _case_folder, False),
    ("zip-layout", "renamed-model", _renamed_model, False),
    ("zip-layout", "second-top-folder", _second_root, False),
    ("zip-layout", "path-escape", _path_escape, False),
    *[("zip-layout", f"member:{n}", _extra_member(n), False) for n in (
        "data/aotinductor/model/model.so", "code/__torch__.py", "constants.pkl", "data.pkl", "extra/../x.pkl")],
    ("bounds", "deep-json", _deep_json, False),
]


def build(edit: Edit, base: Path, dest: Path, canary: str) -> Path:
    members = read_members(base)
    edit(members, canary)
    if members == [["TRUNCATE", b""]]:
        dest.write_bytes(base.read_bytes()[:300])
        return dest
    return write_members(members, dest)


def zip_bomb(dest: Path, base: Path, size: int = 80 << 20) -> Path:
    """A valid archive plus one deflated member that inflates to ``size`` bytes of zeros."""
    members = read_members(base)
    members.append([f"{_root(members)}/extra/padding", bytes(size)])
    return write_members(members, dest, zipfile.ZIP_DEFLATED)


def pickle_as_pt2(dest: Path, canary: str) -> Path:
    dest.write_bytes(pickle_bytes(canary))
    return dest


def torch_save_module(dest: Path) -> Path:
    buf = io.BytesIO()
    torch.save(Tiny(), buf)
    dest.write_bytes(buf.getvalue())
    return dest
