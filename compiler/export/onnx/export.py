"""Export a compiled graph to ONNX, check it, and run it with onnxruntime.

``cm.export_onnx("out/model.onnx")`` does, in order:

1. **lower** our own modules to plain torch ops on a copy of the graph: a
   module may define ``__autoglm_onnx__() -> nn.Module`` (an exportable twin
   with the same math, e.g. int8 as explicit quantize/dequantize so the file
   carries ``QuantizeLinear``/``DequantizeLinear``); sparse linears (anything
   with ``dense_weight()``) become dense ``nn.Linear`` with zeros, their mask
   recorded in the model's ``metadata_props``;
2. **probe dynamic axes**: the graph is re-run with a different batch (dim 0)
   and sequence (dim 1 of 2-D/3-D inputs) size; an axis is exported dynamic
   only when our graph really computes at the new size (graphs captured by
   ``torch.export`` bake their shapes in and stay static);
3. **export** with the dynamo exporter (``torch.onnx.export(dynamo=True)``;
   why not TorchScript: docs/onnx.md); int8 weights are then stored as
   uint8 + 128 with zero point 128 (``onnx_int8.store_weights_uint8``);
4. **check** in a temporary directory next to the target:
   ``onnx.checker.check_model(full_check=True)``, strict shape inference,
   external-data paths inside the directory, and parity of onnxruntime against
   the compiled graph on the example inputs plus ``parity_sets`` random input
   sets of the same shapes/dtypes/value ranges (and the probe inputs when an
   axis is dynamic);
5. **move** the files into place only when every check passed, so a failure
   never leaves a half-written model.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_flatten_with_path, tree_unflatten

from autoglm.artifacts.atomic import move_into, staging_dir
from autoglm.ir import progress
from autoglm.ir.meta import annotation, has_annotation
from autoglm.export.onnx.check import (OnnxExportError, OnnxParityError, ParityRecord, check_external_paths,
                                check_model, random_like, resized_like, run_parity)
from autoglm.export.onnx.attention import zero_unattended_rows
from autoglm.export.onnx.float64 import float64_twin_module
from autoglm.export.onnx.int8_reference import unrounded_twin
from autoglm.export.onnx.int8 import DYNAMIC_INT8_FORMS, int8_twin, replace_qdq_linears, store_weights_uint8, \
    translation_table
from autoglm.runtime.onnxruntime import OrtExecutor, OrtOptions

__all__ = ["ExportOptions", "OnnxExportResult", "ParityRecord", "OnnxExportError", "OnnxParityError",
           "export_onnx", "export_graph", "attach_onnxruntime", "resolve_options"]


@dataclass
class ExportOptions:
    """``opset``: the ai.onnx opset (18 is what the dynamo exporter's op library
    is written against; >= 13 is needed for per-channel QDQ).
    ``dynamic``: probe and export dynamic batch/sequence axes.
    ``external_data``: None writes weights into the file unless it would pass
    protobuf's 2 GB limit; True always writes ``<name>.data`` next to it.
    ``parity_sets``: random input sets checked on top of the example inputs.
    ``rtol``/``atol``: fp32 parity tolerance (``torch.isclose`` semantics).
    ``int8_min_sqnr_db``: parity budget for graphs with int8 layers, SQNR against
    our int8 outputs (None: the quantize pass's own budget from ``cm.notes``, else 25 dB).
    ``int8_margin_db``: an int8 set under that budget still passes when onnxruntime
    is at most this many dB further than our int8 graph from the same graph without
    activation rounding (int8_reference.py: two int8 runs may round differently at
    a scale choice; the file must be as accurate, not equal). None: budget only.
    ``check``: run the checks (turn off only for debugging an export).
    ``dynamic_int8_as``: how dynamic int8 Linears are written. ``"integer"``:
    ``DynamicQuantizeLinear -> MatMulInteger``, our numbers exactly (onnxruntime fuses it
    into its int8 kernels). ``"weight_only"``: int8 weights, ``DequantizeLinear -> MatMul``
    on the float activation, for runtimes that quantize activations themselves
    (OpenVINO's CPU plugin, per group of 64 values: the OpenVINO backend uses it).
    ``weights_uint8``: store int8 weights as ``uint8 = int8 + 128`` with zero point 128
    (onnxruntime's exact u8 x u8 kernels on CPUs without VNNI, see int8.py). False keeps
    them int8 with zero point 0, which OpenVINO's CPU plugin needs to run a static int8
    Linear as an int8 GEMM (u8 activations x i8 weights): with uint8 weights it
    decompressed them and computed in f32 (real all-MiniLM-L6-v2, 32 x 64, static int8:
    0.499x eager with uint8 weights, 0.315x with int8). The OpenVINO backend sets it.
    """

    opset: int = 18
    dynamic: bool = True
    external_data: bool | None = None
    parity_sets: int = 2
    rtol: float = 1e-3
    atol: float = 1e-5
    int8_min_sqnr_db: float | None = None
    int8_margin_db: float | None = 1.0
    check: bool = True
    optimize: bool = True
    seed: int = 0
    check_threads: int = 1
    dynamic_int8_as: str = "integer"
    weights_uint8: bool = True


@dataclass
class OnnxExportResult:
    path: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    external_data: list[str]
    int8: bool
    export_s: float
    check_s: float
    parity: list[ParityRecord] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- lowering


def _dense_linear(mod: nn.Module) -> nn.Linear:
    w = mod.dense_weight().detach()
    bias = getattr(mod, "bias", None)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w.to(lin.weight.dtype))
        if bias is not None:
            lin.bias.copy_(bias.detach())
    return lin.eval()


def _mask_metadata(weight: torch.Tensor, tags: dict[str, Any]) -> dict[str, Any]:
    """The sparsity mask, compactly: a dense weight with zeros *is* the mask, so we
    record the pattern and density, and the mask bits only where they differ."""
    import base64

    import numpy as np

    nonzero = weight != 0
    info: dict[str, Any] = {"shape": list(weight.shape), "density": round(float(nonzero.float().mean()), 6)}
    info.update({k: v for k, v in tags.items() if isinstance(v, (str, int, float, bool))})
    mask = tags.get("mask")
    if isinstance(mask, torch.Tensor) and not torch.equal(mask.bool(), nonzero):
        info["mask_packbits"] = base64.b64encode(np.packbits(mask.bool().numpy().ravel()).tobytes()).decode()
    else:
        info["mask"] = "weight != 0"
    return info


def _lower(gm: fx.GraphModule, dynamic_int8_as: str = "integer"
           ) -> tuple[fx.GraphModule, dict[str, Any], dict[str, Any], bool]:
    """A copy of ``gm`` whose own modules are replaced by exportable twins.

    Returns (lowered, sparse metadata, int8 metadata, has_int8). The original
    graph module is not touched: ``fx.GraphModule(gm, graph)`` shares leaf
    modules but owns its hierarchy, so replacing a leaf only affects the copy.
    """
    lowered = fx.GraphModule(gm, copy.deepcopy(gm.graph), class_name="AutoglmOnnxModel")
    lowered.eval()
    replace_qdq_linears(lowered)  # quantize(lower=False) graphs: the same twins as Int8Linear
    zero_unattended_rows(lowered)  # left-padded causal attention: torch's zero rows (export/onnx/attention.py)
    sparse: dict[str, Any] = {}
    int8: dict[str, Any] = {}
    for node in lowered.graph.nodes:
        tags = annotation(node).tags if has_annotation(node) else {}
        if node.op != "call_module":
            if "int8" in tags:
                int8[node.name] = _jsonable(tags["int8"])
            continue
        target = str(node.target)
        mod = lowered.get_submodule(target)
        twin = None
        if hasattr(mod, "__autoglm_onnx__"):
            twin = mod.__autoglm_onnx__()
        elif callable(getattr(mod, "dense_weight", None)) and hasattr(mod, "in_features"):
            twin = _dense_linear(mod)
        else:
            twin = int8_twin(mod, dynamic_int8_as)
            if twin is not None and "int8" not in tags:
                tags = {**tags, "int8": {"module": type(mod).__name__}}
        if twin is not None:
            lowered.set_submodule(target, twin)
        if "int8" in tags:
            int8[target] = _jsonable(tags["int8"])
        sparse_tags = tags.get("sparse")
        if sparse_tags is not None or twin is not None and hasattr(mod, "dense_weight"):
            w = getattr(lowered.get_submodule(target), "weight", None)
            if isinstance(w, torch.Tensor) and w.layout == torch.strided and w.dim() >= 2:
                sparse[target] = _mask_metadata(w.detach(), dict(sparse_tags or {}))
    leftovers = [f"{n.target} ({type(lowered.get_submodule(str(n.target))).__name__})" for n in lowered.graph.nodes
                 if n.op == "call_module" and _holds_non_strided(lowered.get_submodule(str(n.target)))]
    if leftovers:
        raise OnnxExportError(f"cannot export modules holding sparse or packed tensors: {', '.join(leftovers)}; "
                              "give the module class an __autoglm_onnx__() returning a dense/QDQ twin")
    lowered.recompile()
    return lowered, sparse, int8, bool(int8)


def _holds_non_strided(mod: nn.Module) -> bool:
    tensors = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
    tensors += [v for v in vars(mod).values() if isinstance(v, torch.Tensor)]
    return any(t.layout != torch.strided or t.is_quantized for t in tensors)


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        if isinstance(v, dict):
            return {str(k): _jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [_jsonable(x) for x in v]
        return str(v)


# ---------------------------------------------------------------- inputs


def _leaf_names(spec: Any, positions: Sequence[int], total: int, prefix: str) -> list[str]:
    """Names for the flat tensors from the user's structure: keyword names
    (``input_ids``), ``ModelOutput`` fields (``last_hidden_state``), else ``prefix_i``."""
    names = []
    try:
        paths = [p for p, _ in tree_flatten_with_path(tree_unflatten(list(range(total)), spec))[0]]
    except Exception:  # unusual pytree nodes: fall back to positional names
        paths = []
    for i, pos in enumerate(positions):
        name = f"{prefix}_{i}"
        if pos < len(paths) and paths[pos]:
            last = paths[pos][-1]
            key = getattr(last, "key", None) if hasattr(last, "key") else getattr(last, "name", None)
            if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                name = key
        names.append(name)
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n] - 1}")
    return out


def _other_size(n: int) -> int:
    # Shrink the sequence when we can (never past a model's maximum length); a size
    # of 1 would be specialised by torch.export, so we move away from it.
    return n - 1 if n > 2 else n + 1


def _probe_dynamic(gm: fx.GraphModule, inputs: list[torch.Tensor], gen: torch.Generator) -> dict[str, list[int]]:
    """Which inputs' dim 0 (batch) and dim 1 (sequence) our graph really lets vary."""
    groups: dict[str, list[int]] = {}
    for axis, name, ranks in ((0, "batch", (1, 2, 3, 4, 5)), (1, "seq", (2, 3))):
        members = [i for i, x in enumerate(inputs) if x.dim() in ranks]
        if not members:
            continue
        sizes = [inputs[i].shape[axis] for i in members]
        common = max(set(sizes), key=sizes.count)
        members = [i for i in members if inputs[i].shape[axis] == common]
        new = common + 1 if axis == 0 else _other_size(common)
        trial = [(resized_like(x, axis, new, gen) if i in members else x) for i, x in enumerate(inputs)]
        try:
            with torch.no_grad():
                out = gm(*trial)
            ok = all(isinstance(o, torch.Tensor) for o in (out if isinstance(out, (tuple, list)) else (out,)))
        except Exception:  # the graph baked this size in: the axis stays static
            ok = False
        if ok:
            groups[name] = members
    return groups


# ---------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torch_export(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], opts: ExportOptions,
                  dynamic: dict[str, list[int]], input_names: list[str], output_names: list[str]) -> Any:
    from torch.export import Dim

    axis_of = {"batch": 0, "seq": 1}
    dims = {name: Dim(name, min=1) for name in dynamic}
    shapes = tuple({axis_of[n]: dims[n] for n, members in dynamic.items() if i in members} or None
                   for i in range(len(inputs)))
    # The exporter narrates its steps on stdout and warns about optional packages
    # (torchvision) and constant-folding attempts it gives up on; none of it is ours to act on.
    with contextlib.redirect_stdout(io.StringIO()), _quiet_loggers("torch.onnx", "onnxscript"), \
            warnings.catch_warnings():
        # Inputs sharing one Dim (batch of input_ids and attention_mask) make the exporter say
        # it keeps the first name for the axis; the axis is named and dynamic as asked.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
        return torch.onnx.export(gm, tuple(inputs), dynamo=True, opset_version=opts.opset,
                                 dynamic_shapes=shapes if dynamic else None, input_names=input_names,
                                 output_names=output_names, optimize=opts.optimize, verbose=False,
                                 custom_translation_table=translation_table())


def _export_once(gm: fx.GraphModule, inputs: list[torch.Tensor], opts: ExportOptions, dyn: dict[str, list[int]],
                 input_names: list[str], output_names: list[str]) -> Any:
    # Export on inputs where no dynamic axis has size 1 (torch.export specialises 0/1);
    # static axes keep their example sizes.
    use = inputs
    if dyn and any(inputs[i].shape[{"batch": 0, "seq": 1}[n]] == 1 for n, m in dyn.items() for i in m):
        use = _probe_inputs(inputs, dyn, torch.Generator().manual_seed(opts.seed + 3)) or inputs
    return _torch_export(gm, use, opts, dyn, input_names, output_names)


def _export_with_fallback(gm: fx.GraphModule, inputs: list[torch.Tensor], opts: ExportOptions,
                          dynamic: dict[str, list[int]], input_names: list[str],
                          output_names: list[str]) -> tuple[Any, dict[str, list[int]]]:
    """Export with the probed dynamic axes; drop sequence, then batch, if torch.export
    proves them static after all (a constraint violation), rather than failing."""
    attempts = [dynamic]
    if "seq" in dynamic:
        attempts.append({k: v for k, v in dynamic.items() if k != "seq"})
    if dynamic:
        attempts.append({})
    errors = []
    for dyn in attempts:
        try:
            program = _export_once(gm, inputs, opts, dyn, input_names, output_names)
            really = _really_dynamic(program.model_proto, dyn)
            if really != dyn:  # the exporter specialised an axis: export again without it
                program = _export_once(gm, inputs, opts, really, input_names, output_names)
                if _really_dynamic(program.model_proto, really) != really:
                    continue
            return program, really
        except Exception as exc:  # report every attempt if all fail
            errors.append(f"dynamic={sorted(dyn) or 'none'}: {type(exc).__name__}: {str(exc).strip()[:800]}")
    raise OnnxExportError("torch.onnx.export (dynamo) failed:\n  " + "\n  ".join(errors))


def _probe_inputs(inputs: list[torch.Tensor], dynamic: dict[str, list[int]], gen: torch.Generator
                  ) -> list[torch.Tensor] | None:
    """The inputs resized along every dynamic axis (None when nothing is dynamic)."""
    if not dynamic:
        return None
    probe = list(inputs)
    for name, members in dynamic.items():
        axis = 0 if name == "batch" else 1
        size = inputs[members[0]].shape[axis]
        new = size + 1 if axis == 0 else _other_size(size)
        probe = [(resized_like(x, axis, new, gen) if i in members else x) for i, x in enumerate(probe)]
    return probe


def _really_dynamic(proto: Any, dynamic: dict[str, list[int]]) -> dict[str, list[int]]:
    """Keep only the axes the exported model really left symbolic.

    The exporter may specialise an axis we asked to be dynamic without raising
    (found by the fuzzer: a graph whose sequence axis is cut back to a fixed
    width); the model then only accepts the example size on that axis.
    """
    kept: dict[str, list[int]] = {}
    for name, members in dynamic.items():
        axis = 0 if name == "batch" else 1
        ok = True
        for i in members:
            dims = proto.graph.input[i].type.tensor_type.shape.dim
            if axis >= len(dims) or not dims[axis].dim_param:
                ok = False
        if ok:
            kept[name] = members
    return kept


def _int8_budget(cm: Any, opts: ExportOptions) -> float:
    if opts.int8_min_sqnr_db is not None:
        return opts.int8_min_sqnr_db
    quant = cm.notes.get("quantize", {}) if isinstance(getattr(cm, "notes", None), dict) else {}
    if quant.get("metric") == "sqnr" and isinstance(quant.get("max_error"), (int, float)):
        return float(quant["max_error"])  # the pass's own budget, in dB
    # Otherwise (a cosine or custom budget against fp32): both sides are the same
    # int8 model, so we hold onnxruntime to 25 dB SQNR against our int8 outputs
    # (measured: 54-152 dB on the example models); a set under it still passes when
    # the file is as accurate as our graph (ExportOptions.int8_margin_db).
    return 25.0


def _built_on_first_use(build: Callable[[fx.GraphModule], fx.GraphModule],
                        gm: fx.GraphModule) -> Callable[..., Any]:
    """A callable running ``build(gm)``, built only if a parity set needs it."""
    cached: list[Any] = []

    def run(*xs: torch.Tensor) -> Any:
        if not cached:
            cached.append(build(gm))
        return cached[0](*xs)

    return run


def _float64_twin(gm: fx.GraphModule) -> Callable[..., Any]:
    """``gm`` in float64 (built on first use)."""
    return _built_on_first_use(float64_twin_module, gm)


def _parity(gm: fx.GraphModule, path: Path, inputs: list[torch.Tensor], probe: list[torch.Tensor] | None,
            opts: ExportOptions, min_sqnr_db: float | None) -> list[ParityRecord]:
    return parity_check(gm, OrtExecutor(path, OrtOptions(threads=opts.check_threads)), inputs, probe, opts,
                        min_sqnr_db)


def parity_check(gm: fx.GraphModule, run: Callable[..., Any], inputs: list[torch.Tensor],
                 probe: list[torch.Tensor] | None, opts: ExportOptions, min_sqnr_db: float | None,
                 runtime: str = "onnxruntime") -> list[ParityRecord]:
    """``run`` (a runtime executing the exported file) against ``gm`` on the example inputs,
    ``opts.parity_sets`` random sets and, for dynamic files, ``probe`` (other shapes):
    fp32 within ``rtol``/``atol`` (or fp32 noise), int8 within ``min_sqnr_db`` (or as accurate)."""
    gen = torch.Generator().manual_seed(opts.seed + 1)
    sets: list[tuple[str, list[torch.Tensor]]] = [("example", inputs)]
    sets += [(f"random-{k + 1}", [random_like(x, gen) for x in inputs]) for k in range(opts.parity_sets)]
    if probe is not None:
        sets.append(("dynamic-shape", probe))
    if min_sqnr_db is None:
        return run_parity(gm, run, sets, opts.rtol, opts.atol, reference64=_float64_twin(gm), runtime=runtime)
    return run_parity(gm, run, sets, opts.rtol, opts.atol, min_sqnr_db,
                      unrounded=_built_on_first_use(unrounded_twin, gm), int8_margin_db=opts.int8_margin_db,
                      runtime=runtime)


def resolve_options(options: ExportOptions | None, kwargs: dict[str, Any]) -> ExportOptions:
    """``ExportOptions`` from an options object and/or keyword fields, validated."""
    opts = options if options is not None else ExportOptions()
    bad = set(kwargs) - set(ExportOptions.__dataclass_fields__)
    if bad:
        raise TypeError(f"unknown export option(s) {sorted(bad)}; valid: {sorted(ExportOptions.__dataclass_fields__)}")
    if kwargs:
        opts = ExportOptions(**{**asdict(opts), **kwargs})
    if opts.dynamic_int8_as not in DYNAMIC_INT8_FORMS:
        raise ValueError(f"dynamic_int8_as must be one of {DYNAMIC_INT8_FORMS}, got {opts.dynamic_int8_as!r}")
    if opts.opset < 13:
        raise ValueError(f"opset {opts.opset} is too old: per-channel QuantizeLinear needs opset >= 13")
    return opts


def export_onnx(cm: Any, path: str | os.PathLike, options: ExportOptions | None = None,
                **kwargs: Any) -> Any:
    """Export ``cm`` (a ``CompiledModel``, also one from ``autoglm.load``) to ``path``.

    Keyword options are ``ExportOptions`` fields (``opset=17``, ``dynamic=False``...).
    Raises ``OnnxExportError`` (``OnnxParityError`` for a numerical mismatch) and
    leaves nothing at ``path`` when any check fails. A branching ``Program``
    exports one file per compiled path plus a manifest of guards
    (``autoglm.export.onnx.program``) and returns a ``ProgramExportResult``.
    """
    opts = resolve_options(options, kwargs)
    target = Path(path)
    if target.suffix != ".onnx":
        raise ValueError(f"ONNX output path must end in .onnx, got {target}")
    if hasattr(cm, "paths"):  # a branching Program: it exports its paths (export/onnx/program.py)
        return cm.export_onnx(target, options=opts)
    sig = cm.signature
    input_names = _leaf_names(sig.in_spec, sig.in_positions, len(sig.in_positions) + len(sig.in_consts), "input")
    out_total = len(sig.out_positions) + len(sig.out_consts)
    output_names = _leaf_names(sig.out_spec, sig.out_positions, out_total, "output") if sig.out_spec else []
    facts = {"autoglm.frontend": str(getattr(cm, "frontend", "")),
             "autoglm.passes": json.dumps(cm.config.get("passes", []))}
    return export_graph(cm.graph_module, cm.example_inputs, target, opts, input_names, output_names,
                        metadata=facts, int8_budget_db=_int8_budget(cm, opts))


def export_graph(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], target: Path, opts: ExportOptions,
                 input_names: list[str], output_names: list[str], *, metadata: dict[str, str] | None = None,
                 int8_budget_db: float = 25.0) -> OnnxExportResult:
    """Export one flat graph to ``target`` and check it against ``gm`` itself."""
    with progress.stages(f"onnx export {target.name}", ["lower and probe axes", "torch.onnx.export",
                                                          "save, check and onnxruntime parity"]) as stage:
        return _export_graph(gm, example_inputs, target, opts, input_names, output_names, metadata,
                             int8_budget_db, stage)


def _export_graph(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], target: Path, opts: ExportOptions,
                  input_names: list[str], output_names: list[str], metadata: dict[str, str] | None,
                  int8_budget_db: float, stage: Any) -> OnnxExportResult:
    inputs = [x.detach().cpu() for x in example_inputs]
    gen = torch.Generator().manual_seed(opts.seed)
    t0 = time.perf_counter()
    lowered, sparse, int8_meta, has_int8 = _lower(gm, opts.dynamic_int8_as)
    dynamic = _probe_dynamic(gm, inputs, gen) if opts.dynamic else {}
    stage.next()
    onnx_program, dynamic = _export_with_fallback(lowered, inputs, opts, dynamic, input_names, output_names)
    stage.next()
    metadata = {"autoglm.version": _autoglm_version(), **(metadata or {})}
    if sparse:
        metadata["autoglm.sparse"] = json.dumps(sparse)
    if int8_meta:
        metadata["autoglm.int8"] = json.dumps(int8_meta)
    budget = int8_budget_db if has_int8 else None
    try:
        export_s = time.perf_counter() - t0
        return _save_checked(gm, onnx_program, dynamic, inputs, target, opts, input_names, metadata, budget,
                             has_int8, export_s)
    except Exception as exc:
        if not dynamic or not _is_run_failure(exc):
            raise
        # onnxruntime could not run the file with symbolic axes (found by the fuzzer:
        # a broadcast that is only valid while an axis stays 1 made its memory planner
        # reuse a buffer of another shape). The model does not really allow those
        # axes: export it static and check again.
        t0 = time.perf_counter()
        onnx_program, dynamic = _export_with_fallback(lowered, inputs, opts, {}, input_names, output_names)
        return _save_checked(gm, onnx_program, dynamic, inputs, target, opts, input_names, metadata, budget,
                             has_int8, time.perf_counter() - t0)


