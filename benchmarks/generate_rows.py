"""The rows of ``benchmarks/bench_generate.py``: the model it measures and how each row builds its model.

Model: a Llama of the named shape with random weights (std 0.01), fp16; four hidden dims are
multiplied by 20 in every RMSNorm weight, so q/k/v/gate/up inputs carry 4 outlier columns, as real
LLMs' residual streams do (``/work/shared/FINDINGS.md``). Each row builder takes the base model,
the calibration batches and a :class:`RowContext`, and returns the model whose ``generate()`` the
row times.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["SHAPES", "build", "RowContext", "ROWS", "LEAN_ROWS", "COMPILED_STEP", "FP16_BASELINES", "TINY_ROWS",
           "row_builder", "GRAPH_STEP", "EAGER_PROMPT", "UNCAPTURED_PROMPT"]

SHAPES = {  # hidden, MLP, heads, KV heads, full-model layers, vocab
    "8b": (4096, 14336, 32, 8, 32, 128256),
    "1.1b": (2048, 5632, 32, 4, 22, 32000),
    "tiny": (64, 128, 4, 2, 2, 256),
}
OUTLIER_DIMS, OUTLIER_SCALE = 4, 20.0


def build(shape: str, layers: int, vocab: int | None, device: str, dtype: torch.dtype) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    hidden, mlp, heads, kv, full, full_vocab = SHAPES[shape]
    vocab = vocab or max(256, round(full_vocab * layers / full / 256) * 256)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      initializer_range=0.01, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    dims = torch.randperm(hidden, generator=torch.Generator().manual_seed(1))[:OUTLIER_DIMS]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p[dims.to(p.device)] *= OUTLIER_SCALE
    model.generation_config.pad_token_id = 2
    return model.to(dtype).eval()


def _swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and name != "lm_head":
                setattr(mod, name, make(child))
    return model


def to_bnb_int8(model: nn.Module) -> nn.Module:
    import bitsandbytes as bnb

    def make(lin: nn.Linear) -> nn.Module:
        new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                  has_fp16_weights=False, threshold=6.0)
        new.weight = bnb.nn.Int8Params(lin.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        return new.to(lin.weight.device)
    return _swap_linears(model, make)


def to_bnb_nf4(model: nn.Module) -> nn.Module:
    import bitsandbytes as bnb

    def make(lin: nn.Linear) -> nn.Module:
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                compute_dtype=torch.float16, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(lin.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        return new.to(lin.weight.device)
    return _swap_linears(model, make)


def to_torchao(model: nn.Module, bits: int) -> nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    if bits == 8:
        quantize_(model, Int8WeightOnlyConfig())
    else:  # tinygemm (torch._weight_int4pack_mm) layout: bf16 activations
        from torchao.quantization.quantize_.workflows import Int4PackingFormat
        model = model.to(torch.bfloat16)
        quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D))
    return model


@dataclass(frozen=True)
class RowContext:
    """What a row builder needs besides the model: the qcompiler backend, the lean loop's step, the device."""

    backend: str
    lean_step: str
    device: str
    hf_compile_prefill: bool = True
    lean_prefill: str = "auto"  # the lean loop's prompt: auto (compiled on CUDA) | eager | compiled
    prompt_graphs: int = 2  # DecodeLoopConfig.prompt_graphs (its default): repeating prompt shapes captured as CUDA graphs


def _fast_config(ctx: RowContext, lean: bool):
    from qcompiler.runtime import DecodeLoopConfig, FastGenerateConfig, StepMode
    cpu = ctx.device != "cuda"  # --tiny: the same paths on the CPU (Dynamo's eager backend, no CUDA graphs)
    return FastGenerateConfig(all_devices=cpu, backend="eager" if cpu else "inductor",
                              compile_prefill=ctx.hf_compile_prefill,
                              lean_decode=DecodeLoopConfig(step=StepMode(ctx.lean_step),
                                                           compiled_prefill=_PREFILL[ctx.lean_prefill],
                                                           prompt_graphs=ctx.prompt_graphs) if lean else None)


_PREFILL = {"auto": None, "eager": False, "compiled": True}


