"""A lean decode loop: static KV cache, the whole decode step in one CUDA graph, no host sync per token.

Batch-1 decode through Hugging Face ``generate()`` costs ~2 ms of host time per token (logits
processors, stopping criteria, cache bookkeeping, Dynamo guards before each CUDA-graph replay)
for ~0.4 ms of GPU work. :class:`DecodeLoop` does what gpt-fast does instead:

* the prompt runs once through the model's forward (eager, or the fast path's compiled prompt),
  into a transformers ``StaticCache`` sized to a bucket of ``cache_bucket`` positions;
* one decode step - forward of one token per row, the next-token choice
  (:func:`qcompiler.runtime.next_token.choose_next_token`: greedy or sampling), writing it into a
  static output buffer, advancing positions and the cache index - is captured once per
  (batch size, cache length, token choice) with ``torch.cuda.graph`` and replayed per token;
* the host only enqueues replays; it reads the finished flags every ``eos_check_every`` steps
  (only when there is an end-of-sequence id) and trims the output at the end.

The decode step gets its 4D attention mask built from static buffers (so the model's own mask
code, which reads the mask on the host, is skipped) and explicit position ids; the prompt gets the
2D mask and the position ids ``generate()`` would give it. Tokens equal ``generate()``'s
(``tests/runtime/test_decode_loop.py``). ``StepMode.EAGER`` runs the same step without a graph
(the CPU path); ``StepMode.COMPILED_CUDA_GRAPH`` runs a ``torch.compile``'d step (Inductor, no
CUDA graphs of its own, ``fullgraph=True``, ``dynamic=False``) inside the captured graph: its norms,
rotary embedding, cache writes and token choice become a few fused kernels (1.1B shape, 22 layers,
H200: 2.68 -> 1.58 ms of GPU time per fp16 token). ``StepMode.AUTO`` (the default) is that on CUDA,
falling back to ``CUDA_GRAPH`` with a warning when compiling fails or after ``max_compiled_slots``
compiled (batch size, cache length) slots, and ``EAGER`` elsewhere.

>>> loop = DecodeLoop(model)                      # a Hugging Face causal LM or a QuantizedModel
>>> ids = loop.generate(input_ids, max_new_tokens=64, choice=TokenChoice(eos=(2,), pad=2))
"""

from __future__ import annotations

import enum
import inspect
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from qcompiler.errors import UnsupportedError
from qcompiler.runtime.cache_reset import reset_cache
from qcompiler.runtime.next_token import TokenChoice, choose_next_token
from qcompiler.runtime.prompt_attention import causal_prompt_attention, sliding_window
from qcompiler.runtime.prompt_graph import PromptGraphs
from qcompiler.runtime.tensor_places import TensorPlaces

__all__ = ["StepMode", "DecodeLoopConfig", "DecodeLoop"]


class StepMode(enum.Enum):
    """How one decode step runs."""

    AUTO = "auto"  # COMPILED_CUDA_GRAPH on CUDA (CUDA_GRAPH if compiling fails), EAGER elsewhere
    EAGER = "eager"  # the model's forward per token, no graph (what the CPU gets)
    CUDA_GRAPH = "cuda-graph"  # the eager step captured in one CUDA graph: no compile time
    COMPILED_CUDA_GRAPH = "compiled-cuda-graph"  # a torch.compile'd step captured in one CUDA graph


