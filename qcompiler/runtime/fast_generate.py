"""The fast ``generate()``: a static KV cache, decode steps replayed as CUDA graphs, prefill compiled.

Batch-1 decode of a quantized model is bound by the bytes of W it reads, but in eager mode each
layer also costs tens of microseconds of Python and launch overhead, more than its kernels take
on the GPU. So, for a Hugging Face causal LM on CUDA, :func:`enable_fast_generate` sets:

* ``generation_config.cache_implementation = "static"``: a preallocated KV cache of fixed shape;
* ``generation_config.compile_config = CompileConfig(mode="reduce-overhead", fullgraph=True)``:
  ``generate()`` then compiles its decode step with ``torch.compile`` (transformers' own
  auto-compile, used when the cache is static) and CUDA graphs replay it, one launch per token;
* ``model.generate``: the lean decode loop (:mod:`qcompiler.runtime.lean_generate`: one CUDA graph
  per decode step, no per-token host work) for the requests it supports (greedy / sampling,
  lengths, eos, padded batches); any other request goes to transformers' ``generate()`` with the
  settings below, and a warning says why;
* a prefill dispatcher on ``model.forward``: a forward that ``generate()`` makes with a static
  cache and more than one new token runs a ``torch.compile``'d forward (Inductor, no CUDA graphs:
  prompt lengths vary). Every other call - ``qm(input_ids)`` directly, decode steps, which
  transformers compiles itself - runs the original forward, so direct calls return ordinary
  tensors (no CUDA-graph output that the next call overwrites).

``qcompiler.compile(..., backend="triton")`` turns this on for models on a CUDA device (the report
says so); :func:`disable_fast_generate` restores the eager path, and the CPU always keeps it.
Every qcompiler op is CUDA-graph-safe and traces without graph breaks (``tests/runtime``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from qcompiler.runtime.decode_loop import DecodeLoopConfig, StepMode
from qcompiler.runtime.lean_generate import install_lean_generate, uninstall_lean_generate

__all__ = ["FastGenerateConfig", "enable_fast_generate", "disable_fast_generate", "fast_generate_status"]

_STATE = "_qcompiler_fast_generate"  # attribute on the HF model: what was changed, to undo it


@dataclass(frozen=True)
class FastGenerateConfig:
    """``decode_mode``: ``torch.compile`` mode of the decode step (``"reduce-overhead"`` = CUDA
    graphs); ``fullgraph``: fail on a graph break instead of splitting; ``compile_prefill``: compile
    prompts' forward too; ``prefill_mode``: its ``torch.compile`` mode; ``all_devices``: also on
    the CPU (for tests; slow to compile, rarely faster); ``backend``: the ``torch.compile``
    backend (``"eager"`` / ``"aot_eager"`` check tracing without Inductor; modes then do not apply)."""

    decode_mode: str = "reduce-overhead"
    fullgraph: bool = True
    compile_prefill: bool = True
    prefill_mode: str = "default"
    all_devices: bool = False
    backend: str = "inductor"
    dynamic: Optional[bool] = True  # one trace for every batch size / prompt length (graphs per shape)
    lean_decode: Optional[DecodeLoopConfig] = DecodeLoopConfig()  # None: every request through HF generate()

    def compile_kwargs(self, mode: str) -> dict:
        return dict(backend=self.backend, mode=mode if self.backend == "inductor" else None,
                    fullgraph=self.fullgraph, dynamic=self.dynamic)


def _hf_model(model: nn.Module) -> Optional[nn.Module]:
    inner = model._modules.get("model") if hasattr(model, "program") else model  # QuantizedModel
    return inner if hasattr(inner, "generation_config") and hasattr(inner, "generate") else None


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _is_static_cache(cache: Any) -> bool:
    from transformers import StaticCache
    return isinstance(cache, StaticCache)


def _cache_ready(cache: Any) -> bool:
    """Whether every layer of a static cache has allocated its tensors. transformers allocates them
    on the first update and marks them static addresses (``torch._dynamo.mark_static_address``)
    only when that update runs eagerly; allocated inside a compiled prompt, they are unmarked, and
    CUDA graph trees then skip the decode step's graph ("skipping cudagraphs due to mutated
    inputs": the cache's ``cumulative_length.add_``) - every step pays its launches' host time."""
    layers = getattr(cache, "layers", None)
    return layers is None or all(getattr(layer, "is_initialized", True) for layer in layers)


