"""An exported model in an ONNX Runtime ``InferenceSession``, called like the original model.

:class:`OrtModule` takes the model's own arguments, feeds the ONNX inputs, and rebuilds the
model's output structure (a tensor, a tuple, a Hugging Face ``ModelOutput``) from the ONNX
outputs. With the CUDA execution provider and CUDA tensors it binds inputs and outputs on the
device (I/O binding, no host copies); otherwise it runs through numpy on the CPU.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from qcompiler.backends.onnxruntime.export import OnnxExport
from qcompiler.errors import UnsupportedError

__all__ = ["OrtModule", "available_providers", "open_session"]

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
       torch.bool: np.bool_, torch.int8: np.int8, torch.uint8: np.uint8, torch.float64: np.float64}


def available_providers() -> list[str]:
    import onnxruntime as ort
    return ort.get_available_providers()


def open_session(path, providers: Sequence[str], options=None):
    """An InferenceSession on the first of ``providers`` this ONNX Runtime has (CPU always)."""
    import onnxruntime as ort
    have = set(ort.get_available_providers())
    use = [p for p in providers if p in have] or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in use:
        use.append("CPUExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=options, providers=use)


class OrtModule(nn.Module):
    """Runs ``exported`` in ONNX Runtime behind the model's call signature.

    ``eager`` (the compiled torch module) answers attribute look-ups the session cannot
    (``config``, ...). ``providers`` default to the export target's.
    """

    def __init__(self, exported: OnnxExport, providers: Sequence[str], eager: nn.Module | None = None,
                 session_options=None):
        super().__init__()
        self.exported = exported
        self.session = open_session(exported.path, providers, session_options)
        self.providers = self.session.get_providers()
        self._eager = [eager]  # a list: not a registered submodule (its weights are not ours)
        self._onnx_inputs = [i.name for i in self.session.get_inputs()]
        self._onnx_shapes = [list(i.shape) for i in self.session.get_inputs()]  # ints fixed, str/None dynamic
        self._onnx_outputs = [o.name for o in self.session.get_outputs()]
        self.generator_factory = None  # decoder LMs: builds an OrtGenerator (KV-cache export) on first generate()
        self._generator = None
        if self._onnx_inputs != exported.input_names:
            raise UnsupportedError(f"the ONNX file's inputs {self._onnx_inputs} are not the exported "
                                   f"{exported.input_names}", hint="export the model again")

    def _apply(self, fn, recurse=True):
        """``.half()`` / ``.to(dtype)`` / ``.float()``: the ONNX file's dtype is fixed at export, so a
        cast to another float dtype raises (before anything changes); device moves change nothing
        (the session's execution provider holds the weights; inputs go where it runs)."""
        have = self._float_dtype()
        if have is not None:
            want = fn(torch.empty(0, dtype=have)).dtype
            if want != have:
                raise UnsupportedError(
                    f"cannot cast a model running in ONNX Runtime from {str(have).removeprefix('torch.')} to "
                    f"{str(want).removeprefix('torch.')}: {self.exported.path} was exported in "
                    f"{str(have).removeprefix('torch.')}",
                    hint=f"cast the float model first, then compile it (model.to({want}); qcompiler.compile(model, "
                         "..., backend='onnxruntime')), or export the eager program again with "
                         "qcompiler.export_onnx")
        return self

    def _float_dtype(self) -> torch.dtype | None:
        """The float dtype of the file's float inputs, else of its first float output."""
        types = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
                 "tensor(double)": torch.float64}
        for value in list(self.session.get_inputs()) + list(self.session.get_outputs()):
            if value.type in types:
                return types[value.type]
        return None

    @property
    def on_cuda(self) -> bool:
        return self.providers[0] == "CUDAExecutionProvider"

    def forward(self, *args, **kwargs) -> Any:
        tensors = self.exported.call.flatten(args, kwargs)
        self._check_shapes(tensors)
        if self.on_cuda and all(t.is_cuda and t.dtype in _NP for t in tensors):
            outs = self._run_bound(tensors)
        else:
            device = tensors[0].device if tensors else torch.device("cpu")
            feeds = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(self._onnx_inputs, tensors)}
            outs = [torch.from_numpy(o).to(device) for o in self.session.run(self._onnx_outputs, feeds)]
        return self.exported.call.unflatten_output(outs)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """Greedy generation in ONNX Runtime with the KV cache (``generate.py``); the first call
        exports the model once more, with its cache as inputs and outputs (``kv_cache.py``)."""
        from qcompiler.backends.onnxruntime.generate import generate_kwargs
        if self.generator_factory is None:
            raise UnsupportedError("this ONNX Runtime model has no KV-cache graph to generate with",
                                   hint="generate() in ONNX Runtime takes decoder-only LMs; "
                                        "qm.program.root.generate(...) runs the eager compiled model")
        options = generate_kwargs(self._eager[0], input_ids, kwargs)
        if self._generator is None:
            self._generator = self.generator_factory()
        return self._generator.generate(input_ids, **options)

    def _check_shapes(self, tensors: list[torch.Tensor]) -> None:
        """A clear error, not ONNX Runtime's, for an input whose rank or fixed sizes the file cannot take."""
        for name, want, t in zip(self._onnx_inputs, self._onnx_shapes, tensors):
            if len(want) != t.dim() or any(isinstance(w, int) and w != d for w, d in zip(want, t.shape)):
                shown = "[" + ", ".join(str(w) if isinstance(w, int) else "*" for w in want) + "]"
                raise UnsupportedError(f"input '{name}' has shape {list(t.shape)}; the ONNX file {self.exported.path} "
                                       f"takes {shown} (* = any size)",
                                       hint="the export fixes the rank (and the sizes it did not see vary): "
                                            "export or compile again with an example of this shape")

    def _run_bound(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        tensors = [t.contiguous() for t in tensors]  # kept alive until the run ends
        for name, t in zip(self._onnx_inputs, tensors):
            binding.bind_input(name, "cuda", t.device.index or 0, _NP[t.dtype], list(t.shape), t.data_ptr())
        device_id = tensors[0].device.index or 0
        for name in self._onnx_outputs:
            binding.bind_output(name, "cuda", device_id)
        self.session.run_with_iobinding(binding)
        outs = []
        for value in binding.get_outputs():
            try:
                outs.append(torch.from_dlpack(value))
            except Exception:  # noqa: BLE001 - an ORT build without DLPack: one device copy
                outs.append(torch.from_numpy(value.numpy()).to(tensors[0].device))
        return outs

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            eager = self.__dict__.get("_eager", [None])[0]
            if eager is None:
                raise
            return getattr(eager, name)
