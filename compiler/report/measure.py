"""Measurements taken at report time: accuracy and latency against eager.

``write_report`` measures by default (``measure=True``) on the compile's
example inputs, against

- the eager model when given (``write_report(cm, path, model=model)``, or
  ``measure_against_eager(cm, model)`` as ``extra``);
- else the graph as captured, which the compile keeps (``autoglm.ir.snapshot``):
  the same PyTorch ops eager runs, one by one, before any pass;
- neither (an artifact loaded from disk): not measured, and the page says so.

Outputs are named by the model's output structure (``last_hidden_state``,
``logits``), not by position, when the capture kept it.

Runs are interleaved (eager, ours, eager, ours...) so a noisy shared machine
slows both alike; the medians and their ratio are reported.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_unflatten

from autoglm.capture.flat import merge_leaves
from autoglm.ir.metrics import sqnr_db
from autoglm.ir.timing import interleaved_samples

__all__ = ["measure_against_eager", "measure_against_captured", "measure_default", "output_accuracy", "user_inputs",
           "output_names"]


def user_inputs(cm: Any) -> tuple[tuple, dict]:
    """The user-level ``(args, kwargs)`` the compiled model was captured with."""
    sig = cm.signature
    leaves = merge_leaves(list(cm.example_inputs), sig.in_positions, sig.in_consts)
    args, kwargs = tree_unflatten(leaves, sig.in_spec)
    return tuple(args), dict(kwargs)


def output_names(outputs: Any) -> list[str]:
    """One name per output leaf from its place in the structure: ``last_hidden_state``, ``0.logits``.

    ``keystr`` spells paths as Python (``['last_hidden_state']``, ``[0]``); a reader wants the key.
    A single tensor is ``output``.
    """
    names = []
    for path, _ in tree_flatten_with_path(outputs)[0]:
        text = keystr(path)
        for junk in ("['", "']", '["', '"]', "[", "]"):
            text = text.replace(junk, ".")
        names.append(".".join(p for p in text.split(".") if p) or "output")
    return names


def output_accuracy(reference: Any, actual: Any) -> list[dict[str, Any]]:
    """Per floating-point output: max abs error, SQNR (dB), cosine similarity, assert_close verdict."""
    ref_leaves, _ = tree_flatten(reference)
    act_leaves, _ = tree_flatten(actual)
    names = output_names(reference)
    rows = []
    for i, (r, a) in enumerate(zip(ref_leaves, act_leaves)):
        if not (isinstance(r, torch.Tensor) and isinstance(a, torch.Tensor)) or not r.is_floating_point():
            continue
        r64, a64 = r.detach().double().flatten(), a.detach().double().flatten()
        sqnr = sqnr_db([r64], [a64])
        cos = float(torch.nn.functional.cosine_similarity(r64, a64, dim=0)) if r64.numel() else 1.0
        try:
            torch.testing.assert_close(a, r)
            close = True
        except AssertionError:
            close = False
        rows.append({"output": names[i] if i < len(names) else str(i), "shape": "x".join(map(str, r.shape)),
                     "max_abs_error": float((r64 - a64).abs().max()) if r64.numel() else 0.0,
                     "sqnr_db": sqnr, "cosine": cos, "assert_close": close})
    return rows


def _median_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, repeats, warmup).items()}


def measure_against_captured(cm: Any, repeats: int = 5, warmup: int = 1) -> dict[str, Any] | None:
    """Latency and accuracy of ``cm`` against the graph it was captured as (None when not kept)."""
    from autoglm.ir.snapshot import CAPTURED_NOTE

    snap = getattr(cm, "notes", {}).get(CAPTURED_NOTE)
    captured = getattr(snap, "graph_module", None)
    if captured is None:
        return None
    flat = list(cm.example_inputs)
    sig = cm.signature

    def eager() -> Any:
        out = captured(*flat)
        return sig.unflatten_outputs(out if isinstance(out, (tuple, list)) else (out,))

    args, kwargs = user_inputs(cm)
    out = _measure(cm, eager, args, kwargs, repeats, warmup)
    out["latency"]["reference"] = out["accuracy"]["reference"] = (
        "eager: the graph as captured, before any pass, run op by op in PyTorch")
    return out


def measure_default(cm: Any, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """What ``write_report(measure=True)`` adds: against ``model`` if given, else the captured graph.

    A failure to measure is reported on the page, never raised: the report is still written.
    """
    try:
        if model is not None:
            return measure_against_eager(cm, model, repeats=5, warmup=1)
        return measure_against_captured(cm) or {}
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the report still gets written
        return {"measurement_error": f"{type(exc).__name__}: {exc}"}


def _measure(cm: Any, eager: Callable[[], Any], args: tuple, kwargs: dict, repeats: int,
             warmup: int) -> dict[str, Any]:
    with torch.no_grad():
        reference = eager()
        ours = cm(*args, **kwargs)
        medians = _median_interleaved({"eager": eager, "autoglm": lambda: cm(*args, **kwargs)}, repeats, warmup)
    rows = [{"variant": k, "median_s": v, "repeats": repeats} for k, v in medians.items()]
    return {
        "latency": {"rows": rows, "speedup_vs_eager": medians["eager"] / medians["autoglm"],
                    "threads": torch.get_num_threads()},
        "accuracy": {"outputs": output_accuracy(reference, ours)},
    }


def measure_against_eager(cm: Any, model: torch.nn.Module, args: tuple | None = None, kwargs: dict | None = None,
                          repeats: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Latency (eager vs ours, medians of interleaved runs) and per-output accuracy on the example inputs."""
    if args is None and kwargs is None:
        args, kwargs = user_inputs(cm)
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    return _measure(cm, lambda: model(*args, **kwargs), args, kwargs, repeats, warmup)
