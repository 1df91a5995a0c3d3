"""Which input dimensions may change between calls (dynamic shapes), and checking calls against them.

``autoglm.compile(..., dynamic=...)`` takes:

- ``None`` (default): inferred. The batch dimension (dim 0 of every input that
  has the first input's dim-0 size) and the sequence dimensions (dim 1 of 2-D
  inputs whose size is that of an integer 2-D input, as token ids and their
  masks are; one name per distinct length). torch.export then keeps dynamic
  what the model allows and specialises the rest (``Dim.AUTO``); the ranges it
  proves become the ranges a call is checked against;
- ``False``: every dimension fixed to the example (the behaviour before);
- a dict ``{input: {dim: spec}}``: ``input`` is a keyword name, a position
  (``0``) or a flat name (``input_0``); ``spec`` is a name (``"seq"``), a
  ``(name, min, max)`` tuple (``max`` may be ``None``) or a
  ``torch.export.Dim``. Dimensions that share a name share a size;
- a list of other example inputs: the dimensions whose sizes differ between
  the examples are dynamic.

The export frontend freezes every shape it is not told is dynamic, so its graphs
are checked; symbolic FX graphs read sizes at run time and are checked only
against dims the user stated. A call outside a range, a changed static
dimension, or two same-named dimensions of different sizes fail with one line
that names the input and the range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils._pytree import tree_flatten_with_path

__all__ = ["DimRange", "DynamicDims", "flat_input_names", "infer_dims", "stated_dims", "dims_from_examples",
           "check_call", "dims_to_json", "dims_from_json", "export_shapes", "dims_of_export", "grown_inputs", "requested_dims", "named_dims_of_export"]

# No more than this many elements along one dimension: ranges torch leaves unbounded are stored as None.
UNBOUNDED = None


@dataclass(frozen=True)
class DimRange:
    name: str
    min: int = 1
    max: int | None = UNBOUNDED

    def covers(self, size: int) -> bool:
        return size >= self.min and (self.max is None or size <= self.max)

    def text(self) -> str:
        return f"{self.name} in [{self.min}, {self.max if self.max is not None else 'inf'}]"


DynamicDims = dict[int, dict[int, DimRange]]  # flat input index -> dimension -> range


def flat_input_names(args: tuple, kwargs: dict) -> list[str]:
    """One name per tensor the graph takes: the keyword (``input_ids``), or ``input_<i>`` by position."""
    names = []
    for path, leaf in tree_flatten_with_path((tuple(args), dict(kwargs)))[0]:
        if not isinstance(leaf, torch.Tensor):
            continue
        key = path[1] if len(path) > 1 else None
        if path and getattr(path[0], "idx", None) == 1 and hasattr(key, "key") and len(path) == 2:
            names.append(str(key.key))
        else:
            names.append(f"input_{len(names)}")
    return names


def infer_dims(flat: Sequence[torch.Tensor]) -> DynamicDims:
    """The batch and sequence dimensions (see the module doc); torch.export decides which stay dynamic."""
    dims: DynamicDims = {}
    sized = [(i, t) for i, t in enumerate(flat) if t.dim() >= 1]
    if not sized:
        return dims
    batch = sized[0][1].shape[0]
    # Token inputs are 2-D integer tensors; each distinct length is its own sequence dim
    # (an encoder-decoder's decoder_input_ids are not as long as its input_ids).
    lengths = list(dict.fromkeys(t.shape[1] for _, t in sized if t.dim() == 2 and not t.is_floating_point()))
    for i, t in sized:
        if t.shape[0] == batch:
            dims.setdefault(i, {})[0] = DimRange("batch")
        if t.dim() == 2 and t.shape[1] in lengths:
            k = lengths.index(t.shape[1])
            dims.setdefault(i, {})[1] = DimRange("seq" if k == 0 else f"seq{k + 1}")
    return dims


def _one_spec(spec: Any, where: str) -> DimRange:
    if isinstance(spec, str):
        return DimRange(spec)
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[0], str):
        name, lo, hi = spec
        if not (isinstance(lo, int) and lo >= 1 and (hi is None or (isinstance(hi, int) and hi >= lo))):
            raise ValueError(f"dynamic: {where}: range ({lo}, {hi}) must be 1 <= min <= max (max may be None)")
        return DimRange(name, lo, hi)
    if type(spec).__name__ in ("Dim", "_Dim", "_DerivedDim") or hasattr(spec, "min"):
        hi = getattr(spec, "max", None)
        return DimRange(str(getattr(spec, "__name__", "dim")), max(1, int(getattr(spec, "min", 1) or 1)),
                        None if hi is None or hi > 2**62 else int(hi))
    raise ValueError(f"dynamic: {where}: {spec!r} is not a name, a (name, min, max) tuple or a torch.export.Dim")


def stated_dims(dynamic: dict, names: list[str], flat: Sequence[torch.Tensor]) -> DynamicDims:
    """``dynamic={input: {dim: spec}}`` as flat indices, with a one-line error for unknown inputs or dims."""
    dims: DynamicDims = {}
    for key, per_dim in dynamic.items():
        if isinstance(key, int) and 0 <= key < len(names):
            i = key
        elif key in names:
            i = names.index(key)
        elif isinstance(key, str) and key.startswith("input_") and key[6:].isdigit() and int(key[6:]) < len(names):
            i = int(key[6:])
        else:
            raise ValueError(f"dynamic: no input {key!r}; the inputs are {', '.join(names)}")
        if not isinstance(per_dim, dict):
            raise ValueError(f"dynamic: {key!r} must map dimensions to names, e.g. {{0: 'batch', 1: 'seq'}}")
        for d, spec in per_dim.items():
            if not (isinstance(d, int) and 0 <= d < flat[i].dim()):
                raise ValueError(f"dynamic: {key!r} has no dimension {d!r} (it has {flat[i].dim()})")
            dims.setdefault(i, {})[d] = _one_spec(spec, f"{key}[{d}]")
    return dims


def dims_from_examples(first: Sequence[torch.Tensor], others: Sequence[Sequence[torch.Tensor]]) -> DynamicDims:
    """Dimensions whose size differs in any of ``others``; names shared by sizes that move together."""
    dims: DynamicDims = {}
    for i, t in enumerate(first):
        for d in range(t.dim()):
            sizes = [t.shape[d]] + [o[i].shape[d] for o in others]
            if len(set(sizes)) > 1:
                dims.setdefault(i, {})[d] = DimRange(f"d{'_'.join(map(str, sizes))}")
    return dims


def requested_dims(dynamic: Any, names: list[str], flat: Sequence[torch.Tensor]) -> tuple[DynamicDims, bool]:
    """The user's ``dynamic=`` as flat dims, and whether torch may drop the ones the model cannot take."""
    if dynamic is False:
        return {}, False
    if dynamic is None or dynamic is True:
        return infer_dims(flat), True
    if isinstance(dynamic, dict):
        return stated_dims(dynamic, names, flat), False
    if isinstance(dynamic, list):
        others = [_flat_example(e, len(flat)) for e in dynamic]
        return dims_from_examples(flat, others), True
    raise ValueError(f"dynamic must be None, False, a dict of dims per input or a list of other example inputs, "
                     f"got {type(dynamic).__name__}")