def fast(model: nn.Module, ctx: RowContext, lean: bool = False) -> nn.Module:
    from qcompiler.runtime import enable_fast_generate
    print("   ", enable_fast_generate(model, _fast_config(ctx, lean)), flush=True)
    return model


def qcompiled(scheme: str):
    def make(base: nn.Module, calib: list, ctx: RowContext) -> nn.Module:
        import qcompiler
        qm = qcompiler.compile(base, scheme, calib, backend=ctx.backend, progress=False)
        return fast(qm, ctx, lean=True)  # what backend="triton" sets up on CUDA, with --lean-step's step
    return make


# In priority order: with --rows all, a run that reaches --budget-s skips the rest.
ROWS: dict[str, Callable] = {
    "fp16-compiled": lambda base, calib, ctx: fast(copy.deepcopy(base), ctx),
    "fp16-lean": lambda base, calib, ctx: fast(copy.deepcopy(base), ctx, lean=True),
    "qc-w4-weight-only": qcompiled("w4-weight-only"),
    "qc-int8-outlier": qcompiled("int8-outlier"),
    "qc-w8-weight-only": qcompiled("w8-weight-only"),
    "qc-nf4": qcompiled("nf4"),
    "qc-gptq-w4": qcompiled("gptq-w4"),
    "qc-w8a8-smoothquant": qcompiled("w8a8-smoothquant"),
    "fp16-eager": lambda base, calib, ctx: base,
    "torchao-int8wo": lambda base, calib, ctx: fast(to_torchao(copy.deepcopy(base), 8), ctx),
    "torchao-int4wo": lambda base, calib, ctx: fast(to_torchao(copy.deepcopy(base), 4), ctx),
    # torchao through the lean loop: the recipe qcompiler's rows get (no compile with the default step).
    "torchao-int8wo-lean": lambda base, calib, ctx: fast(to_torchao(copy.deepcopy(base), 8), ctx, lean=True),
    "torchao-int4wo-lean": lambda base, calib, ctx: fast(to_torchao(copy.deepcopy(base), 4), ctx, lean=True),
    "bnb-nf4": lambda base, calib, ctx: to_bnb_nf4(copy.deepcopy(base)),
    "bnb-int8": lambda base, calib, ctx: to_bnb_int8(copy.deepcopy(base)),
}
LEAN_ROWS = {"fp16-lean"} | {n for n in ROWS if n.startswith("qc-") or n.endswith("-lean")}
COMPILED_STEP = "+compiled-step"  # row-name suffix: that lean row with StepMode.COMPILED_CUDA_GRAPH
GRAPH_STEP = "+graph-step"  # row-name suffix: that lean row with StepMode.CUDA_GRAPH (the eager step, captured)
EAGER_PROMPT = "+eager-prompt"  # row-name suffix: that lean row with its prompts run eagerly
UNCAPTURED_PROMPT = "+uncaptured-prompt"  # row-name suffix: that lean row with no prompt captured (prompt_graph.py off)
FP16_BASELINES = ("fp16-compiled", "fp16-lean")
TINY_ROWS = ["fp16-eager", "fp16-lean", "fp16-compiled", "qc-w4-weight-only", "qc-w8-weight-only", "qc-int8-outlier",
             "qc-nf4", "qc-gptq-w4", "qc-w8a8-smoothquant"]


_SUFFIXES = {COMPILED_STEP: ("lean_step", "compiled-cuda-graph"), GRAPH_STEP: ("lean_step", "cuda-graph"),
             EAGER_PROMPT: ("lean_prefill", "eager"), UNCAPTURED_PROMPT: ("prompt_graphs", 0)}


def row_builder(name: str) -> tuple[Callable, dict]:
    """The builder of row ``name`` and the RowContext fields it overrides: a lean row may carry
    suffixes (``qc-w4-weight-only+graph-step+eager-prompt``)."""
    base, overrides = name, {}
    for suffix, (field, value) in _SUFFIXES.items():
        if suffix in base:
            base = base.replace(suffix, "")
            overrides[field] = value
    if base not in ROWS or (overrides and base not in LEAN_ROWS):
        raise KeyError(name)
    return ROWS[base], overrides
