"""Decoder LMs exported with their KV cache as tensors, so ONNX Runtime can generate.

:func:`export_onnx_with_cache` writes one graph for prefill and decode alike (opset 18), in the
layout onnxruntime-genai and Optimum use for decoder-only models::

    inputs   input_ids              int64  [batch_size, sequence_length]
             attention_mask         int64  [batch_size, total_sequence_length]   (past + new)
             position_ids           int64  [batch_size, sequence_length]         (if the model takes them)
             past_key_values.{i}.key / .value
                                    dtype  [batch_size, num_kv_heads, past_sequence_length, head_dim]
    outputs  logits                 dtype  [batch_size, sequence_length, vocab]
             present.{i}.key / .value
                                    dtype  [batch_size, num_kv_heads, total_sequence_length, head_dim]

``dtype`` is the model's (float32 or float16). The first call (prefill) passes a past of length 0;
every later call passes the previous ``present`` tensors as ``past_key_values``. The model's own
attention code runs inside the graph: the cache is a Hugging Face ``DynamicCache`` rebuilt from
the ``past`` tensors, so the keys are stored after the rotary embedding, as in PyTorch.
:mod:`qcompiler.backends.onnxruntime.generate` runs the greedy loop over such a file.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcompiler.backends.onnxruntime.export import OnnxExport, export_module
from qcompiler.errors import ConfigError, UnsupportedError

__all__ = ["CacheLayout", "CachedLMExport", "cache_layout", "export_onnx_with_cache", "export_float_onnx_with_cache"]

_DIMS = {"batch": "batch_size", "seq": "sequence_length", "total": "total_sequence_length",
         "past": "past_sequence_length"}


@dataclass(frozen=True)
class CacheLayout:
    """What the KV-cache graph takes and returns (see the module docstring)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    cache_arg: str        # the forward's keyword for the cache: "cache" (transformers >= 5.2x) or "past_key_values"
    position_ids: bool    # the forward takes position_ids

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["position_ids"] if self.position_ids else []) + self.past_names

    @property
    def output_names(self) -> list[str]:
        return ["logits"] + self.present_names


@dataclass
class CachedLMExport:
    """What :func:`export_onnx_with_cache` wrote: the file (as :class:`OnnxExport`) and its cache."""

    onnx: OnnxExport
    layout: CacheLayout

    @property
    def path(self):
        return self.onnx.path


def _cache_arg(root: nn.Module) -> str | None:
    params = inspect.signature(root.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in params), None)


def _cache_of(out: Any):
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)


