"""The zoo's models: real architectures built from small configs, random weights.

Each entry builds ``(model, kwargs)``: a Hugging Face model in eval mode and the
keyword inputs it is called with. Configs are small (hidden 32-64, 2 layers) so
that one model runs through every configuration in seconds on two cores; the
code paths (attention variants, rotary embeddings, relative position biases,
convolutions, encoder-decoder cross attention) are the real ones.

The torchvision wheel on the registry is a CUDA build that does not load beside
CPU torch 2.13 (and timm imports torchvision), so vision models come from
transformers' own implementations (ViT, ConvNeXt, ResNet, Swin, MobileViT...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["ZooModel", "ZOO", "QUICK"]

VOCAB = 128
BATCH, SEQ = 2, 12


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str  # encoder, decoder, encoder-decoder, audio, vision, text-vision
    build: Callable[[], tuple[torch.nn.Module, dict]]


def _text_inputs(pad: bool = True, token_types: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    if pad:
        mask[1, SEQ - 3:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        inputs["token_type_ids"] = torch.zeros(BATCH, SEQ, dtype=torch.long)
    return inputs


def _image(size: int = 32, channels: int = 3) -> dict:
    g = torch.Generator().manual_seed(2)
    return {"pixel_values": torch.randn(1, channels, size, size, generator=g)}


def _warm_batchnorm(model: torch.nn.Module, kwargs: dict) -> None:
    """Set BatchNorm running statistics from the model's own inputs, as training would.

    At init they are mean 0, variance 1 while HF's conv weights are drawn with
    std 0.02, so each conv shrinks the signal ~30x: MobileViT's outputs were exact
    zeros, and every configuration "passed" on them (int8 SQNR inf).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the warm-up calls
    # The example and 15 samples like it: one 1x1 map (or a few alike) gives near-zero
    # variances that amplify any later difference (resnet int8 went to -21 dB).
    g = torch.Generator().manual_seed(6)
    batch = {k: torch.cat([v] + [torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                                 for _ in range(15)]) for k, v in kwargs.items()}
    model.train()
    with torch.no_grad():
        model(**batch)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def _hf(model_cls: str, config_cls: str, inputs: Callable[[], dict], **config) -> Callable:
    def build():
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg).eval()
        kwargs = inputs()
        _warm_batchnorm(model, kwargs)
        return model, kwargs
    return build


_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
            max_position_embeddings=64)
_DEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
            max_position_embeddings=64, use_cache=False)


# Special tokens inside the small vocabulary (the defaults name ids of the full one).
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _seq2seq_inputs() -> dict:
    inputs = _text_inputs()
    g = torch.Generator().manual_seed(3)
    inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (BATCH, 6), generator=g)
    return inputs


def _audio_inputs() -> dict:
    g = torch.Generator().manual_seed(4)
    return {"input_values": torch.randn(1, 1600, generator=g)}


