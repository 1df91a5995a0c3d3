"""Linear layers that run a sparse weight: CSR, BSR and 2:4 semi-structured.

The ``sparsify`` pass swaps a ``nn.Linear`` for one of these when that format
measured faster than dense on the target. Layers kept dense (dense-with-zeros,
pruned-dense) stay plain ``nn.Linear`` so later passes (``quantize``) still
recognise them.

Every class computes ``y = x @ W.T + b`` with ``W`` the masked weight, keeps
the input's leading dimensions, returns a contiguous tensor (downstream
``view`` calls rely on that) and saves without pickle through
``__autoglm_save__`` / ``__autoglm_load__`` (see ``autoglm.artifacts.graph_json``).

Why ``W @ x.T`` and not ``F.linear(x, W_csr)``: on CPU the CSR x dense
product is only fast with the sparse operand on the left (``addmm``);
``F.linear`` with a CSR weight measured 3-13x slower than dense.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

__all__ = ["CsrLinear", "BsrLinear", "SemiStructuredLinear", "SPARSE_LINEAR_CLASSES", "stored_bytes"]


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # torch warns "sparse CSR support is in beta" on every conversion; once is plenty.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return fn(*args, **kwargs)


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really occupies: values plus index arrays for sparse layouts."""
    if t.layout == torch.strided:
        return t.numel() * t.element_size()
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = [t.values(), t.crow_indices(), t.col_indices()]
        return sum(p.numel() * p.element_size() for p in parts)
    return t.values().numel() * t.element_size()


class _SparseLinearBase(nn.Module):
    """Shared plumbing: shape bookkeeping, bias, the sparse x dense product."""

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, in_features: int, out_features: int):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.register_buffer("weight", weight)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        # (out, in) sparse @ (in, rows) dense -> (out, rows); bias broadcast per row.
        if self.bias is not None:
            y = torch.addmm(self.bias.unsqueeze(1), self.weight, x2.t())
        else:
            y = torch.mm(self.weight, x2.t())
        return y.t().contiguous().reshape(x.shape[:-1] + (self.out_features,))

    # Compressed-row layouts (CSR, BSR) save their index arrays and values; a subclass
    # names its layout constructor here and inherits save/load.
    _compressed_ctor: Any = None

    def __autoglm_save__(self) -> tuple[dict, dict[str, torch.Tensor]]:
        w = self.weight
        tensors = {"crow_indices": w.crow_indices(), "col_indices": w.col_indices(), "values": w.values()}
        tensors.update(self._bias_tensors())
        return {"in_features": self.in_features, "out_features": self.out_features}, tensors

    @classmethod
    def __autoglm_load__(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "_SparseLinearBase":
        shape = (int(config["out_features"]), int(config["in_features"]))
        w = _quiet(cls._compressed_ctor, tensors["crow_indices"], tensors["col_indices"], tensors["values"],
                   shape, check_invariants=True)
        return cls(w, tensors.get("bias"), shape[1], shape[0])

    def dense_weight(self) -> torch.Tensor:
        """The masked weight as a dense (out, in) tensor (zeros where pruned)."""
        return self.weight.to_dense()

    def extra_repr(self) -> str:
        nnz = int((self.weight.values() != 0).sum())  # BSR blocks may hold explicit zeros
        total = self.in_features * self.out_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"density={int(nnz) / max(total, 1):.3f}")

    def _bias_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.bias is None else {"bias": self.bias.detach()}


class CsrLinear(_SparseLinearBase):
    """A linear whose weight is stored as compressed sparse rows (``torch.sparse_csr``)."""

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "CsrLinear":
        w = _quiet(weight.detach().to_sparse_csr)
        return cls(w, bias, weight.shape[1], weight.shape[0])

    _compressed_ctor = staticmethod(torch.sparse_csr_tensor)


class BsrLinear(_SparseLinearBase):
    """A linear whose weight is stored as block sparse rows; pays only for block-sparse masks."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, in_features: int, out_features: int):
        super().__init__(weight, bias, in_features, out_features)
        self.blocksize = tuple(int(b) for b in weight.values().shape[-2:])

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, blocksize: int = 16) -> "BsrLinear":
        w = _quiet(weight.detach().to_sparse_bsr, (blocksize, blocksize))
        return cls(w, bias, weight.shape[1], weight.shape[0])

    _compressed_ctor = staticmethod(torch.sparse_bsr_tensor)


class SemiStructuredLinear(nn.Module):
    """2:4 semi-structured weight (``to_sparse_semi_structured``): CUDA with sparse tensor cores only.

    Holds the packed weight for speed and saves the dense masked weight (the
    packed layout is backend-specific); loading re-packs on the current GPU.
    """

    def __init__(self, dense_weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if not dense_weight.is_cuda:
            raise ValueError("SemiStructuredLinear needs a CUDA weight: 2:4 semi-structured kernels are CUDA-only; "
                             "use the dense or CSR format on CPU")
        from torch.sparse import to_sparse_semi_structured

        self.out_features, self.in_features = (int(d) for d in dense_weight.shape)
        self.weight = nn.Parameter(to_sparse_semi_structured(dense_weight.detach()), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "SemiStructuredLinear":
        return cls(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def dense_weight(self) -> torch.Tensor:
        return self.weight.to_dense()

    def __autoglm_save__(self) -> tuple[dict, dict[str, torch.Tensor]]:
        tensors = {"dense_weight": self.dense_weight().cpu()}
        if self.bias is not None:
            tensors["bias"] = self.bias.detach().cpu()
        return {"in_features": self.in_features, "out_features": self.out_features}, tensors

    @classmethod
    def __autoglm_load__(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SemiStructuredLinear":
        if not torch.cuda.is_available():
            raise RuntimeError("this artifact has a 2:4 semi-structured layer, which needs a CUDA GPU to load; "
                               "recompile with sparsify(formats=['dense','csr']) for CPU")
        bias = tensors.get("bias")
        return cls(tensors["dense_weight"].cuda(), None if bias is None else bias.cuda())


SPARSE_LINEAR_CLASSES: tuple[type[nn.Module], ...] = (CsrLinear, BsrLinear, SemiStructuredLinear)