def _is_run_failure(exc: BaseException) -> bool:
    """A parity mismatch or an onnxruntime execution error (not a usage error)."""
    return isinstance(exc, OnnxParityError) or type(exc).__module__.startswith("onnxruntime")


def _save_checked(gm: fx.GraphModule, onnx_program: Any, dynamic: dict[str, list[int]], inputs: list[torch.Tensor],
                  target: Path, opts: ExportOptions, input_names: list[str], metadata: dict[str, str],
                  min_sqnr_db: float | None, has_int8: bool, export_s: float) -> OnnxExportResult:
    """Write the model into a staging folder, check it there, then move it into place."""
    probe = _probe_inputs(inputs, dynamic, torch.Generator().manual_seed(opts.seed + 7))
    # int8 weights stored as uint8 + 128 (zero point 128, same real values): onnxruntime's
    # u8 x s8 kernels saturate on x86 CPUs without VNNI, its u8 x u8 ones are exact (onnx_int8.py).
    if opts.weights_uint8:
        store_weights_uint8(onnx_program.model)
    onnx_program.model.metadata_props.update(metadata)
    with staging_dir(target.parent, target.name) as tmp:
        tmp_model = tmp / target.name
        onnx_program.save(str(tmp_model), external_data=opts.external_data)
        t0 = time.perf_counter()
        external = check_external_paths(tmp_model)
        parity: list[ParityRecord] = []
        if opts.check:
            check_model(tmp_model)
            parity = _parity(gm, tmp_model, inputs, probe, opts, min_sqnr_db)
        check_s = time.perf_counter() - t0
        move_into(tmp, target.parent)  # the model and its external data land together or not at all
    return OnnxExportResult(str(target), opts.opset, input_names, [o.name for o in onnx_program.model.graph.outputs],
                            _named_axes(onnx_program), external, has_int8, export_s, check_s, parity, metadata)


