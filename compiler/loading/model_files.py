"""Loading models and example inputs from files without running code from them.

A pickle is a program, so every accepted format is read by a loader that cannot
execute code from the file:

=====================  ==========================================================
``.pt2``               ``torch.export.save`` archives, checked *before* torch reads
                       them (see below), then ``torch.export.load`` on the checked
                       bytes and ``ep.module(check_guards=False)``.
``.safetensors``       a state dict (safetensors never unpickles) + ``--model``.
``.pt`` / ``.pth``     a state dict read with ``torch.load(weights_only=True)`` +
                       ``--model package.module:factory`` (the user's own code
                       builds the module; the file only supplies tensors).
inputs ``.pt``         ``weights_only=True``; tensors, tuples/lists, dicts, scalars.
inputs ``.npz``        ``numpy.load(allow_pickle=False)``.
inputs ``.safetensors``  tensors by name.
=====================  ==========================================================

Whole-module pickles and TorchScript archives are refused unless the caller
passes ``trust_remote_code=True``; there is never an automatic fallback to full
unpickling.

How ``.pt2`` archives are checked and rebuilt before torch reads them (torch
2.13 would otherwise unpickle and ``exec`` parts of them) is in
``autoglm.loading.pt2_reader`` and ``autoglm.loading.pt2_checks``.

NaN/Inf weights are refused (``allow_nonfinite=True`` turns that into a warning).
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from autoglm.loading.bounded_read import check_npz, read_user_file
from autoglm.loading.file_safety import GLOBAL_RE, ModelLoadError, UnsafeFileError, first_line, safe_torch_load
from autoglm.capture.dynamic import named_dims_of_export
from autoglm.loading.pt2_reader import read_pt2

__all__ = ["ModelLoadError", "UnsafeFileError", "LoadedModel", "ExampleInputs", "load_model",
           "load_example_inputs", "import_factory", "safe_torch_load"]

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
INPUT_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")


@dataclass
class ExampleInputs:
    args: tuple
    kwargs: dict[str, Any]

    def as_call(self) -> Any:
        """The ``example_inputs`` form ``autoglm.compile`` takes (tuple or dict)."""
        if self.kwargs and self.args:
            raise ModelLoadError("example inputs mix positional and keyword tensors; use one kind")
        return dict(self.kwargs) if self.kwargs else tuple(self.args)

    def describe(self) -> str:
        def one(t: Any) -> str:
            if isinstance(t, torch.Tensor):
                return f"{str(t.dtype).replace('torch.', '')}[{'x'.join(map(str, t.shape))}]"
            return type(t).__name__
        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


@dataclass
class LoadedModel:
    module: nn.Module
    path: str
    kind: str  # "pt2" | "state_dict" | "pickle" | "torchscript"
    example_inputs: ExampleInputs | None = None  # from the archive or the factory
    warnings: tuple[str, ...] = ()
    dynamic: dict[str, dict[int, Any]] | None = None  # a .pt2's dynamic dims by input name


# ---------------------------------------------------------------- small helpers


def _read_bytes(path: Path, what: str, cap: str = "model") -> bytes:
    # Regular files only, at most the cap (autoglm.loading.bounded_read): a FIFO, /dev/zero or a
    # huge file must not hang the CLI or exhaust memory.
    data = read_user_file(path, what, cap, error=ModelLoadError)
    if not data:
        raise ModelLoadError(f"{what} {path} is empty (0 bytes)")
    return data


def _zip_names(data: bytes) -> list[str] | None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _is_torchscript(names: list[str]) -> bool:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _is_pt2(names: list[str]) -> bool:
    return any(n.split("/", 1)[-1] == "archive_format" for n in names)


def _load_pt2(path: Path, data: bytes, trust_remote_code: bool = False) -> LoadedModel:
    ep, example = read_pt2(data, str(path), trust_remote_code=trust_remote_code)
    try:
        # check_guards=False: the guard function is generated from strings in the
        # file and exec'd; input shapes are still checked by the module's pre-hook.
        gm = ep.module(check_guards=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot rebuild the exported module ({first_line(exc)})") from exc
    # ep.module() forbids .eval(); a plain GraphModule over the same graph does not.
    module = torch.fx.GraphModule(gm, gm.graph)
    tensors = {**ep.state_dict, **{k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)}}
    inputs = None
    if example is not None:
        args, kwargs = example
        inputs = ExampleInputs(tuple(args), dict(kwargs))
    return LoadedModel(module, str(path), "pt2", inputs, warnings=tuple(_nonfinite_warnings(tensors)),
                       dynamic=named_dims_of_export(ep))


# ---------------------------------------------------------------- state dicts


def _is_cwd(entry: str) -> bool:
    return os.path.abspath(entry or os.curdir) == os.getcwd()  # "" on sys.path means the cwd too


@contextmanager
def _cwd_off_sys_path() -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if not _is_cwd(p)]
    try:
        yield
    finally:  # put the cwd entries back, keeping what the imported code added
        sys.path[:] = saved + [p for p in sys.path if p not in saved]


def _provided_elsewhere(top: str) -> bool:
    """Whether the stdlib, an installed package or an already imported module provides ``top``."""
    if top in sys.stdlib_module_names:
        return True
    with _cwd_off_sys_path():
        try:
            return importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):  # a module without a spec is already imported: provided
            return True


def _import_user_module(mod_name: str) -> Any:
    """Import the user's module, looking in the current directory only for names nothing else provides.

    Like uvicorn/gunicorn, the user's package is usually in the cwd; but a downloaded model
    folder must never shadow the standard library or an installed package (its ``html.py``
    would run on the next ``import html``). So a name provided elsewhere is imported with the
    cwd taken off ``sys.path``, and the cwd is only ever appended at the end of ``sys.path``.
    """
    top = mod_name.partition(".")[0]
    if _provided_elsewhere(top):
        with _cwd_off_sys_path():
            return importlib.import_module(mod_name)
    if not any(_is_cwd(p) for p in sys.path):
        sys.path.append(os.getcwd())
    return importlib.import_module(mod_name)


def _shadow_note(top: str) -> str:
    """Why a same-named file in the cwd was not used (for error messages)."""
    cwd = os.getcwd()
    if not (os.path.isfile(os.path.join(cwd, f"{top}.py")) or os.path.isdir(os.path.join(cwd, top))):
        return ""
    loaded = getattr(sys.modules.get(top), "__file__", None) or ""
    if loaded.startswith(cwd + os.sep) or not _provided_elsewhere(top):  # it is the cwd's (imported earlier)
        return ""
    return (f"; {top} is a standard-library or installed module, so the {top} in the current directory is "
            "not imported (rename it)")


def import_factory(spec: str) -> Callable[[], Any]:
    """``package.module:function`` → the callable (the user's own code, imported by name)."""
    if spec.count(":") != 1:
        raise ModelLoadError(f"--model {spec!r} must look like package.module:factory")
    mod_name, attr = spec.split(":")
    if not mod_name or not attr:
        raise ModelLoadError(f"--model {spec!r} must look like package.module:factory")
    note = _shadow_note(mod_name.partition(".")[0])
    try:
        module = _import_user_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - ImportError or an error in the user's module
        raise ModelLoadError(f"--model {spec}: cannot import {mod_name} ({first_line(exc)}){note}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"--model {spec}: {mod_name} has no attribute {attr!r}{note}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"--model {spec}: {attr} is not callable")
    return obj


def _build_from_factory(spec: str) -> tuple[nn.Module, ExampleInputs | None]:
    factory = import_factory(spec)
    try:
        built = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory
        raise ModelLoadError(f"--model {spec} raised {first_line(exc)}") from exc
    inputs = None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        built, example = built  # the examples/models.py convention: (model, example_inputs)
        inputs = ExampleInputs(tuple(example), {}) if isinstance(example, (tuple, list)) else None
    if not isinstance(built, nn.Module):
        raise ModelLoadError(f"--model {spec} returned {type(built).__name__}, expected a torch.nn.Module")
    return built, inputs


def _unwrap_state_dict(obj: Any, label: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):  # common training-checkpoint layouts
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ModelLoadError(f"{label} holds {type(obj).__name__}, expected a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{label}: entry {bad[0]!r} is not a tensor; expected a state dict (name -> tensor)")
    return obj


def _nonfinite_warnings(tensors: dict[str, torch.Tensor]) -> list[str]:
    out = []
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            out.append(name)
    return out


def _apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if extra:
            parts.append(f"unexpected {len(extra)} ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
        raise ModelLoadError(f"{label} does not match the model built by --model: keys {'; '.join(parts)}")
    for k, ref in expected.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise ModelLoadError(f"{label}: {k} has shape {list(state[k].shape)}, the model expects {list(ref.shape)}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{label}: cannot load into the model ({first_line(exc)})") from exc


def _load_state_dict_file(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load as st_load

        try:
            return _unwrap_state_dict(st_load(data), str(path))
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors header errors
            raise ModelLoadError(f"{path} is not a readable safetensors file ({first_line(exc)})") from exc
    return _unwrap_state_dict(safe_torch_load(data, str(path)), str(path))


# ---------------------------------------------------------------- public API


def load_model(path: str | os.PathLike, *, factory: str | None = None, trust_remote_code: bool = False,
               allow_nonfinite: bool = False) -> LoadedModel:
    """Load a model file safely (see the module docstring for what is accepted)."""
    p = Path(path)
    data = _read_bytes(p, "model file")
    names = _zip_names(data)
    if names is not None and _is_pt2(names) or p.suffix == ".pt2":
        if factory:
            raise ModelLoadError(f"--model is for state dicts; {p} is a torch.export archive and holds its own graph")
        loaded = _load_pt2(p, data, trust_remote_code)
    elif names is not None and _is_torchscript(names):
        if not trust_remote_code:
            raise UnsafeFileError(f"{p} is a TorchScript archive: loading it runs the code stored inside. Export "
                                  "the model with torch.export.save (.pt2), or pass --trust-remote-code if you "
                                  "trust this file")
        loaded = LoadedModel(torch.jit.load(io.BytesIO(data), map_location="cpu"), str(p), "torchscript")
    elif p.suffix == ".safetensors" or p.suffix in STATE_DICT_SUFFIXES:
        try:
            state = _load_state_dict_file(p, data)
        except UnsafeFileError as exc:
            if not trust_remote_code:
                found = GLOBAL_RE.search(str(exc.__cause__ or ""))
                culprit = f", it references {found.group(1)}" if found else ""
                raise UnsafeFileError(f"{p} is a pickled Python object (e.g. a whole nn.Module{culprit}), not a "
                                      "state dict; unpickling it could run code from the file, so it is refused. "
                                      "Save model.state_dict() and pass --model package.module:factory, export "
                                      "with torch.export.save, or pass --trust-remote-code if you trust this "
                                      "file") from exc
            return _load_trusted_pickle(p, data, allow_nonfinite)
        if not factory:
            raise ModelLoadError(f"{p} is a state dict (weights only); pass --model package.module:factory "
                                 "naming the function that builds the model")
        model, inputs = _build_from_factory(factory)
        _apply_state_dict(model, state, str(p))
        loaded = LoadedModel(model, str(p), "state_dict", inputs, tuple(_nonfinite_warnings(state)))
    else:
        raise ModelLoadError(f"{p}: unsupported model format {p.suffix or '(no extension)'!r}; use .pt2 "
                             "(torch.export.save) or a .safetensors/.pt state dict with --model")
    return _finish(loaded, allow_nonfinite)


def _load_trusted_pickle(p: Path, data: bytes, allow_nonfinite: bool) -> LoadedModel:
    obj = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")  # the user said they trust it
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{p} unpickled to {type(obj).__name__}, expected a torch.nn.Module")
    return _finish(LoadedModel(obj, str(p), "pickle"), allow_nonfinite)


def _finish(loaded: LoadedModel, allow_nonfinite: bool) -> LoadedModel:
    if loaded.kind in ("pickle", "torchscript"):
        tensors = dict(loaded.module.state_dict())
        loaded.warnings = tuple(_nonfinite_warnings(tensors))
    if loaded.warnings:
        names = ", ".join(loaded.warnings[:3]) + (", ..." if len(loaded.warnings) > 3 else "")
        if not allow_nonfinite:
            raise ModelLoadError(f"{loaded.path}: weights contain NaN/Inf ({names}); outputs would be meaningless. "
                                 "Pass --allow-nonfinite to compile anyway")
        loaded.warnings = (f"weights contain NaN/Inf ({names})",)
    return loaded


_POSITIONAL_KEY = re.compile(r"^(?:arr|input|arg)_(\d+)$")


def _by_names(named: dict[str, Any]) -> ExampleInputs:
    """``arr_0, arr_1`` (np.savez's names), ``input_0``, ``arg_0`` → positional; other names → keywords."""
    matches = {k: _POSITIONAL_KEY.match(k) for k in named}
    if named and all(matches.values()):
        order = sorted(named, key=lambda k: int(matches[k].group(1)))  # type: ignore[union-attr]
        return ExampleInputs(tuple(named[k] for k in order), {})
    return ExampleInputs((), dict(named))


def _check_input_tree(obj: Any, label: str, depth: int = 0) -> None:
    if depth > 8:
        raise ModelLoadError(f"{label}: inputs nest deeper than 8 levels")
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            raise ModelLoadError(f"{label}: {obj.layout} tensors are not supported as example inputs")
        return
    if obj is None or isinstance(obj, (bool, int, float)):
        return
    if isinstance(obj, (tuple, list)):
        for v in obj:
            _check_input_tree(v, label, depth + 1)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ModelLoadError(f"{label}: dict keys must be strings, got {type(k).__name__}")
            _check_input_tree(v, label, depth + 1)
        return
    raise ModelLoadError(f"{label}: holds a {type(obj).__name__}; example inputs are tensors, tuples/lists, "
                         "dicts and plain numbers")


def load_example_inputs(path: str | os.PathLike) -> ExampleInputs:
    """Example inputs from ``.pt`` (weights_only), ``.npz`` (no pickle) or ``.safetensors``."""
    p = Path(path)
    data = _read_bytes(p, "inputs file", "inputs")
    label = str(p)
    if p.suffix == ".npz":
        import numpy as np

        if not zipfile.is_zipfile(io.BytesIO(data)):  # numpy would otherwise try to read it as a pickle
            raise ModelLoadError(f"{label} is not a readable .npz file (not a zip archive)")
        check_npz(data, label, error=ModelLoadError)  # a 2 MB zip can inflate to GiBs: check before numpy reads
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                named = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise UnsafeFileError(f"{label} holds object arrays that need unpickling; refused (save "
                                      "numeric arrays only)") from exc
            raise ModelLoadError(f"{label} is not a readable .npz file ({first_line(exc)})") from exc
        except TypeError as exc:
            raise ModelLoadError(f"{label}: array dtype not supported by torch ({first_line(exc)})") from exc
        except Exception as exc:  # noqa: BLE001 - zip/format errors
            raise ModelLoadError(f"{label} is not a readable .npz file ({first_line(exc)})") from exc
        if not named:
            raise ModelLoadError(f"{label} holds no arrays")
        return _by_names(named)
    if p.suffix == ".safetensors":
        from safetensors.torch import load as st_load

        try:
            named = st_load(data)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{label} is not a readable safetensors file ({first_line(exc)})") from exc
        if not named:
            raise ModelLoadError(f"{label} holds no tensors")
        return _by_names(named)
    if p.suffix in (".pt", ".pth"):
        names = _zip_names(data)
        if names is not None and (_is_torchscript(names) or _is_pt2(names)):
            raise ModelLoadError(f"{label} is a model archive, not example inputs")
        obj = safe_torch_load(data, label)
        _check_input_tree(obj, label)
        if isinstance(obj, torch.Tensor):
            return ExampleInputs((obj,), {})
        if isinstance(obj, (tuple, list)):
            if not obj:
                raise ModelLoadError(f"{label} holds an empty {type(obj).__name__}")
            return ExampleInputs(tuple(obj), {})
        if isinstance(obj, dict):
            return ExampleInputs((), dict(obj))
        raise ModelLoadError(f"{label} holds a {type(obj).__name__}; save a tensor, a tuple of tensors or a dict")
    raise ModelLoadError(f"{label}: unsupported inputs format {p.suffix or '(no extension)'!r}; use "
                         f"{', '.join(INPUT_SUFFIXES)}")