def _flat_example(example: Any, n: int) -> list[torch.Tensor]:
    args, kwargs = ((), example) if isinstance(example, dict) else (
        (example,) if isinstance(example, torch.Tensor) else tuple(example), {})
    flat = [leaf for leaf in tree_flatten_with_path((args, kwargs))[0] if isinstance(leaf[1], torch.Tensor)]
    if len(flat) != n:
        raise ValueError(f"dynamic: an example holds {len(flat)} tensors, the first one {n}")
    return [t for _, t in flat]


def check_call(flat: Sequence[torch.Tensor], example: Sequence[torch.Tensor], dims: DynamicDims,
               names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first input whose shape the compiled graph cannot take."""
    seen: dict[str, tuple[int, str]] = {}
    for i, (t, ex) in enumerate(zip(flat, example)):
        name = names[i] if i < len(names) else f"input_{i}"
        if t.dim() != ex.dim():
            raise ValueError(f"{name} has {t.dim()} dimensions; the model was compiled for {ex.dim()} "
                             f"(shape {tuple(ex.shape)})")
        for d, (size, ex_size) in enumerate(zip(t.shape, ex.shape)):
            r = dims.get(i, {}).get(d)
            if r is None:
                if size != ex_size:
                    raise ValueError(f"{name} dim {d} is {size}; it was compiled static at {ex_size} (shape "
                                     f"{tuple(ex.shape)}); compile with it marked dynamic (dynamic=, --dynamic)")
                continue
            if not r.covers(size):
                raise ValueError(f"{name} dim {d} is {size}, outside the compiled range {r.text()}")
            other = seen.setdefault(r.name, (size, f"{name} dim {d}"))
            if other[0] != size:
                raise ValueError(f"{name} dim {d} is {size} but {other[1]} is {other[0]}; both are {r.name!r}")


def dims_to_json(dims: DynamicDims) -> dict[str, dict[str, list]]:
    return {str(i): {str(d): [r.name, r.min, r.max] for d, r in per.items()} for i, per in dims.items()}


def dims_from_json(data: Any, n_inputs: int) -> DynamicDims:
    """Read back ``dims_to_json`` from an untrusted file: small ints and plain names only."""
    if not isinstance(data, dict):
        raise ValueError("dynamic dims must be an object")
    dims: DynamicDims = {}
    for i, per in data.items():
        if not (isinstance(i, str) and i.isdigit() and int(i) < n_inputs and isinstance(per, dict)):
            raise ValueError(f"dynamic dims: bad input index {str(i)[:20]!r}")
        for d, entry in per.items():
            ok = (isinstance(d, str) and d.isdigit() and isinstance(entry, list) and len(entry) == 3
                  and isinstance(entry[0], str) and entry[0].isidentifier() and type(entry[1]) is int
                  and (entry[2] is None or type(entry[2]) is int))
            if not ok:
                raise ValueError(f"dynamic dims: bad entry for input {i}")
            dims.setdefault(int(i), {})[int(d)] = DimRange(entry[0], entry[1], entry[2])
    return dims


def export_shapes(dims: DynamicDims, n_inputs: int, *, auto: bool) -> dict[str, dict[int, Any]]:
    """torch.export's ``dynamic_shapes`` for the flat call (``input_<i>``): one shared ``Dim`` per
    name, or ``Dim.AUTO`` (``auto``: torch keeps dynamic what the model allows)."""
    from torch.export import Dim

    shared: dict[str, Any] = {}
    shapes: dict[str, dict[int, Any]] = {f"input_{i}": {} for i in range(n_inputs)}
    for i, per in dims.items():
        for d, r in per.items():
            if auto:
                shapes[f"input_{i}"][d] = Dim.AUTO
                continue
            if r.name not in shared:
                shared[r.name] = Dim(r.name, min=r.min, max=r.max) if r.max is not None else Dim(r.name, min=r.min)
            shapes[f"input_{i}"][d] = shared[r.name]
    return {k: (v or None) for k, v in shapes.items()}


def named_dims_of_export(ep: Any) -> dict[str, dict[int, DimRange]]:
    """A saved ``.pt2``'s dynamic dims by input name (``autoglm compile`` of an exported file):
    dims that share a symbol share a name, the first input/dim that uses it (``input_ids_0``)."""
    # The names autoglm gives the flat inputs (keywords, else input_<i>), from the archive's call structure.
    from torch.utils._pytree import tree_unflatten

    n = len(ep.graph_signature.user_inputs)
    args, kwargs = tree_unflatten([torch.empty(0)] * n, ep.call_spec.in_spec)
    names = flat_input_names(tuple(args), dict(kwargs))
    by_index = dims_of_export(ep, {})
    first: dict[str, str] = {}
    out: dict[str, dict[int, DimRange]] = {}
    for i, per in by_index.items():
        for d, r in per.items():
            label = first.setdefault(r.name, f"{names[i]}_{d}")
            out.setdefault(names[i], {})[d] = DimRange(label, r.min, r.max)
    return out


def grown_inputs(flat: Sequence[torch.Tensor], dims: DynamicDims) -> tuple[torch.Tensor, ...]:
    """The example with every dynamic dimension of size 1 repeated to 2, for capture only:
    torch.export specialises a dimension whose example size is 1 (batch 1, a decode step)."""
    out = []
    for i, t in enumerate(flat):
        for d in dims.get(i, {}):
            if t.shape[d] == 1:
                t = torch.cat([t, t], dim=d)
        out.append(t)
    return tuple(out)


def dims_of_export(ep: Any, wanted: DynamicDims) -> DynamicDims:
    """The dimensions ``ep`` really kept symbolic, with the ranges torch proved, named as ``wanted``."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    found: DynamicDims = {}
    user_inputs = list(ep.graph_signature.user_inputs)
    for i, name in enumerate(user_inputs):
        val = placeholders[name].meta.get("val") if name in placeholders else None
        if val is None:
            continue
        for d, size in enumerate(val.shape):
            if not isinstance(size, torch.SymInt) or not getattr(size.node.expr, "is_Symbol", False):
                continue
            vr = ep.range_constraints.get(size.node.expr)
            lo = int(vr.lower) if vr is not None else 1
            hi = vr.upper if vr is not None else None
            hi = int(hi) if getattr(hi, "is_Integer", False) else None  # int_oo: unbounded
            name_d = wanted.get(i, {}).get(d, DimRange(str(size.node.expr))).name
            found.setdefault(i, {})[d] = DimRange(name_d, lo, hi)
    return found
