"""A tiny random Llama written by save_pretrained in several shards, shared by the loading tests."""

import pytest
import torch


def tiny_llama(layers: int = 2, seed: int = 0, tie_word_embeddings: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=tie_word_embeddings)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a few residual dims with large norm weights: outlier features, as in real LLMs
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17, 40]] = 8.0
    return model


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """(float model, checkpoint dir): float32 safetensors, sharded at 100KB (5 shards + index)."""
    model = tiny_llama()
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    model.save_pretrained(path, max_shard_size="100KB")
    return model, path


@pytest.fixture(scope="session")
def tied_llama_dir(tmp_path_factory):
    """(float model, checkpoint dir) with tie_word_embeddings=True: the file holds the embedding only."""
    model = tiny_llama(tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tied") / "tiny-llama-tied"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session")
def calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 256, (1, 16), generator=g) for _ in range(3)]


@pytest.fixture(scope="session")
def prompt():
    return torch.randint(3, 256, (1, 10), generator=torch.Generator().manual_seed(2))