def _prefill_dispatch(forward: Callable, compiled: Callable) -> Callable:
    """``forward`` except for a prompt's forward (static cache, more than one token, cache already
    allocated - see :func:`_cache_ready`: a fresh cache's first prompt runs eager), which runs
    ``compiled``; should compiling fail, a warning says why and prompts run eager from then on."""
    failed: list[str] = []

    def dispatch(*args, **kwargs):
        if not failed and not torch.compiler.is_compiling():
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = kwargs.get("inputs_embeds")
            rows = ids if ids is not None else embeds
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            if (rows is not None and rows.dim() >= 2 and rows.shape[1] > 1 and _is_static_cache(cache)
                    and _cache_ready(cache)):
                try:
                    return compiled(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - generate() must keep working: fall back, say so
                    failed.append(f"{type(e).__name__}: {e}")
                    warnings.warn(f"qcompiler fast generate: compiling the prompt's forward failed, prompts run "
                                  f"eager from now on ({failed[0][:300]})", RuntimeWarning, stacklevel=2)
                    cache.reset()  # a failed compile may have written part of the prompt
        return forward(*args, **kwargs)

    dispatch.__wrapped__ = forward
    dispatch.qcompiler_prompt_dispatch = True  # how the lean decode loop finds the plain forward
    return dispatch


def _guarded_compiled_call(get_compiled_call: Callable, eager_call: Callable) -> Callable:
    """transformers' ``get_compiled_call``, whose compiled decode step falls back to ``eager_call``
    (with a warning) if compiling it fails: ``generate()`` must work either way."""
    failed: list[str] = []

    def get(compile_config):
        compiled = get_compiled_call(compile_config)

        def call(*args, **kwargs):
            if not failed:
                try:
                    return compiled(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - compiling runs before the step writes the cache
                    failed.append(f"{type(e).__name__}: {e}")
                    warnings.warn(f"qcompiler fast generate: compiling the decode step failed, decoding runs "
                                  f"eager from now on ({failed[0][:300]})", RuntimeWarning, stacklevel=2)
            return eager_call(*args, **kwargs)
        return call
    return get


def enable_fast_generate(model: nn.Module, config: FastGenerateConfig = FastGenerateConfig()) -> str:
    """Switch ``model`` (a Hugging Face generative model, or a ``QuantizedModel`` wrapping one) to
    the fast generate path. Returns what was done, or why nothing was (not a generative model, not
    on CUDA); the model is unchanged then."""
    from transformers import CompileConfig

    hf = _hf_model(model)
    if hf is None:
        return "not a Hugging Face generative model: generate() is not sped up"
    device = _device(hf)
    if device.type != "cuda" and not config.all_devices:
        return f"model on {device}: generate() stays eager (the fast path needs CUDA)"
    disable_fast_generate(hf)
    gc = hf.generation_config
    saved = {"cache_implementation": gc.cache_implementation, "compile_config": gc.compile_config,
             "forward": hf.__dict__.get("forward"), "get_compiled_call": hf.__dict__.get("get_compiled_call")}
    gc.cache_implementation = "static"
    cc = CompileConfig(**config.compile_kwargs(config.decode_mode))
    if config.all_devices:
        cc._compile_all_devices = True
    gc.compile_config = cc
    hf.get_compiled_call = _guarded_compiled_call(hf.get_compiled_call, hf.__call__)
    if config.compile_prefill:
        forward = hf.forward
        compiled = torch.compile(forward, **config.compile_kwargs(config.prefill_mode))
        hf.forward = _prefill_dispatch(forward, compiled)
    lean = "off"
    if config.lean_decode is not None:
        why_not = install_lean_generate(hf, config.lean_decode)
        step = config.lean_decode.step
        step = ("compiled-cuda-graph step (cuda-graph if compiling fails)" if step is StepMode.AUTO
                else f"{step.value} step")
        prompts = config.lean_decode.prompt_graphs
        prompts = f", prompt shapes seen twice replayed as CUDA graphs (up to {prompts})" if prompts > 0 else ""
        lean = f"not used ({why_not})" if why_not else f"{step}{prompts} for supported requests"
    setattr(hf, _STATE, saved)
    prefill = f"prompts through torch.compile(mode={config.prefill_mode!r})" if config.compile_prefill \
        else "prompts eager"
    return (f"generate(): static KV cache, decode through torch.compile(mode={config.decode_mode!r}, "
            f"fullgraph={config.fullgraph}, dynamic={config.dynamic}) (CUDA graphs), {prefill}; "
            f"lean decode loop: {lean}; "
            "qcompiler.runtime.disable_fast_generate(qm) for eager")


def disable_fast_generate(model: nn.Module) -> bool:
    """Undo :func:`enable_fast_generate`; True if it had been enabled."""
    hf = _hf_model(model)
    saved = getattr(hf, _STATE, None) if hf is not None else None
    if saved is None:
        return False
    uninstall_lean_generate(hf)
    hf.generation_config.cache_implementation = saved["cache_implementation"]
    hf.generation_config.compile_config = saved["compile_config"]
    for name in ("forward", "get_compiled_call"):
        if saved[name] is None:
            hf.__dict__.pop(name, None)
        else:
            setattr(hf, name, saved[name])
    if hasattr(hf, "_compiled_call"):  # transformers' cached compiled decode step
        del hf._compiled_call
    delattr(hf, _STATE)
    return True


def fast_generate_status(model: nn.Module) -> bool:
    """Whether ``model`` generates through the fast path."""
    hf = _hf_model(model)
    return hf is not None and getattr(hf, _STATE, None) is not None
