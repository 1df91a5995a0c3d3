"""The compiled model against eager on the same inputs, in the numbers optimum-cli users read.

Per output: the max absolute difference and the cosine (the smallest over the batch,
each sample flattened, as ``quantize`` measures its own budget). Per-token outputs
(``[batch, seq, ...]``) are compared on the tokens the attention mask marks real only:
what a model computes at padding positions is not defined by it (eager and int8 can
differ there by whole units while every real token agrees). ``assert_close`` for exact
passes still covers every element. What counts as a pass depends on the pipeline:

* every pass exact (``GraphPass.exact``): every output must pass
  ``torch.testing.assert_close`` with its default tolerances, or ``EagerMismatchError``;
* a lossy pass (quantize, sparsify): the outputs are held to that pass's own budget
  (``quantize(max_error=...)`` in its metric, cosine or SQNR dB) or, when it states none,
  to ``DEFAULT_MIN_COSINE``. Breaking it is reported (``within_budget=False``, a warning
  line), not an error: a lossy result is the user's trade to judge.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from autoglm.ir.metrics import sqnr_db

__all__ = ["DEFAULT_MIN_COSINE", "Budget", "OutputDiff", "EagerCheck", "EagerMismatchError", "budgets_of", "compare_outputs",
           "named_tensors", "check_against_eager"]

# What a lossy pass that states no budget is held to: the accuracy autoglm's int8 meets on
# real all-MiniLM-L6-v2 by default (docs/quantize.md), a common bar for int8 encoders.
DEFAULT_MIN_COSINE = 0.99


class EagerMismatchError(ValueError):
    """Exact passes only, yet an output differs from eager beyond ``assert_close``'s defaults."""


@dataclass
class Budget:
    metric: str  # "cosine" (smallest allowed) or "sqnr" (smallest allowed, dB)
    threshold: float
    source: str  # which pass states it, or that it is the default

    def met_by(self, cosine: float, sqnr: float) -> bool:
        return (cosine if self.metric == "cosine" else sqnr) >= self.threshold


@dataclass
class OutputDiff:
    name: str
    shape: list[int]
    max_abs_diff: float
    cosine: float
    close: bool  # torch.testing.assert_close with default tolerances

    def text(self) -> str:
        return f"{self.name} cosine {self.cosine:.4f}, max abs diff {self.max_abs_diff:.3g}"


@dataclass
class EagerCheck:
    outputs: list[OutputDiff]
    exact: bool
    inputs: str  # what the check ran on
    budgets: list[Budget] = field(default_factory=list)
    sqnr_db: float = float("inf")
    broken: list[Budget] = field(default_factory=list)

    @property
    def within_budget(self) -> bool:
        return not self.broken

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def line(self) -> str:
        return "outputs vs eager: " + "; ".join(o.text() for o in self.outputs) + f" (on {self.inputs})"

    def warning(self) -> str | None:
        if not self.broken:
            return None
        parts = [f"min cosine {self.min_cosine:.4f} < {b.threshold}" if b.metric == "cosine"
                 else f"SQNR {self.sqnr_db:.1f} dB < {b.threshold} dB" for b in self.broken]
        sources = ", ".join(b.source for b in self.broken)
        advice = ["keep sensitive layers out with the pass's exclude=[...]"]
        if "quantize" in sources:
            advice.append("let quantize(max_error=...) keep the most sensitive ones fp32")
        if "sparsify" in sources:
            advice.append("fine-tune the pruned model (autoglm.finetune_sparse, docs/sparsity.md)")
        return (f"outputs are below the accuracy budget ({'; '.join(parts)}; budget from {sources}); "
                + ", or ".join(advice))

    def to_json(self) -> dict[str, Any]:
        return {"exact": self.exact, "inputs": self.inputs, "outputs": [asdict(o) for o in self.outputs],
                "min_cosine": self.min_cosine,
                "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,  # identical outputs: no noise
                "budgets": [asdict(b) for b in self.budgets], "within_budget": self.within_budget}


