"""Frontend selection: try each in order, keep every reason a frontend failed."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.capture.dynamic import DynamicDims, flat_input_names, requested_dims
from autoglm.capture.errors import CaptureError
from autoglm.capture.export import export_capture
from autoglm.capture.flat import Captured, FlatCall, FlatSignature, fixed_arity_flat_call
from autoglm.capture.symbolic import symbolic_capture

__all__ = ["FRONTENDS", "capture"]


def _symbolic(root: FlatCall, flat_inputs: list[torch.Tensor]) -> fx.GraphModule:
    return symbolic_capture(root)


def _export(root: FlatCall, flat_inputs: list[torch.Tensor]) -> fx.GraphModule:
    return export_capture(root, flat_inputs)[0]


# Order matters: symbolic keeps module structure (readable graphs, cheap capture);
# export takes what symbolic cannot (HF models) at the price of an aten graph.
FRONTENDS: dict[str, Callable[[FlatCall, list[torch.Tensor]], fx.GraphModule]] = {
    "symbolic": _symbolic,
    "export": _export,
}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    extra = [ln for ln in text[1:] if ln.strip().startswith("at ")]
    return f"{type(exc).__name__}: {first}" + (f" ({extra[0].strip()})" if extra else "")


def _is_branch_failure(exc: BaseException) -> bool:
    """The symbolic tracer's ``to_bool``/``iter`` refused a data-dependent branch (and nothing else did)."""
    return isinstance(exc, CaptureError) and str(exc).startswith("data-dependent")


def _written_for_export(model: nn.Module) -> bool:
    """Hugging Face models: their data-dependent branches (attention-mask fast paths)
    are switched off under torch.export (``is_torchdynamo_compiling``), so export gives
    one sound graph that saves and exports to ONNX, where a branching ``Program``
    would split them into mask-dependent paths (measured: all-MiniLM-L6-v2 with
    padded sentences became a Program). Such models go straight to export."""
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
               for cls in type(model).__mro__)


def _export_dynamic(root: FlatCall, flat_inputs: list[torch.Tensor], wanted: DynamicDims, auto: bool,
                    notes: dict[str, str]) -> tuple[fx.GraphModule, DynamicDims]:
    """Export with the wanted dynamic dimensions; an inferred request that torch refuses is
    compiled static instead, and ``notes`` says why (a stated one raises)."""
    try:
        return export_capture(root, flat_inputs, wanted, auto)
    except Exception as exc:  # noqa: BLE001 - torch refuses dynamic dims in many ways
        if not auto:
            raise
        notes["dynamic"] = f"compiled static: torch.export refused the inferred dynamic dims ({_one_line(exc)})"
        return export_capture(root, flat_inputs)


def capture(model: nn.Module, args: tuple = (), kwargs: dict | None = None, frontend: str = "auto",
            branches: bool = False, dynamic: Any = None) -> Captured:
    """Capture ``model(*args, **kwargs)`` into a flat graph.

    ``frontend`` is ``"auto"`` (try each in order), ``"symbolic"`` or ``"export"``.
    ``branches=True``: when the symbolic frontend fails only on data-dependent
    control flow, return ``Captured(graph_module=None, frontend="branching")``;
    the caller builds an ``autoglm.program.program.Program`` from the signature.
    ``dynamic``: which input dimensions may change between calls (``autoglm.capture.dynamic``);
    it matters for the export frontend, whose graph is otherwise fixed to the example.
    """
    kwargs = dict(kwargs or {})
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if frontend != "auto" and frontend not in FRONTENDS:
        raise ValueError(f"unknown frontend {frontend!r}; valid: auto, {', '.join(FRONTENDS)}")
    names = list(FRONTENDS) if frontend == "auto" else [frontend]
    sig, flat_inputs = FlatSignature.from_inputs(args, kwargs)
    if not flat_inputs:
        raise ValueError("example_inputs contain no tensors; pass the tensors the model is called with")
    input_names = flat_input_names(args, kwargs)
    wanted, auto = requested_dims(dynamic, input_names, flat_inputs)
    notes: dict[str, str] = {}
    with torch.no_grad():
        reference = model(*args, **kwargs)  # eager once: real errors surface as themselves
    del reference
    reasons: dict[str, str] = {}
    source = ""
    for name in names:
        trial_sig = copy.copy(sig)
        root = fixed_arity_flat_call(model, trial_sig, len(flat_inputs))
        # Symbolic FX graphs read sizes at run time: only dims the user stated (or False) are checked.
        dims: DynamicDims | None = None if auto else wanted
        try:
            if name == "export":
                gm, dims = _export_dynamic(root, flat_inputs, wanted, auto, notes)
            else:
                gm = FRONTENDS[name](root, flat_inputs)
        except Exception as exc:  # each frontend fails in its own way; keep the reason
            reasons[name] = _one_line(exc)
            source = source or getattr(exc, "source", "")
            if branches and name == "symbolic" and _is_branch_failure(exc) and not _written_for_export(model):
                return Captured(None, copy.copy(sig), "branching", list(flat_inputs), reasons)  # type: ignore[arg-type]
            continue
        if trial_sig.out_spec is None:
            reasons[name] = "captured graph never produced an output structure"
            continue
        trial_sig.dynamic, trial_sig.input_names = dims, input_names
        return Captured(gm, trial_sig, name, list(flat_inputs), reasons, notes=notes)
    raise CaptureError(f"could not capture {type(model).__name__} with any frontend", reasons, source)
