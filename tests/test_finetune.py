"""``autoglm.finetune_sparse`` on real data (scikit-learn digits): masks held, RigL, accuracy recovery."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.ir.sparse_modules import CsrLinear
from benchmarks.sparsity import accuracy, batches, digits_split, train_digits_mlp


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = digits_split()
    model = train_digits_mlp(x_tr, y_tr)
    return model, (x_tr, y_tr, x_te, y_te)


def _weights(cm: autoglm.CompiledModel) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod in cm.graph_module.named_modules():
        if name.startswith("sparsified.") and hasattr(mod, "weight"):
            w = mod.dense_weight() if hasattr(mod, "dense_weight") else mod.weight
            out[name] = w.detach().clone()
    return out


@pytest.mark.parametrize("spec", ["sparsify(pattern=2:4)", "sparsify(pattern=unstructured,sparsity=0.75)"])
def test_finetune_recovers_within_one_point_of_dense(digits, spec):
    model, (x_tr, y_tr, x_te, y_te) = digits
    dense_acc = accuracy(model, x_te, y_te)
    assert dense_acc > 95.0  # the MLP really learned the task
    user_before = {k: v.clone() for k, v in model.state_dict().items()}
    cm = autoglm.compile(model, (x_te[:64],), passes=spec)
    before_ft = accuracy(cm, x_te, y_te)
    masks_before = {k: w.ne(0) for k, w in _weights(cm).items()}
    result = autoglm.finetune_sparse(cm, batches(x_tr, y_tr, seed=7), steps=300, lr=1e-3)
    after_ft = accuracy(cm, x_te, y_te)
    # masks held exactly: no pruned weight came back, the achieved sparsity is unchanged
    for name, w in _weights(cm).items():
        assert not bool((w.ne(0) & ~masks_before[name]).any()), name
    assert result.losses[-1] < result.losses[0]
    assert after_ft >= dense_acc - 1.0, f"{spec}: dense {dense_acc:.2f}, before ft {before_ft:.2f}, after {after_ft:.2f}"
    # the user's model is untouched by compiling and fine-tuning
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, user_before[k])


def test_structured_finetune_keeps_shapes_and_recovers(digits):
    model, (x_tr, y_tr, x_te, y_te) = digits
    cm = autoglm.compile(model, (x_te[:64],), passes="sparsify(pattern=structured,sparsity=0.5)")
    before_ft = accuracy(cm, x_te, y_te)
    shapes = {k: w.shape for k, w in _weights(cm).items()}
    autoglm.finetune_sparse(cm, batches(x_tr, y_tr, seed=3), steps=200, lr=1e-3)
    assert {k: w.shape for k, w in _weights(cm).items()} == shapes
    assert accuracy(cm, x_te, y_te) >= max(before_ft, accuracy(model, x_te, y_te) - 2.0)


def test_dynamic_rigl_keeps_density_and_moves_the_mask(digits):
    model, (x_tr, y_tr, x_te, y_te) = digits
    cm = autoglm.compile(model, (x_te[:64],), passes="sparsify(pattern=unstructured,sparsity=0.8,formats=['dense'])")
    masks_before = {k: w.ne(0) for k, w in _weights(cm).items()}
    result = autoglm.finetune_sparse(cm, batches(x_tr, y_tr, seed=5), steps=120, lr=1e-3, dynamic=True,
                                     regrow_every=20)
    assert result.mask_updates == 4 and result.regrown > 0  # steps 20..80 (regrowth stops at 75%)
    moved = 0
    for name, w in _weights(cm).items():
        mask = w.ne(0)
        # density fixed (a regrown weight may still sit at exactly 0 after its first step: <=)
        assert int(mask.sum()) <= int(masks_before[name].sum())
        assert abs(result.sparsity[f"{name}.weight"] - 0.8) < 0.005
        moved += int((mask & ~masks_before[name]).sum())
    assert moved > 0
    assert accuracy(cm, x_te, y_te) > 90.0


def test_nm_masks_stay_fixed_under_dynamic(digits):
    model, (x_tr, y_tr, x_te, _) = digits
    cm = autoglm.compile(model, (x_te[:64],), passes="sparsify(pattern=2:4,formats=['dense'])")
    autoglm.finetune_sparse(cm, batches(x_tr, y_tr), steps=40, dynamic=True, regrow_every=10)
    for w in _weights(cm).values():
        assert bool((w.ne(0).reshape(-1, 4).sum(1) <= 2).all())


def test_csr_layers_train_and_pack_back(digits):
    model, (x_tr, y_tr, x_te, y_te) = digits
    cm = autoglm.compile(model, (x_te[:64],), passes="sparsify(pattern=unstructured,sparsity=0.75,"
                                                        "formats=['dense','csr'],min_speedup=0.0001,"
                                                        "score_weights=[0,1,0])")
    assert any(isinstance(m, CsrLinear) for m in cm.graph_module.modules())
    before = accuracy(cm, x_te, y_te)
    autoglm.finetune_sparse(cm, batches(x_tr, y_tr), steps=150, lr=1e-3)
    csr = [m for m in cm.graph_module.modules() if isinstance(m, CsrLinear)]
    assert csr and all(abs(1 - m.weight.values().numel() / (m.in_features * m.out_features) - 0.75) < 0.005
                       for m in csr)
    assert accuracy(cm, x_te, y_te) >= before


def test_plain_module_masks_from_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].weight[:, :4] = 0  # 50% zeros: masked
    data = [(torch.randn(32, 8), torch.randint(0, 2, (32,))) for _ in range(4)]
    result = autoglm.finetune_sparse(model, data, steps=20, lr=1e-2)
    assert set(result.sparsity) == {"0.weight"}
    assert bool((model[0].weight[:, :4] == 0).all()) and bool((model[0].weight[:, 4:] != 0).all())
    assert model.training  # restored


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        autoglm.finetune_sparse(nn.Linear(2, 2), [], steps=0)
    with pytest.raises(TypeError, match="CompiledModel or nn.Module"):
        autoglm.finetune_sparse("model", [], steps=1)