def budgets_of(pipeline: Sequence[Any]) -> list[Budget]:
    """Each lossy pass's own budget (cosine or SQNR ``max_error``), or the default when it states none."""
    out = []
    for p in pipeline:
        if getattr(p, "exact", True):
            continue
        opts = getattr(p, "options", None)
        threshold, metric = getattr(opts, "max_error", None), getattr(opts, "metric", "cosine")
        if threshold is not None and metric in ("cosine", "sqnr"):
            out.append(Budget(metric, float(threshold), p.spec()))
        else:  # no budget, or a callable metric we cannot re-evaluate here
            out.append(Budget("cosine", DEFAULT_MIN_COSINE, f"the default for lossy passes ({p.name})"))
    return out


def named_tensors(outputs: Any) -> dict[str, torch.Tensor]:
    """``name -> tensor`` for a model's outputs: dict/ModelOutput keys kept (nested ones as ``key.i``)."""
    from torch.utils._pytree import tree_leaves

    if isinstance(outputs, torch.Tensor):
        return {"output_0": outputs}
    if isinstance(outputs, dict):
        named: dict[str, torch.Tensor] = {}
        for k, v in outputs.items():
            if isinstance(v, torch.Tensor):
                named[str(k)] = v
            else:
                leaves = [t for t in tree_leaves(v) if isinstance(t, torch.Tensor)]
                named.update({f"{k}.{i}": t for i, t in enumerate(leaves)})
        return named
    leaves = [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]
    return {f"output_{i}": t for i, t in enumerate(leaves)}


def _samples(t: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """One flat vector per sample; per-token outputs keep only the tokens the attention mask marks real."""
    t = t.detach().double().cpu()
    if t.dim() <= 1:
        return [t.reshape(-1)]
    if mask is not None and t.shape[:2] == mask.shape:
        return [t[i][mask[i].bool()].reshape(-1) for i in range(t.shape[0])]
    return list(t.reshape(t.shape[0], -1))


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor | None) -> OutputDiff:
    if got.shape != want.shape:
        raise EagerMismatchError(f"output {name} has shape {list(got.shape)}, eager gives {list(want.shape)}")
    pairs = [(g, w) for g, w in zip(_samples(got, mask), _samples(want, mask)) if g.numel()]
    diff = max((float((g - w).abs().max()) for g, w in pairs), default=0.0)
    # identical samples count as cosine 1 (an all-zero one included, where cosine is undefined)
    cosine = min((1.0 if bool(torch.equal(g, w)) else float(torch.nn.functional.cosine_similarity(g, w, dim=0))
                  for g, w in pairs), default=1.0)
    try:
        torch.testing.assert_close(got.detach().cpu(), want.detach().cpu())
        close = True
    except AssertionError:
        close = False
    return OutputDiff(name, list(got.shape), diff, cosine, close)


def compare_outputs(got_outputs: Any, want_outputs: Any, pipeline: Sequence[Any], inputs_label: str,
                    mask: torch.Tensor | None = None) -> EagerCheck:
    """Every output of the compiled model against eager's, and the lossy passes' budgets checked.

    Never raises for a numerical difference: ``check.exact`` with an output that is not
    ``close`` is for the caller to treat as the error it is; ``check.broken`` lists the
    budgets a lossy pipeline missed."""
    want, got = named_tensors(want_outputs), named_tensors(got_outputs)
    if list(got) != list(want):
        raise EagerMismatchError(f"the compiled model returns {', '.join(got) or 'nothing'}; eager returns "
                                 f"{', '.join(want) or 'nothing'}")
    diffs = [_compare(k, got[k], want[k], mask) for k in want]
    exact = all(getattr(p, "exact", True) for p in pipeline)
    check = EagerCheck(diffs, exact, inputs_label, budgets_of(pipeline),
                       sqnr_db([want[k] for k in want], [got[k] for k in want]))
    if not exact:
        check.broken = [b for b in check.budgets if not b.met_by(check.min_cosine, check.sqnr_db)]
    return check


def check_against_eager(compiled: Any, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                        pipeline: Sequence[Any], inputs_label: str) -> EagerCheck:
    """Run both on ``inputs`` (keyword tensors) and compare every output; see the module docstring."""
    with torch.no_grad():
        want = model(**inputs)
        got = compiled(**inputs)
    check = compare_outputs(got, want, pipeline, inputs_label, inputs.get("attention_mask"))
    far = [d for d in check.outputs if not d.close]
    if check.exact and far:
        raise EagerMismatchError("exact passes changed the outputs beyond torch.testing.assert_close's "
                                 "tolerances: " + "; ".join(d.text() for d in far))
    return check