def cache_layout(root: nn.Module) -> CacheLayout:
    """The cache of a Hugging Face decoder LM, read from one 2-token call with an empty cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer
    name = type(root).__name__
    arg = _cache_arg(root)
    config = getattr(root, "config", None)
    if arg is None or config is None or getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"{name} is not a decoder-only language model with a KV cache",
                          hint="KV-cache export takes a Hugging Face causal LM (GPT-2, OPT, Llama, ...); "
                               "export other models with qcompiler.export_onnx")
    device = next((p.device for p in root.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = root(input_ids=torch.tensor([[3, 4]], device=device), **{arg: DynamicCache(config=config)},
                   use_cache=True)
    cache = _cache_of(out)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or []})
        raise UnsupportedError(f"{name}'s cache has layers {kinds or '(none)'}; KV-cache export handles full "
                               "attention layers (DynamicLayer) only", hint="export without the cache: qcompiler.export_onnx")
    k = layers[0].keys
    return CacheLayout(len(layers), k.shape[1], k.shape[3], k.dtype, arg,
                       "position_ids" in inspect.signature(root.forward).parameters)


class CachedLM(nn.Module):
    """``root`` called with flat cache tensors, returning logits and the new cache as a dict: what
    ``torch.onnx.export`` sees. One named parameter per ONNX input (Python identifiers)."""

    def __init__(self, root: nn.Module, layout: CacheLayout):
        super().__init__()
        self.root = root
        self.layout = layout
        self.names = [n.replace(".", "_") for n in layout.input_names]
        scope: dict[str, Any] = {}
        exec(f"def forward(self, {', '.join(self.names)}):\n"  # noqa: S102 - fixed identifiers
             f"    return self._run({', '.join(self.names)})\n", scope)
        self.forward = scope["forward"].__get__(self)

    def _run(self, input_ids, attention_mask, *rest):
        from transformers import DynamicCache
        position_ids = rest[0] if self.layout.position_ids else None
        past = rest[1:] if self.layout.position_ids else rest
        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.root.config)
        extra = {"position_ids": position_ids} if self.layout.position_ids else {}
        out = self.root(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                        **{self.layout.cache_arg: cache}, **extra)
        new = {}
        for i, layer in enumerate(_cache_of(out).layers):
            new[f"present_{i}_key"], new[f"present_{i}_value"] = layer.keys, layer.values
        return {"logits": out.logits, **new}


def _example(layout: CacheLayout, device, batch: int = 2, seq: int = 3, past: int = 5) -> dict[str, torch.Tensor]:
    """Distinct sizes (none 0 or 1) so no dim is specialized; past 0 and seq 1 work at run time."""
    g = torch.Generator().manual_seed(0)
    ex = {"input_ids": torch.randint(3, 64, (batch, seq), generator=g),
          "attention_mask": torch.ones(batch, past + seq, dtype=torch.long)}
    if layout.position_ids:
        ex["position_ids"] = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    for n in layout.past_names:
        ex[n.replace(".", "_")] = torch.randn(batch, layout.num_kv_heads, past, layout.head_dim,
                                              generator=g).to(layout.dtype)
    return {k: v.to(device) for k, v in ex.items()}


def export_onnx_with_cache(qm, path: str | os.PathLike, target: str = "generic", *,
                           external_data: bool | None = None, check: bool = True) -> CachedLMExport:
    """Write the compiled decoder LM ``qm`` as ONNX with its KV cache as inputs and outputs.

    >>> qm = qcompiler.compile(model, "int8-outlier", calibration_data=batches)
    >>> out = export_onnx_with_cache(qm, "model.onnx", target="ort-cpu")
    >>> qcompiler.backends.onnxruntime.generate.OrtGenerator(out).generate(ids, max_new_tokens=32)

    ``target`` as in :func:`qcompiler.export_onnx`. No example inputs are needed: the export
    traces one call with batch 2, 3 new tokens and 5 cached ones, every size dynamic.
    """
    from qcompiler.api import QuantizedModel
    if not isinstance(qm, QuantizedModel):
        raise ConfigError(f"export_onnx_with_cache takes the model qcompiler.compile returned, got {type(qm).__name__}")
    root = qm.program.root
    layout = cache_layout(root)
    example, axes, rename = _export_call(root, layout)
    exported = export_module(qm, CachedLM(root, layout), example, path, axes, target, external_data=external_data,
                             check=check, rename=rename)
    return _checked(CachedLMExport(exported, layout))


def export_float_onnx_with_cache(model: nn.Module, path: str | os.PathLike, *, external_data: bool | None = None,
                                 check: bool = True) -> CachedLMExport:
    """An uncompiled decoder LM (the fp16 baseline) with its KV cache, in the same layout."""
    from qcompiler.backends.onnxruntime.writer import write_onnx
    layout = cache_layout(model)
    example, axes, rename = _export_call(model, layout)
    call, path, use_external, files = write_onnx(CachedLM(model, layout), example, path, {}, dynamic_shapes=axes,
                                                 external_data=external_data, check=check, rename=rename)
    call.input_names = [rename.get(n, n) for n in call.input_names]
    call.output_names = [rename.get(n, n) for n in call.output_names]
    return _checked(CachedLMExport(OnnxExport(path, "float", call, {}, use_external, files=files), layout))


def _export_call(root: nn.Module, layout: CacheLayout):
    """The example call, dynamic dims and ONNX names of a KV-cache export."""
    device = next((p.device for p in root.parameters()), torch.device("cpu"))
    example = _example(layout, device)
    axes = {"input_ids": {0: _DIMS["batch"], 1: _DIMS["seq"]},
            "attention_mask": {0: _DIMS["batch"], 1: _DIMS["total"]},
            **({"position_ids": {0: _DIMS["batch"], 1: _DIMS["seq"]}} if layout.position_ids else {}),
            **{n.replace(".", "_"): {0: _DIMS["batch"], 2: _DIMS["past"]} for n in layout.past_names}}
    rename = {n.replace(".", "_"): n for n in layout.input_names + layout.output_names}
    return example, axes, rename


def _checked(out: CachedLMExport) -> CachedLMExport:
    if out.onnx.input_names != out.layout.input_names or out.onnx.output_names != out.layout.output_names:
        raise UnsupportedError(f"the KV-cache export has inputs {out.onnx.input_names} and outputs "
                               f"{out.onnx.output_names}, not the layout's", hint="report this as a bug")
    return out
