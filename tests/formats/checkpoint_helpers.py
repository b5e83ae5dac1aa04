"""Tiny quantized checkpoints on disk, packed in each format's documented layout by the tests
themselves (independently of qcompiler's readers)."""

__all__ = ["tiny_llama", "quantized_linears", "write_checkpoint", "reference_model"]

import json

import torch
from safetensors.torch import save_file
from torch import nn


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)).eval()


def quantized_linears(model):
    """Every linear of the decoder blocks (lm_head stays in float, as GPTQ/AWQ tools leave it)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")}


def write_checkpoint(root, model, replaced: dict, qconfig: dict, config_file: str | None = None):
    """config.json (+ quantization_config unless ``config_file``), model.safetensors with the float
    tensors of ``model`` except ``<layer>.weight`` of each layer in ``replaced`` ({layer: tensors})."""
    root.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(root)
    cfg = json.loads((root / "config.json").read_text())
    if config_file is None:
        cfg["quantization_config"] = qconfig
    else:
        (root / config_file).write_text(json.dumps(qconfig))
    (root / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if not any(k == f"{n}.weight" for n in replaced)}
    for layer, tensors in replaced.items():
        sd.update({f"{layer}.{k}": v.contiguous() for k, v in tensors.items()})
    save_file(sd, str(root / "model.safetensors"))
    return root


def reference_model(model, weights: dict):
    """``model`` with each layer's weight replaced by the float32 weight in ``weights``."""
    import copy
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for layer, w in weights.items():
            mods[layer].weight.copy_(w)
    return ref