def _named_axes(program: Any) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for value in program.model.graph.inputs:
        dims = {i: str(d) for i, d in enumerate(value.shape or []) if not isinstance(d, int)}
        if dims:
            axes[value.name] = dims
    return axes


def _autoglm_version() -> str:
    from autoglm._version import __version__

    return __version__


def exported_executor(export: Callable[[str], Any], path: str | os.PathLike | None,
                      make_executor: Callable[[Any], Any], prefix: str = "autoglm-ort-") -> tuple[Any, Any]:
    """``export(path)``, then ``make_executor(result)``; returns (executor, result).

    ``path`` None: a private temporary directory, removed when the executor is
    garbage-collected, or at once when the export or the executor fails.
    """
    cleanup = None
    if path is None:
        cleanup = tempfile.mkdtemp(prefix=prefix)
        path = os.path.join(cleanup, "model.onnx")
    try:
        result = export(str(path))
        executor = make_executor(result)
    except BaseException:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise
    if cleanup:
        weakref.finalize(executor, shutil.rmtree, cleanup, True)
    return executor, result


def _exported_session(export: Any, threads: int | None, path: str | os.PathLike | None,
                      opts: dict[str, Any]) -> tuple[OrtExecutor, Any]:
    """``export(path, **export_options)`` to ``path`` and an onnxruntime session on the file."""
    ort_fields = set(OrtOptions.__dataclass_fields__) - {"threads"}
    ort_opts = OrtOptions(threads=threads, **{k: v for k, v in opts.items() if k in ort_fields})
    export_opts = {k: v for k, v in opts.items() if k not in ort_fields}
    return exported_executor(lambda p: export(p, **export_opts), path, lambda r: OrtExecutor(r.path, ort_opts))


