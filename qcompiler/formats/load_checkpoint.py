"""``load_checkpoint(dir)``: a GPTQ / AWQ / compressed-tensors checkpoint as a qcompiler model.

The Hugging Face model is built from ``config.json`` on ``meta`` (accelerate's
``init_empty_weights``); each quantized linear's stored tensors are converted by the format's
reader (``gptq.py``, ``awq.py``, ``compressed_tensors.py``) into qcompiler's layout, every other
tensor is read from the safetensors files. The model is then compiled with the ``checkpoint``
scheme, whose ``checkpoint-weights`` pass stores the converted codes as they are (nothing is
re-quantized), so it runs on qcompiler's ops (``weight_only_linear``, ``int8_linear``), lowers to
Triton with ``backend="triton"``, reports, saves and exports like any compiled model.

Peak memory: the float copy of each quantized linear (the format's exact dequantization) lives
until compile ends; it is the float reference capture traces and the report compares against.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from qcompiler.formats.checkpoint_files import CheckpointTensors
from qcompiler.formats.checkpoint_weights import register_source, release_source
from qcompiler.formats.detect import read_format_config
from qcompiler.formats.errors import CheckpointFormatError

__all__ = ["load_checkpoint", "build_skeleton", "checkpoint_pipeline"]


def checkpoint_pipeline(source: str) -> str:
    """The passes that turn a model with float (dequantized) linears into one running the
    checkpoint's codes registered as ``source``; the report's scheme reads ``checkpoint:<format>``."""
    return (f"canonicalize-linear,annotate-linears{{act=none}},checkpoint-weights{{source={source}}},"
            f"decompose-matmul,share-activation-quant,dce")


def _dtype(config, dtype) -> torch.dtype:
    d = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(d, str):
        d = getattr(torch, d.removeprefix("torch."))
    return d


def build_skeleton(root: Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The causal LM of ``root/config.json`` with its parameters on ``meta`` (buffers real)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = copy.deepcopy(AutoConfig.from_pretrained(str(root)))
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # from_config must build plain nn.Linear layers
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=_dtype(config, dtype))
    return model.eval()


def load_checkpoint(path: str | os.PathLike, *, backend: str = "eager", dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu", allow_fallback: bool = False) -> nn.Module:
    """Reads the quantized checkpoint in ``path`` and returns a :class:`qcompiler.QuantizedModel`.

    >>> qm = qcompiler.load("Llama-2-7B-GPTQ")          # detected from config.json
    >>> print(qm.report())                                # every layer, its format, its kernel
    >>> qm.generate(ids, max_new_tokens=20)
    >>> qm = qcompiler.load("Llama-2-7B-GPTQ", backend="triton", device="cuda", dtype=torch.float16)

    ``dtype``: of the float parts (default: config.json's); ``device``: where the model is compiled
    and runs.
    """
    from accelerate.utils import set_module_tensor_to_device

    import qcompiler

    root = Path(path)
    cfg = read_format_config(root)
    model = build_skeleton(root, dtype)
    dt = next(model.parameters()).dtype
    tensors = CheckpointTensors(root)
    table, consumed = {}, set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and cfg.claims(tensors, name):
            lw = cfg.read_linear(tensors, name, mod)
            table[name] = lw
            consumed.update(cfg.stored_tensors(name))
            set_module_tensor_to_device(model, f"{name}.weight", "cpu", lw.dequantize().to(dt))
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    for name, p in list(model.named_parameters()):
        if p.device.type != "meta":
            continue
        if name in tensors:
            set_module_tensor_to_device(model, name, "cpu", tensors.get(name).to(dt))
        elif not (name in tied or getattr(model.config, "tie_word_embeddings", False) and "lm_head" in name):
            raise CheckpointFormatError(f"tensor '{name}' is missing from {root}",
                                        hint="the checkpoint does not hold every parameter of the model its "
                                             "config.json describes")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    still = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still:
        raise CheckpointFormatError(f"tensor '{still[0]}' is missing from {root}")
    if not table:
        raise CheckpointFormatError(f"{root}: the config says {cfg.name} but no linear layer's quantized tensors "
                                    "were found", hint="check the tensor names against the model's module names")
    model.to(device)  # compiled where it runs: backend="triton" wants the model on the GPU
    vocab = int(getattr(model.config, "vocab_size", 16))
    example = {"input_ids": (torch.arange(8, device=device) % max(vocab, 1)).reshape(1, 8)}
    key = register_source(table)
    try:  # the scheme named here only validates no options: the pipeline is the checkpoint's
        qm = qcompiler.compile(model, "w8-weight-only", example_inputs=example, backend=backend, progress=False,
                               allow_fallback=allow_fallback, pipeline=checkpoint_pipeline(key))
    finally:
        release_source(key)
    scheme = f"checkpoint:{cfg.name}"
    qm.report().scheme = scheme
    qm.record = dataclasses.replace(qm.record, scheme=scheme, options={"format": cfg.name, "path": str(root)})
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    unused = [k for k in tensors.keys() if k not in consumed and k not in params]
    qm.report().notes.append(f"read from a {cfg.name} checkpoint ({root}): {len(table)} quantized linears, "
                             f"the other layers in float")
    if unused:
        qm.report().notes.append(f"tensors of the checkpoint not used: {', '.join(unused[:5])}"
                                 f"{' ...' if len(unused) > 5 else ''}")
    return qm
