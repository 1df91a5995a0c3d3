"""Flat calling convention between the user's structured calls and the graph.

The captured graph always takes a flat tuple of tensors and returns a flat
tuple of tensors. ``FlatSignature`` remembers how to get there and back: the
pytree spec of ``(args, kwargs)`` and of the output, and the non-tensor leaves
(flags, ints, None) that were constant at capture time. HF ``ModelOutput``
dataclasses are pytree nodes (transformers registers them), so they round-trip;
on load their classes are found by an exact rule (``autoglm.ir.treespec``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from autoglm.capture.dynamic import dims_from_json, dims_to_json

__all__ = ["FlatSignature", "Captured", "FlatCall", "FlatBatches", "fixed_arity_flat_call", "split_leaves",
           "merge_leaves"]


def _is_tensor_like(v: Any) -> bool:
    return isinstance(v, (torch.Tensor, fx.Proxy))


def split_leaves(leaves: list[Any]) -> tuple[list[Any], list[int], dict[int, Any]]:
    """Tensors, their positions, and the constant (non-tensor) leaves by position."""
    tensors, positions, consts = [], [], {}
    for i, v in enumerate(leaves):
        if _is_tensor_like(v):
            tensors.append(v)
            positions.append(i)
        else:
            consts[i] = v
    return tensors, positions, consts


def merge_leaves(tensors: Any, positions: list[int], consts: dict[int, Any]) -> list[Any]:
    leaves: list[Any] = [None] * (len(positions) + len(consts))
    for i, t in zip(positions, tensors):
        leaves[i] = t
    for i, v in consts.items():
        leaves[i] = v
    return leaves


def _describe_value(spec: TreeSpec) -> str:
    if spec.is_leaf():
        return "a value"
    kind = getattr(spec.type, "__name__", str(spec.type))
    if isinstance(spec.context, list) and all(isinstance(k, str) for k in spec.context):
        return f"{kind} with keys {', '.join(spec.context)}"
    return f"{kind} of {spec.num_children}"


def describe_call(spec: TreeSpec) -> str:
    """A call's structure in words, e.g. ``2 positional inputs and keyword inputs input_ids,
    attention_mask`` (a TreeSpec's repr is pytree internals no user should have to read)."""
    if spec.num_children != 2:
        return str(spec.num_leaves) + " values"
    args, kwargs = spec.child(0), spec.child(1)
    parts = []
    if args.num_children:
        kinds = [_describe_value(args.child(i)) for i in range(args.num_children)]
        detail = "" if all(k == "a value" for k in kinds) else f" ({'; '.join(kinds)})"
        parts.append(f"{args.num_children} positional input{'s' if args.num_children != 1 else ''}{detail}")
    keys = kwargs.context if isinstance(kwargs.context, list) else []
    if keys:
        parts.append(f"keyword inputs {', '.join(map(str, keys))}")
    return " and ".join(parts) or "no inputs"


@dataclass
class FlatSignature:
    in_spec: TreeSpec
    in_positions: list[int]
    in_consts: dict[int, Any]
    out_spec: TreeSpec | None = None
    out_positions: list[int] = field(default_factory=list)
    out_consts: dict[int, Any] = field(default_factory=dict)
    # Input dimensions the graph takes at any size in their range (autoglm.capture.dynamic):
    # None: every size is read at run time (symbolic FX); {}: every dimension fixed to the example.
    dynamic: dict | None = None
    input_names: list[str] = field(default_factory=list)  # one per flat tensor, for messages

    @classmethod
    def from_inputs(cls, args: tuple, kwargs: dict) -> tuple["FlatSignature", list[torch.Tensor]]:
        leaves, spec = tree_flatten((tuple(args), dict(kwargs)))
        tensors, positions, consts = split_leaves(leaves)
        return cls(spec, positions, consts), tensors

    def flatten_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor] | tuple:
        """The graph's flat inputs for a user call; a clear error if the call differs."""
        if not kwargs and self.positional_tensors_only and len(args) == len(self.in_positions) and all(
                type(a) is torch.Tensor for a in args):
            return args  # fast path: plain positional tensors need no pytree walk
        leaves, spec = tree_flatten((tuple(args), self._keyword_order(kwargs)))
        if spec != self.in_spec:
            raise TypeError(
                "compiled model called with a different input structure than it was compiled for: "
                f"expected {describe_call(self.in_spec)}, got {describe_call(spec)}; "
                "compile again with matching example_inputs"
            )
        tensors, positions, consts = split_leaves(leaves)
        if positions != self.in_positions or any(
            not _same_const(consts.get(i), v) for i, v in self.in_consts.items()
        ):
            raise TypeError(
                "compiled model called with different non-tensor arguments than at compile time "
                f"(compiled with {self.in_consts}, called with {consts}); compile again with these values"
            )
        return tensors

    def _keyword_order(self, kwargs: dict) -> dict:
        """``kwargs`` in the compiled order (keyword order carries no meaning, but a dict's
        treespec lists its keys in order: inputs read from a file come sorted by name);
        a missing or unexpected keyword is named in a one-line error."""
        compiled = self.in_spec.child(1).context if self.in_spec.num_children == 2 else None
        if not isinstance(compiled, list) or list(kwargs) == compiled:
            return dict(kwargs)
        missing = [k for k in compiled if k not in kwargs]
        extra = [k for k in kwargs if k not in compiled]
        if missing or extra:
            parts = ([f"missing keyword input(s) {', '.join(missing)}"] if missing else []) + (
                [f"unexpected keyword input(s) {', '.join(extra)}"] if extra else [])
            raise TypeError(f"compiled model called with a different input structure than it was compiled for: "
                            f"{'; '.join(parts)} (compiled for {describe_call(self.in_spec)})")
        return {k: kwargs[k] for k in compiled}

    @property
    def positional_tensors_only(self) -> bool:
        cached = self.__dict__.get("_positional")
        if cached is None:
            n = len(self.in_positions)
            _, plain = tree_flatten((tuple(range(n)), {}))
            cached = not self.in_consts and self.in_spec == plain
            self.__dict__["_positional"] = cached
        return cached

    def unflatten_outputs(self, tensors: Any) -> Any:
        assert self.out_spec is not None, "output structure unknown before capture"
        return tree_unflatten(merge_leaves(tensors, self.out_positions, self.out_consts), self.out_spec)

    def to_json(self) -> dict[str, Any]:
        from torch.utils._pytree import treespec_dumps

        return {
            "in_spec": treespec_dumps(self.in_spec),
            "in_positions": self.in_positions,
            "in_consts": {str(k): _const_json(v) for k, v in self.in_consts.items()},
            "out_spec": treespec_dumps(self.out_spec) if self.out_spec is not None else None,
            "out_positions": self.out_positions,
            "out_consts": {str(k): _const_json(v) for k, v in self.out_consts.items()},
            "dynamic": dims_to_json(self.dynamic) if self.dynamic is not None else None,
            "input_names": list(self.input_names),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, trusted: bool = False) -> "FlatSignature":
        """Read back ``to_json``; the structures are checked as data (``autoglm.ir.treespec``)."""
        from autoglm.ir.treespec import load_treespec

        return cls(
            in_spec=load_treespec(data["in_spec"], "input structure", trusted=trusted),
            in_positions=list(data["in_positions"]),
            in_consts={int(k): v for k, v in data["in_consts"].items()},
            out_spec=(load_treespec(data["out_spec"], "output structure", trusted=trusted)
                      if data["out_spec"] else None),
            out_positions=list(data["out_positions"]),
            out_consts={int(k): v for k, v in data["out_consts"].items()},
            dynamic=(dims_from_json(data["dynamic"], len(data["in_positions"]))
                     if data.get("dynamic") is not None else None),
            input_names=_plain_names(data.get("input_names", [])),
        )