def attach_onnxruntime(cm: Any, threads: int | None = None, *, path: str | os.PathLike | None = None,
                       **opts: Any) -> OrtExecutor:
    """Export ``cm`` and make onnxruntime its executor (``backend="onnxruntime"``).

    ``path``: where the .onnx goes (default: a private temporary directory,
    removed when the executor is garbage-collected). Other keywords are
    ``OrtOptions`` fields (``optimization``, ``allow_spinning``...) or
    ``ExportOptions`` fields (``opset``, ``dynamic``...).
    """
    executor, result = _exported_session(lambda p, **eo: export_onnx(cm, p, **eo), threads, path, opts)
    cm.executor = executor
    cm.notes["onnxruntime"] = {"path": result.path, "threads": threads, "export": result.to_json()}
    return executor


def onnxruntime_for_graph(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], threads: int | None = None,
                          **opts: Any) -> OrtExecutor:
    """One flat graph (a branching program's segment) exported, checked and run in onnxruntime.

    Takes exactly the graph's flat inputs and returns its flat outputs, like the
    segment's own ``forward``. Keywords as for ``attach_onnxruntime``.
    """
    names = [f"input_{i}" for i in range(len(example_inputs))]

    def export(p: str, **export_opts: Any) -> Any:
        return export_graph(gm, example_inputs, Path(p), resolve_options(None, export_opts), names, [])

    executor, _ = _exported_session(export, threads, None, opts)
    if len(executor.input_names) != len(example_inputs):
        raise OnnxExportError(f"the exported segment takes {len(executor.input_names)} inputs, the graph "
                              f"{len(example_inputs)} (onnx dropped an unused one)")
    return executor