@dataclass(frozen=True)
class DecodeLoopConfig:
    """``step``: how a decode step runs (CUDA modes fall back to ``EAGER`` off CUDA);
    ``compile_backend`` / ``compile_mode``: ``torch.compile`` of the step for
    ``COMPILED_CUDA_GRAPH`` (a mode with CUDA graphs of its own would nest graphs: use
    ``"default"`` or ``"max-autotune-no-cudagraphs"``); ``cache_bucket``: the static cache holds a
    multiple of this many positions, so prompts of other lengths reuse one captured graph;
    ``eos_check_every``: decode steps between reads of the finished flags (one host sync each);
    ``compiled_prefill``: run the prompt through the model's ``forward`` attribute (the fast
    path's compiled prompt when that is on) instead of the plain forward; ``None``: on CUDA (the
    compiled prompt has no per-op host time: 22 layers of eager prompt are host-bound);
    ``max_compiled_slots``: compiled steps kept before ``AUTO`` captures eager steps (each compile
    takes seconds, and Dynamo recompiles one code object a bounded number of times);
    ``causal_prompt``: an unpadded prompt attends causally to its own keys only, without a mask
    (:mod:`qcompiler.runtime.prompt_attention`; ``"sdpa"`` models), instead of masked attention
    over the whole static cache; ``prompt_graphs``: prompt shapes per slot whose compiled
    forward is captured as a CUDA graph the second time they run (:mod:`qcompiler.runtime.prompt_graph`;
    2 by default, 0: never; each captured shape keeps its activations in a memory pool of its own)."""

    step: StepMode = StepMode.AUTO
    compile_backend: str = "inductor"
    compile_mode: str = "default"
    cache_bucket: int = 256
    eos_check_every: int = 16
    compiled_prefill: Optional[bool] = None
    max_compiled_slots: int = 4
    causal_prompt: bool = True
    prompt_graphs: int = 2


def _hf(model: nn.Module) -> nn.Module:
    return model._modules["model"] if hasattr(model, "program") else model  # QuantizedModel -> HF model


def _plain_forward(hf: nn.Module) -> Callable:
    """``hf.forward`` without the fast path's prompt dispatcher (which compiles prompts)."""
    fwd = hf.forward
    return fwd.__wrapped__ if getattr(fwd, "qcompiler_prompt_dispatch", False) else fwd


