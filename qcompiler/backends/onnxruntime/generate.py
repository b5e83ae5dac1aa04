"""Greedy generation in ONNX Runtime over a KV-cache export (``kv_cache.py``).

:class:`OrtGenerator` runs the loop ``generate(do_sample=False)`` runs in PyTorch: one prefill
call on the prompt (past of length 0), then one call per new token with the previous call's
``present`` tensors as ``past_key_values``. The cache stays where the session put it (on the GPU
with the CUDA EP): every call binds the last outputs as the next inputs (I/O binding), so only the
token ids, the mask, the positions and the last logits cross to the host.

Semantics follow transformers' greedy search: positions are ``cumsum(attention_mask) - 1``
(0 at padding), a sequence that emits ``eos_token_id`` is continued with ``pad_token_id`` (the
eos when there is none), and the loop stops when every sequence has finished.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np
import torch

from qcompiler.backends.onnxruntime.kv_cache import CacheLayout, CachedLMExport
from qcompiler.errors import ConfigError, UnsupportedError

__all__ = ["OrtGenerator", "generate_kwargs", "layout_of_session"]

_NP_DTYPE = {torch.float32: np.float32, torch.float16: np.float16}
_ORT_TYPE = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
# generate() arguments the greedy loop honours as transformers does (others are refused)
_ACCEPTED = {"attention_mask", "max_new_tokens", "max_length", "eos_token_id", "pad_token_id", "do_sample",
             "num_beams", "use_cache", "generation_config"}


def layout_of_session(session, path) -> CacheLayout:
    """The :class:`CacheLayout` of a KV-cache file, read from its session's inputs (a file written
    by ``export_onnx_with_cache`` in another process, or by anyone using the same layout)."""
    inputs = {i.name: i for i in session.get_inputs()}
    past = sorted((int(m.group(1)), m.group(2)) for m in map(_PAST.match, inputs) if m)
    layers = len(past) // 2
    first = inputs.get("past_key_values.0.key")
    if "input_ids" not in inputs or "attention_mask" not in inputs or first is None or \
            past != [(i, kv) for i in range(layers) for kv in ("key", "value")]:
        raise ConfigError(f"{path} is not a KV-cache export: its inputs are {list(inputs)}",
                          hint="write it with qcompiler.backends.onnxruntime.kv_cache.export_onnx_with_cache")
    shape = list(first.shape)
    if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[1], shape[3])) or first.type not in _ORT_TYPE:
        raise UnsupportedError(f"{path}: past_key_values.0.key is {first.type} {shape}; the generator takes "
                               "float32/float16 [batch, kv_heads, past, head_dim] with fixed heads and head_dim")
    return CacheLayout(layers, shape[1], shape[3], _ORT_TYPE[first.type], cache_arg="",
                       position_ids="position_ids" in inputs)


class OrtGenerator:
    """Greedy decoding of ``exported`` in an ONNX Runtime session on ``providers``. ``exported``
    is what ``export_onnx_with_cache`` returned, or the path of such a file (the layout is then
    read from the file's inputs)."""

    def __init__(self, exported: CachedLMExport | str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
                 session_options=None):
        from qcompiler.backends.onnxruntime.session import open_session
        path = exported.path if isinstance(exported, CachedLMExport) else exported
        self.session = open_session(path, providers, session_options)
        self.layout = exported.layout if isinstance(exported, CachedLMExport) else layout_of_session(self.session, path)
        if self.layout.dtype not in _NP_DTYPE:
            raise UnsupportedError(f"KV-cache dtype {self.layout.dtype} has no ONNX Runtime binding here",
                                   hint="export a float32 or float16 model")
        self.exported = exported if isinstance(exported, CachedLMExport) else None
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def _empty_past(self, batch: int) -> list:
        import onnxruntime as ort
        shape = (batch, self.layout.num_kv_heads, 0, self.layout.head_dim)
        empty = np.zeros(shape, dtype=_NP_DTYPE[self.layout.dtype])
        return [ort.OrtValue.ortvalue_from_numpy(empty, self.device, 0) for _ in self.layout.past_names]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: list):
        """One call: ``(last-token logits as a numpy array [batch, vocab], present OrtValues)``."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        if self.layout.position_ids:
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        for name, value in zip(self.layout.past_names, past):
            binding.bind_ortvalue_input(name, value)
        for name in self.layout.output_names:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return self._last_logits(outs[0]), outs[1:]

    def _last_logits(self, value) -> np.ndarray:
        """``logits[:, -1]`` on the host; on the GPU only that row is copied (the prompt's full
        logits are sequence x vocab)."""
        if self.device == "cuda":
            try:
                return torch.from_dlpack(value)[:, -1].cpu().numpy()
            except Exception:  # noqa: BLE001 - an ORT build without DLPack: copy it all
                pass
        return value.numpy()[:, -1]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 32, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None) -> torch.Tensor:
        """``[batch, prompt + new]`` token ids, as ``model.generate(..., do_sample=False)`` returns."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ConfigError(f"input_ids must be [batch, prompt length >= 1], got {tuple(input_ids.shape)}")
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        mask = (attention_mask.detach().cpu().numpy().astype(np.int64) if attention_mask is not None
                else np.ones_like(ids))
        _check_padding(ids, mask)
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        batch = ids.shape[0]
        pos = np.where(mask == 0, 0, mask.cumsum(-1) - 1)
        tokens, past = ids, self._empty_past(batch)
        out = [ids]
        unfinished = np.ones(batch, dtype=bool)
        for _ in range(max_new_tokens):
            logits, past = self.step(tokens, mask, pos, past)
            nxt = logits.argmax(-1).astype(np.int64)
            nxt = np.where(unfinished, nxt, pad)
            out.append(nxt[:, None])
            if eos:
                unfinished &= ~np.isin(nxt, eos)
                if not unfinished.any():
                    break
            tokens = nxt[:, None]
            pos = pos[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        return torch.from_numpy(np.concatenate(out, axis=1)).to(input_ids.device)


def _check_padding(ids: np.ndarray, mask: np.ndarray) -> None:
    """Batches are left-padded (as transformers wants for decoder LMs): each row's new token goes
    right after its last real one, so a row whose mask ends in 0 would continue after its padding."""
    if mask.shape != ids.shape:
        raise ConfigError(f"attention_mask has shape {list(mask.shape)}, input_ids {list(ids.shape)}: they must match")
    right = np.flatnonzero(mask[:, -1] == 0)
    if right.size:
        raise UnsupportedError(f"prompt row(s) {right.tolist()} are right-padded (attention_mask ends in 0); "
                               "ONNX Runtime generation takes left-padded batches",
                               hint="tokenize with tokenizer.padding_side = 'left'")


def generate_kwargs(eager, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate()``'s keyword arguments as :meth:`OrtGenerator.generate` takes them, with the
    defaults of the model's ``generation_config``; sampling, beams and the rest are refused."""
    extra = sorted(set(kwargs) - _ACCEPTED)
    gc = kwargs.get("generation_config") or getattr(eager, "generation_config", None)
    sampling = kwargs.get("do_sample", getattr(gc, "do_sample", False))
    beams = kwargs.get("num_beams", getattr(gc, "num_beams", 1))
    if extra or sampling or beams not in (None, 1) or kwargs.get("use_cache") is False:
        what = ", ".join(extra) if extra else "do_sample=True" if sampling else f"num_beams={beams}" if beams not in (None, 1) \
            else "use_cache=False"
        raise UnsupportedError(f"generate() in ONNX Runtime is greedy search with the KV cache; it does not take {what}",
                               hint="call qm.program.root.generate(...) to run the eager compiled model with "
                                    "every generation option")
    prompt = input_ids.shape[1]
    new = kwargs.get("max_new_tokens")
    if new is None and kwargs.get("max_length") is not None:
        new = kwargs["max_length"] - prompt
    if new is None:
        new = getattr(gc, "max_new_tokens", None)
        if new is None:
            new = getattr(gc, "max_length", 20) - prompt  # transformers' default: max_length 20
    eos = kwargs.get("eos_token_id", getattr(gc, "eos_token_id", None))
    pad = kwargs.get("pad_token_id", getattr(gc, "pad_token_id", None))
    return {"attention_mask": kwargs.get("attention_mask"), "max_new_tokens": max(int(new), 0),
            "eos_token_id": eos, "pad_token_id": pad}
