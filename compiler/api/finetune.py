"""``autoglm.finetune_sparse``: short recovery training that keeps sparsity masks.

    cm = autoglm.compile(model, (x,), passes="sparsify(pattern=2:4)")
    result = autoglm.finetune_sparse(cm, loader, steps=200, lr=1e-3)           # masks held
    result = autoglm.finetune_sparse(cm, loader, steps=200, dynamic=True,       # RigL-style
                                     regrow_every=50)

Masks: a weight's zeros are its mask. For a ``CompiledModel`` the masked layers
are the ones ``sparsify`` tagged (``tags["sparse"]``), so an ordinary weight
is never frozen by accident; for a plain ``nn.Module`` every Linear/Conv2d
weight with at least ``min_zero_fraction`` zeros is masked. Gradients are
masked before the optimiser step and weights re-masked after it (momentum and
weight decay would otherwise revive pruned weights).

``dynamic=True`` (RigL, Evci et al. 2020): every ``regrow_every`` steps, in each
unstructured layer, drop the ``f`` smallest active weights and regrow the ``f``
inactive weights with the largest dense gradient (initialised to zero), with
``f`` decaying by a cosine from ``regrow_fraction`` to 0 over the first 75% of
steps; density is unchanged. N:M masks stay fixed (a regrow would break the
pattern) and structured layers have no mask (they are already smaller).

CSR/BSR/2:4 layers train as dense-with-mask and are packed back into their
format at the end. A ``CompiledModel``'s weights are first copied so training
never writes into the user's original model (the captured graph shares them).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.driver.compiled import CompiledModel
from autoglm.ir.meta import annotation, has_annotation
from autoglm.ir.sparse_modules import SPARSE_LINEAR_CLASSES

__all__ = ["finetune_sparse", "FinetuneResult"]


@dataclass
class FinetuneResult:
    model: Any  # the CompiledModel or nn.Module, trained in place
    losses: list[float] = field(default_factory=list)
    mask_updates: int = 0  # RigL drop-and-regrow rounds performed
    regrown: int = 0  # weights regrown in total
    sparsity: dict[str, float] = field(default_factory=dict)  # per masked weight, after training


def _nm_of(mask: torch.Tensor) -> tuple[int, int] | None:
    """(N, M) if every group of M along the input dimension keeps exactly N (M in 4, 8)."""
    rows = mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask
    for m in (4, 8):
        if rows.shape[-1] % m == 0:
            counts = rows.reshape(-1, m).sum(dim=1)
            if bool((counts == counts[0]).all()) and 0 < int(counts[0]) < m:
                return int(counts[0]), m
    return None


def _own_parameters(gm: nn.Module) -> None:
    # The captured graph holds the user's Parameters by reference; give it its own copies.
    for mod in gm.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = nn.Parameter(p.detach().clone())


def _densify(root: nn.Module) -> dict[str, tuple[type, dict]]:
    """Swap CSR/BSR/2:4 layers for dense ``nn.Linear``; returns {path: (class, from_dense options)}."""
    swapped: dict[str, tuple[type, dict]] = {}
    for path, mod in list(root.named_modules()):
        if isinstance(mod, SPARSE_LINEAR_CLASSES):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            w = mod.dense_weight()
            lin = lin.to(w.device, w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            _set_module(root, path, lin)
            blocksize = getattr(mod, "blocksize", None)
            swapped[path] = (type(mod), {"blocksize": blocksize[0]} if blocksize else {})
    return swapped


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _tagged_weights(gm: fx.GraphModule) -> dict[str, str]:
    """{weight parameter path: pattern} for layers ``sparsify`` masked (not structured)."""
    out: dict[str, str] = {}
    for node in gm.graph.nodes:
        tag = annotation(node).tags.get("sparse") if has_annotation(node) else None
        if not tag or tag.get("pattern") == "structured":
            continue
        if node.op == "call_module":
            out[f"{node.target}.weight"] = tag["pattern"]
        elif node.op == "call_function" and len(node.args) > 1 and isinstance(node.args[1], fx.Node):
            out[str(node.args[1].target)] = tag["pattern"]
    return out


def _masks(root: nn.Module, tagged: dict[str, str] | None, min_zero_fraction: float) -> dict[str, torch.Tensor]:
    params = dict(root.named_parameters())
    if tagged is not None:
        return {name: params[name].detach().ne(0) for name in tagged if name in params}
    masks = {}
    for path, mod in root.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            mask = mod.weight.detach().ne(0)
            if 1.0 - float(mask.float().mean()) >= min_zero_fraction:
                masks[f"{path}.weight" if path else "weight"] = mask
    return masks


def _default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not target.is_floating_point():
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


def _rigl_update(p: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, fraction: float) -> int:
    """Drop the weakest active weights, regrow as many inactive ones by gradient; returns count."""
    active = int(mask.sum())
    k = min(int(fraction * active), int((~mask).sum()))
    if k <= 0:
        return 0
    flat_mask = mask.flatten()
    inactive_before = ~flat_mask.clone()
    magnitude = torch.where(flat_mask, p.detach().abs().flatten(), torch.full_like(p.flatten(), float("inf")))
    drop = magnitude.topk(k, largest=False).indices
    score = torch.where(inactive_before, grad.abs().flatten(), torch.full_like(p.flatten(), -1.0))
    grow = score.topk(k).indices
    flat_mask[drop] = False
    flat_mask[grow] = True
    with torch.no_grad():
        p.view(-1)[grow] = 0.0  # RigL starts regrown connections at zero
    return k


def finetune_sparse(cm_or_model: CompiledModel | nn.Module, data: Iterable[Any], steps: int = 100, lr: float = 1e-3,
                    *, dynamic: bool = False, regrow_every: int = 50, regrow_fraction: float = 0.3,
                    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None, optimizer: str = "adam",
                    weight_decay: float = 0.0, min_zero_fraction: float = 0.05) -> FinetuneResult:
    """Train ``cm_or_model`` on ``data`` (an iterable of ``(inputs, target)``, cycled) for ``steps`` steps.

    ``inputs`` is a tensor or a tuple of positional inputs. Masks are held
    (``dynamic=False``) or updated RigL-style every ``regrow_every`` steps.
    Returns a ``FinetuneResult``; the model is trained in place.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"finetune_sparse: steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if dynamic and regrow_every < 1:
        raise ValueError(f"finetune_sparse: regrow_every must be >= 1 with dynamic=True, got {regrow_every}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"finetune_sparse: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if isinstance(cm_or_model, CompiledModel):
        cm = cm_or_model
        root: nn.Module = cm.graph_module
        _own_parameters(root)
        tagged: dict[str, str] | None = _tagged_weights(cm.graph_module)

        def forward(*args: Any) -> Any:
            out = cm.graph_module(*cm.signature.flatten_inputs(args, {}))
            return cm.signature.unflatten_outputs(out if isinstance(out, (tuple, list)) else (out,))
    elif isinstance(cm_or_model, nn.Module):
        root, tagged, forward = cm_or_model, None, cm_or_model
    else:
        raise TypeError(f"finetune_sparse expects a CompiledModel or nn.Module, got {type(cm_or_model).__name__}")

    swapped = _densify(root)
    masks = _masks(root, tagged, min_zero_fraction)
    params = dict(root.named_parameters())
    # N:M masks stay fixed under dynamic=True: tagged by the pass, or recognised from the mask itself.
    static = {name for name, m in masks.items()
              if ":" in (tagged or {}).get(name, "") or (tagged is None and _nm_of(m) is not None)}
    trainable = [p for p in root.parameters() if p.is_floating_point()]
    for p in trainable:
        p.requires_grad_(True)
    opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = opt_cls(trainable, lr=lr, weight_decay=weight_decay)
    loss_fn = loss_fn or _default_loss
    result = FinetuneResult(cm_or_model)
    was_training = root.training
    # Captured graphs are inference graphs (batch norm frozen); a user's module trains normally.
    root.train(not isinstance(cm_or_model, CompiledModel))
    batches = itertools.cycle(data)
    stop_regrow = int(0.75 * steps)
    try:
        for step in range(1, steps + 1):
            inputs, target = next(batches)
            inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward(*inputs), target)
            loss.backward()
            regrow = dynamic and step % regrow_every == 0 and step <= stop_regrow
            fraction = regrow_fraction * 0.5 * (1 + math.cos(math.pi * step / max(stop_regrow, 1)))
            for name, mask in masks.items():
                p = params[name]
                if p.grad is None:
                    continue
                if regrow and name not in static:
                    result.regrown += _rigl_update(p, p.grad, mask, fraction)
                p.grad.mul_(mask)
            result.mask_updates += int(regrow)
            opt.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
            result.losses.append(float(loss.detach()))
    finally:
        root.train(was_training)
    if isinstance(cm_or_model, CompiledModel):
        for p in trainable:  # inference graph again: no autograd bookkeeping on every call
            p.requires_grad_(False)
    _repack(root, swapped)
    result.sparsity = {name: round(1.0 - float(m.float().mean()), 6) for name, m in masks.items()}
    if isinstance(cm_or_model, CompiledModel):
        cm_or_model.notes["finetune_sparse"] = {"steps": steps, "lr": lr, "dynamic": dynamic,
                                                "final_loss": result.losses[-1], "regrown": result.regrown,
                                                "sparsity": result.sparsity}
    return result


def _repack(root: nn.Module, swapped: dict[str, tuple[type, dict]]) -> None:
    for path, (cls, options) in swapped.items():
        lin = root.get_submodule(path)
        bias = None if lin.bias is None else lin.bias.detach()
        _set_module(root, path, cls.from_dense(lin.weight.detach(), bias, **options))