class _Slot:
    """Static buffers, cache and captured graph for one (batch, cache length, token choice)."""

    def __init__(self, hf: nn.Module, batch: int, cache_len: int, choice: TokenChoice, device: torch.device,
                 prompt_graphs: int):
        from transformers import StaticCache

        def zeros(*shape, dtype=torch.long):
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.batch, self.cache_len, self.choice = batch, cache_len, choice
        self.cache = StaticCache(config=hf.config, max_cache_len=cache_len)
        self.tok, self.pos = zeros(batch, 1), zeros(batch, 1)  # the next forward's token and position
        self.cache_idx, self.generated, self.min_new = zeros(1), zeros(1), zeros(1)
        self.finished = zeros(batch, dtype=torch.bool)
        self.kv_valid = torch.ones(batch, cache_len, dtype=torch.bool, device=device)  # False: prompt padding
        self.kv_index = torch.arange(cache_len, device=device)
        self.out = zeros(batch, cache_len)  # new tokens, column = step
        self.eos = torch.tensor(choice.eos, dtype=torch.long, device=device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.step_fn: Optional[Callable] = None
        self.mode: Optional[StepMode] = None  # what the captured graph holds
        self.prompts = PromptGraphs(prompt_graphs)


class DecodeLoop:
    """Greedy or sampled decoding of a Hugging Face causal LM (or a ``QuantizedModel`` wrapping
    one) through a static cache, a decode step replayed as one CUDA graph per batch size.

    The model must take ``position_ids`` and a 4D ``attention_mask`` (transformers' decoders
    do) and use ``"sdpa"`` or ``"eager"`` attention; :meth:`unsupported_reason` says why not."""

    def __init__(self, model: nn.Module, config: DecodeLoopConfig = DecodeLoopConfig()):
        self.hf = _hf(model)
        self.config = config
        self._slots: dict[tuple, _Slot] = {}
        self._places = TensorPlaces(self.hf)  # where the tensors the slots' graphs read were
        fwd = _plain_forward(self.hf)
        params = inspect.signature(fwd).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.20 / before
        self.last_mode: Optional[StepMode] = None  # what the last generate() ran
        self.compile_failure: Optional[str] = None  # why AUTO stopped compiling steps, if it did
        self.prompt_graph_failure: Optional[str] = None  # why prompts stopped being captured, if they did

    # -- what it supports ------------------------------------------------------------------
    def unsupported_reason(self) -> Optional[str]:
        """Why this model cannot use the loop, or None."""
        cfg = getattr(self.hf, "config", None)
        if cfg is None or not hasattr(self.hf, "generation_config"):
            return "not a Hugging Face generative model"
        if getattr(cfg, "is_encoder_decoder", False):
            return "encoder-decoder model"
        if not getattr(self.hf, "_can_compile_fullgraph", False):
            return f"{type(self.hf).__name__} does not declare static-cache support (_can_compile_fullgraph)"
        attn = getattr(cfg, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            return f"attention implementation {attn!r} (the loop builds masks for 'sdpa' and 'eager')"
        if len(set(getattr(self.hf, "hf_device_map", {"": 0}).values())) > 1:
            return "model spread over several devices (device_map)"
        layer_types = set(getattr(cfg, "layer_types", None) or ())
        if layer_types - {"full_attention", "sliding_attention"} or getattr(cfg, "attention_chunk_size", None):
            return "chunked or other non-causal attention layers (the loop's decode mask covers causal attention)"
        return None

    def cache_length(self, prompt: int, max_new_tokens: int) -> int:
        """The static cache length a request of ``prompt`` + ``max_new_tokens`` positions gets."""
        bucket = max(1, self.config.cache_bucket)
        return -(-(prompt + max_new_tokens) // bucket) * bucket

    def request_reason(self, prompt: int, max_new_tokens: int) -> Optional[str]:
        """Why the loop cannot run this request on this model, or None: a sliding window shorter
        than the request's cache (transformers then keeps window-sized cache layers, which the
        loop's full-length decode mask does not fit)."""
        window = sliding_window(self.hf.config)
        cache_len = self.cache_length(prompt, max_new_tokens)
        if window is not None and window < cache_len:
            return f"sliding window of {window} positions < the {cache_len}-position cache of this request"
        return None

    def release(self) -> None:
        """Free every static cache and captured graph (they stay allocated between calls, one set
        per batch size; the next call of a batch size captures again)."""
        self._slots.clear()

    def step_mode(self, device: torch.device) -> StepMode:
        """The mode a new slot on ``device`` runs: no CUDA graph off CUDA (an explicitly compiled
        step stays compiled); ``AUTO`` resolved as its docstring says."""
        step = self.config.step
        if step is StepMode.AUTO:
            if device.type != "cuda":
                return StepMode.EAGER
            compiled = sum(s.mode is StepMode.COMPILED_CUDA_GRAPH for s in self._slots.values())
            if self.compile_failure is None and compiled < self.config.max_compiled_slots:
                return StepMode.COMPILED_CUDA_GRAPH
            return StepMode.CUDA_GRAPH
        if device.type == "cuda" or step is StepMode.COMPILED_CUDA_GRAPH:
            return step
        return StepMode.EAGER

    # -- the loop --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                 max_new_tokens: int, choice: TokenChoice = TokenChoice(), min_new_tokens: int = 0) -> torch.Tensor:
        """``input_ids`` [batch, prompt] followed by up to ``max_new_tokens`` new tokens per row, as
        ``generate()`` returns them: rows that ended (an ``eos`` id) are padded with ``choice.pad``,
        and the output stops once every row has ended."""
        batch, prompt = input_ids.shape
        why = self.request_reason(prompt, max_new_tokens)
        if why is not None:
            raise UnsupportedError(f"DecodeLoop.generate: {why}",
                                   hint="use transformers' generate() (qm.generate() does so for such requests)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cache_len = self.cache_length(prompt, max_new_tokens)
        if self._slots and self._places.moved():
            self._slots.clear()  # a weight, buffer or module was replaced: the graphs read the old ones
        if not self._slots:
            self._places.record()
        slot = self._slot(batch, cache_len, choice, input_ids.device)
        if slot.mode is None:
            slot.mode = self.step_mode(input_ids.device)
        steps = max_new_tokens - 1  # the prompt's forward gives the first token
        graphed = steps > 0 and slot.mode is not StepMode.EAGER and input_ids.device.type == "cuda"
        if graphed and slot.graph is None:
            slot.graph = self._capture_with_fallback(slot, input_ids, attention_mask, min_new_tokens)
        self.last_mode = slot.mode
        self._prefill(slot, input_ids, attention_mask, min_new_tokens)
        if steps > 0:
            run = slot.graph.replay if graphed else self._step_fn(slot, slot.mode)
            check = self.config.eos_check_every if slot.eos.numel() else 0
            for i in range(steps):
                run()
                # A sync every `check` steps, once an eos is allowed (token i + 1 is the latest).
                if check and i + 1 >= min_new_tokens and (i + 1) % check == 0 and bool(slot.finished.all()):
                    break
        new = self._trim(slot, max_new_tokens)
        return torch.cat([input_ids, new], dim=1)

    def _slot(self, batch: int, cache_len: int, choice: TokenChoice, device: torch.device) -> _Slot:
        key = (batch, cache_len, choice, device)
        if key not in self._slots:
            for old in [k for k in self._slots if k[0] == batch and k[2] == choice and k[3] == device]:
                del self._slots[old]  # a longer cache replaces a shorter one: keep memory bounded
            self._slots[key] = _Slot(self.hf, batch, cache_len, choice, device, self.config.prompt_graphs)
        return self._slots[key]

    def _model_kwargs(self, slot: _Slot) -> dict:
        kw = {self._cache_kwarg: slot.cache, "use_cache": True}
        if self._logits_to_keep:
            kw["logits_to_keep"] = 1  # as generate() passes it
        return kw

    def _prefill(self, slot: _Slot, ids: torch.Tensor, mask: torch.Tensor, min_new: int) -> None:
        prompt = ids.shape[1]
        # Every eager op here is a launch of host time around the (captured) prompt: few of them.
        reset_cache(slot.cache, also_zero=(slot.generated, slot.finished))
        mask = mask.to(ids.device)
        model_mask = None if bool((mask == 1).all()) else mask  # generate() drops an all-ones mask too
        slot.kv_valid.fill_(True)
        if model_mask is None:  # generate()'s positions of an unpadded prompt
            pos = torch.arange(prompt, device=ids.device).view(1, prompt)  # strides as cumsum's: no recompile
            pos = pos.expand(ids.shape[0], prompt).contiguous() if ids.shape[0] > 1 else pos
            slot.pos.fill_(prompt - 1)
        else:
            pos = mask.long().cumsum(-1) - 1
            pos = pos.masked_fill(mask == 0, 0)  # generate()'s prompt positions (left padding -> 0)
            slot.kv_valid[:, :prompt] = mask.bool()
            slot.pos.copy_(pos[:, -1:])
        slot.cache_idx.fill_(prompt - 1)
        slot.min_new.fill_(min_new)
        slot.out.fill_(slot.choice.pad)
        compiled = self.config.compiled_prefill
        compiled = ids.device.type == "cuda" if compiled is None else compiled
        fwd = self.hf.forward if compiled else _plain_forward(self.hf)
        causal = self.config.causal_prompt and model_mask is None
        logits = None
        if causal and compiled and prompt > 1 and self.prompt_graph_failure is None and \
                getattr(fwd, "qcompiler_prompt_dispatch", False):  # the fast path's compiled prompt
            def forward(i: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
                with causal_prompt_attention(self.hf, prompt):
                    return fwd(input_ids=i, attention_mask=None, position_ids=p, **self._model_kwargs(slot)).logits
            logits = slot.prompts.run(forward, ids, pos, slot.cache)
            self.prompt_graph_failure = slot.prompts.failure
        if logits is None:
            with causal_prompt_attention(self.hf, prompt, enabled=causal):
                logits = fwd(input_ids=ids, attention_mask=model_mask, position_ids=pos,
                             **self._model_kwargs(slot)).logits
        self._advance(slot, logits[:, -1, :])

    def _advance(self, slot: _Slot, logits: torch.Tensor) -> None:
        """Choose the next token of each row, record it, move every index one step on (tensor ops only)."""
        nxt = choose_next_token(logits, slot.choice, slot.generated, slot.min_new, slot.eos)
        if slot.eos.numel():
            nxt = torch.where(slot.finished, slot.choice.pad, nxt)  # ended rows get padding, as in generate()
            slot.finished.logical_or_((nxt[:, None] == slot.eos[None, :]).any(-1))
        slot.out.index_copy_(1, slot.generated, nxt[:, None])
        slot.tok.copy_(nxt[:, None])
        slot.pos.add_(1)
        slot.cache_idx.add_(1)
        slot.generated.add_(1)

    def _decode_step(self, slot: _Slot) -> None:
        visible = slot.kv_valid & (slot.kv_index <= slot.cache_idx)  # [batch, cache_len]
        if getattr(self.hf.config, "_attn_implementation", "sdpa") == "eager":  # additive float mask
            dtype = self.hf.get_input_embeddings().weight.dtype
            attn = torch.full(visible.shape, torch.finfo(dtype).min, dtype=dtype, device=visible.device)
            attn = attn.masked_fill(visible, 0.0)[:, None, None, :]
        else:
            attn = visible[:, None, None, :]
        logits = _plain_forward(self.hf)(input_ids=slot.tok, attention_mask=attn, position_ids=slot.pos,
                                         **self._model_kwargs(slot)).logits
        self._advance(slot, logits[:, -1, :])

    def _step_fn(self, slot: _Slot, mode: StepMode) -> Callable[[], None]:
        if slot.step_fn is None:
            step = lambda: self._decode_step(slot)  # noqa: E731
            if mode is StepMode.COMPILED_CUDA_GRAPH:  # off CUDA: the compiled step without a graph
                step = torch.compile(step, backend=self.config.compile_backend, fullgraph=True, dynamic=False,
                                     mode=self.config.compile_mode if self.config.compile_backend == "inductor"
                                     else None)
            slot.step_fn = step
        return slot.step_fn

    def _capture_with_fallback(self, slot: _Slot, ids: torch.Tensor, mask: torch.Tensor,
                               min_new: int) -> "torch.cuda.CUDAGraph":
        """Capture ``slot``'s step (each warm-up needs a filled cache: the prompt runs first). A
        compiled step that fails to compile under ``AUTO`` is replaced by the eager step, with a
        warning, and ``AUTO`` compiles no more steps."""
        self._prefill(slot, ids, mask, min_new)
        if self.config.step is not StepMode.AUTO or slot.mode is not StepMode.COMPILED_CUDA_GRAPH:
            return self._capture(slot)
        try:
            return self._capture(slot)
        except Exception as e:  # noqa: BLE001 - generate() must keep working: fall back, say so
            self.compile_failure = f"{type(e).__name__}: {str(e)[:300]}"
            warnings.warn("qcompiler decode loop: compiling the decode step failed, this and later steps are "
                          f"captured uncompiled (StepMode.CUDA_GRAPH): {self.compile_failure}",
                          RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            slot.mode, slot.step_fn = StepMode.CUDA_GRAPH, None
            self._prefill(slot, ids, mask, min_new)
            return self._capture(slot)

    def _capture(self, slot: _Slot) -> "torch.cuda.CUDAGraph":
        """Warm up (compiles, autotunes, lazy inits) on a side stream, then capture one step. The
        warm-up steps write the cache and move the indices: the caller runs the prompt again."""
        step = self._step_fn(slot, slot.mode)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph

    def _trim(self, slot: _Slot, max_new: int) -> torch.Tensor:
        """The new tokens up to the step at which the last row ended (``generate()``'s length)."""
        out = slot.out[:, :max_new]
        if not slot.eos.numel():
            return out.clone()
        is_eos = (out[:, :, None] == slot.eos[None, None, :]).any(-1)
        ended = is_eos.any(1)
        if not bool(ended.all()):
            return out.clone()
        first = is_eos.int().argmax(1)  # first eos column of each row
        return out[:, :int(first.max()) + 1].clone()