def _whisper_inputs() -> dict:
    g = torch.Generator().manual_seed(5)
    return {"input_features": torch.randn(1, 16, 64, generator=g),
            "decoder_input_ids": torch.randint(3, VOCAB, (1, 4), generator=g)}


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    # encoders
    ZooModel("bert", "encoder", _hf("BertModel", "BertConfig", lambda: _text_inputs(token_types=True), **_ENC)),
    ZooModel("roberta", "encoder", _hf("RobertaModel", "RobertaConfig", _text_inputs, **_ENC)),
    ZooModel("distilbert", "encoder", _hf("DistilBertModel", "DistilBertConfig", _text_inputs, dim=32, n_layers=2,
                                          n_heads=4, hidden_dim=64, vocab_size=VOCAB, max_position_embeddings=64)),
    ZooModel("albert", "encoder", _hf("AlbertModel", "AlbertConfig", _text_inputs, embedding_size=16, **_ENC)),
    ZooModel("electra", "encoder", _hf("ElectraModel", "ElectraConfig", _text_inputs, embedding_size=16, **_ENC)),
    ZooModel("deberta-v2", "encoder", _hf("DebertaV2Model", "DebertaV2Config", _text_inputs, **_ENC)),
    # decoders
    ZooModel("gpt2", "decoder", _hf("GPT2Model", "GPT2Config", _text_inputs, n_embd=32, n_layer=2, n_head=4,
                                    vocab_size=VOCAB, n_positions=64, use_cache=False, **_TOKENS)),
    ZooModel("llama", "decoder", _hf("LlamaModel", "LlamaConfig", _text_inputs, num_key_value_heads=2, **_DEC)),
    ZooModel("mistral", "decoder", _hf("MistralModel", "MistralConfig", _text_inputs, num_key_value_heads=2, **_DEC)),
    ZooModel("qwen2", "decoder", _hf("Qwen2Model", "Qwen2Config", _text_inputs, num_key_value_heads=2, **_DEC)),
    ZooModel("gemma", "decoder", _hf("GemmaModel", "GemmaConfig", _text_inputs, num_key_value_heads=2, head_dim=8,
                                     **_DEC)),
    ZooModel("phi", "decoder", _hf("PhiModel", "PhiConfig", _text_inputs, **_DEC)),
    ZooModel("opt", "decoder", _hf("OPTModel", "OPTConfig", _text_inputs, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64,
                                   word_embed_proj_dim=32, use_cache=False)),
    ZooModel("gpt-neox", "decoder", _hf("GPTNeoXModel", "GPTNeoXConfig", _text_inputs, **_DEC)),
    # encoder-decoder
    ZooModel("t5", "encoder-decoder", _hf("T5Model", "T5Config", _seq2seq_inputs, d_model=32, d_kv=8, d_ff=64,
                                          num_layers=2, num_heads=4, vocab_size=VOCAB, use_cache=False)),
    ZooModel("bart", "encoder-decoder", _hf("BartModel", "BartConfig", _seq2seq_inputs, d_model=32,
                                            encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                            vocab_size=VOCAB, max_position_embeddings=64, use_cache=False)),
    # audio
    ZooModel("wav2vec2", "audio", _hf("Wav2Vec2Model", "Wav2Vec2Config", _audio_inputs, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    ZooModel("whisper", "audio", _hf("WhisperModel", "WhisperConfig", _whisper_inputs, d_model=32,
                                     encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                     num_mel_bins=16, max_source_positions=32, max_target_positions=16,
                                     vocab_size=VOCAB, use_cache=False, decoder_start_token_id=1, **_TOKENS)),
    # vision
    ZooModel("vit", "vision", _hf("ViTModel", "ViTConfig", _image, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)),
    ZooModel("convnext", "vision", _hf("ConvNextModel", "ConvNextConfig", _image, hidden_sizes=[8, 16, 32, 64],
                                       depths=[1, 1, 1, 1])),
    ZooModel("resnet", "vision", _hf("ResNetModel", "ResNetConfig", _image, embedding_size=16,
                                     hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1])),
    ZooModel("swin", "vision", _hf("SwinModel", "SwinConfig", _image, image_size=32, patch_size=4, embed_dim=16,
                                   depths=[1, 1], num_heads=[2, 4], window_size=4)),
    ZooModel("mobilevit", "vision", lambda: _hf("MobileViTModel", "MobileViTConfig", lambda: _image(64),
                                                image_size=64, hidden_sizes=[16, 24, 32],
                                                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32])()),
    # text tower of a text-vision model
    ZooModel("clip-text", "text-vision", _hf("CLIPTextModel", "CLIPTextConfig", lambda: _text_inputs(pad=False),
                                             hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64,
                                             **_TOKENS)),
]}

# The tier CI runs on every change: one of each kind that has broken before
# (an encoder, a Llama-family decoder, an encoder-decoder, a windowed vision model).
QUICK = ("bert", "llama", "t5", "swin")
