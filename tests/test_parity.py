"""Acceptance parity: passes="none" and the default exact passes match eager."""
import pytest
import torch

import autoglm
from examples.models import EXAMPLES, bert_base_encoder

transformers = pytest.importorskip("transformers")


def _hf_models():
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, vocab_size=1000)).eval()
    gpt2 = GPT2Model(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000)).eval()
    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    return [("bert", bert, {"input_ids": ids, "attention_mask": mask}),
            ("gpt2", gpt2, {"input_ids": ids, "attention_mask": mask})]


@pytest.mark.parametrize("name", ["transformer", "cnn"])
@pytest.mark.parametrize("passes", ["none", "default"])
def test_examples_match_eager(name, passes):
    model, inputs = EXAMPLES[name]()
    cm = autoglm.compile(model, inputs, passes=passes, verify=True)
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs))


@pytest.mark.parametrize("passes", ["none", "default"])
def test_hf_models_with_keyword_inputs(passes):
    for name, model, kwargs in _hf_models():
        cm = autoglm.compile(model, kwargs, passes=passes)
        assert cm.frontend == "export", name
        with torch.no_grad():
            out, ref = cm(**kwargs), model(**kwargs)
        assert type(out) is type(ref), name
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state)
        # New inputs of the same shapes run through the same graph.
        other = {k: (torch.randint(0, 1000, v.shape) if k == "input_ids" else v) for k, v in kwargs.items()}
        with torch.no_grad():
            torch.testing.assert_close(cm(**other).last_hidden_state, model(**other).last_hidden_state)


def test_bert_base_sized_encoder_two_layers():
    model, inputs = bert_base_encoder(layers=2, seq=32)
    cm = autoglm.compile(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs))


def test_hf_model_with_padding_is_one_exported_graph():
    """HF attention-mask fast paths branch on data under symbolic tracing; export is
    the sound single graph (and the only one that saves and exports to ONNX)."""
    (_, bert, kwargs), _ = _hf_models()
    mask = kwargs["attention_mask"].clone()
    mask[0, 10:] = 0
    kwargs = {**kwargs, "attention_mask": mask}
    cm = autoglm.compile(bert, kwargs, passes="none")
    assert type(cm) is autoglm.CompiledModel and cm.frontend == "export"
    with torch.no_grad():
        torch.testing.assert_close(cm(**kwargs).last_hidden_state, bert(**kwargs).last_hidden_state)


def test_static_export_graph_refuses_other_shapes_clearly():
    (_, bert, kwargs), _ = _hf_models()
    cm = autoglm.compile(bert, {"input_ids": kwargs["input_ids"]}, passes="none", dynamic=False)
    with pytest.raises(ValueError, match=r"input_ids dim 1 is 8; it was compiled static at 16"):
        cm(input_ids=torch.randint(0, 1000, (2, 8)))