def _plain_names(names: Any) -> list[str]:
    """Input names from a file: shown in messages only, so plain printable names."""
    if not (isinstance(names, list) and all(isinstance(n, str) and n.isprintable() and len(n) < 200
                                            for n in names)):
        raise ValueError("input_names must be a list of short printable names")
    return list(names)


def _same_const(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _const_json(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot save non-tensor constant {v!r} of type {type(v).__name__}")


class FlatCall(nn.Module):
    """Calls the user's model from flat tensors and returns flat tensors.

    Tracing this module (either frontend) yields the flat graph; the output
    structure is recorded on ``signature`` as a side effect of the trace.
    """

    def __init__(self, model: nn.Module, signature: FlatSignature):
        super().__init__()
        self.model = model
        self._signature = signature

    def forward(self, *tensors: Any) -> tuple:
        return self.call_flat(*tensors)

    def call_flat(self, *tensors: Any) -> tuple:
        sig = self._signature
        args, kwargs = tree_unflatten(merge_leaves(tensors, sig.in_positions, sig.in_consts), sig.in_spec)
        out = self.model(*args, **kwargs)
        leaves, out_spec = tree_flatten(out)
        out_tensors, positions, consts = split_leaves(leaves)
        sig.out_spec, sig.out_positions, sig.out_consts = out_spec, positions, consts
        return tuple(out_tensors)


class FlatBatches:
    """Calibration batches as the graph's flat input tuples.

    A dict batch holds keyword inputs (how Hugging Face models are called, and how
    their example is given) and is flattened as the example was; any other batch
    (a tensor, a tuple, a DataLoader's ``(x, y)``) passes through as it is. Lazy, so a
    DataLoader is iterated only when a pass reads it.
    """

    def __init__(self, batches: Any, signature: FlatSignature):
        self.batches, self.signature = batches, signature

    def __iter__(self) -> Any:
        for batch in self.batches:
            if isinstance(batch, dict):
                yield tuple(self.signature.flatten_inputs((), batch))
            else:
                yield batch


def fixed_arity_flat_call(model: nn.Module, signature: FlatSignature, n: int) -> FlatCall:
    """A ``FlatCall`` whose forward takes exactly ``n`` named tensors.

    FX turns ``*args`` into one placeholder it then cannot iterate; a forward with
    one named parameter per tensor gives one placeholder per input. The source is
    generated here from integers only, never from user data.
    """
    names = ", ".join(f"input_{i}" for i in range(n))
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {names}):\n    return self.call_flat({names})\n", namespace)  # noqa: S102
    cls = type("FlatCall", (FlatCall,), {"forward": namespace["forward"]})
    return cls(model, signature)


@dataclass
class Captured:
    graph_module: fx.GraphModule
    signature: FlatSignature
    frontend: str
    flat_inputs: list[torch.Tensor]
    reasons: dict[str, str] = field(default_factory=dict)  # why earlier frontends failed
    notes: dict[str, str] = field(default_factory=dict)  # e.g. why inferred dynamic dims were dropped
