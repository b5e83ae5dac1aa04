"""compressed-tensors checkpoints (llm-compressor, vLLM): ``pack-quantized`` and ``int-quantized``.

``quantization_config`` (``quant_method: compressed-tensors``) holds ``config_groups``, each a
scheme (``targets``, ``weights``, ``input_activations``, optional ``format``), plus ``ignore`` and a
model-wide ``format``; the ``compressed-tensors`` library parses it and matches layers to schemes.
Per quantized linear (signed codes ``q``, ``b`` bits, zero point ``zp``, 0 when symmetric):

* ``pack-quantized``: ``weight_packed`` int32 [N, ceil(K b / 32)] (``q + 2^(b-1)`` packed along K,
  lowest bits first), ``weight_shape``, ``weight_scale`` [N, G], ``weight_zero_point`` packed along N
  (asymmetric only), optional ``weight_g_idx`` (act order);
* ``int-quantized``: ``weight`` int8 [N, K], ``weight_scale``, ``weight_zero_point`` (asymmetric).

``W = (q - zp) * scale``; qcompiler's unsigned codes are ``q + 2^(b-1)`` and zero points
``zp + 2^(b-1)`` (the symmetric default 2^(b-1) when zp is absent). Weight-only schemes run on
``weight_only_linear``; int8 weights with dynamic per-token int8 activations (W8A8) on
``int8_linear`` with qcompiler's row-wise activation quantization (absmax / 127, as vLLM's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcompiler.formats.checkpoint_files import CheckpointTensors
from qcompiler.formats.errors import CheckpointFormatError, UnsupportedFormatError
from qcompiler.formats.layer_weights import Int8Weights, LayerWeights, UIntWeights, act_order_permutation

__all__ = ["CompressedTensorsConfig"]

_READ_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")


def _library():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise UnsupportedFormatError("reading compressed-tensors checkpoints needs the compressed-tensors package",
                                     hint="pip install compressed-tensors") from None
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import is_match
    return QuantizationConfig, is_match


@dataclass(frozen=True)
class CompressedTensorsConfig:
    config: Any          # compressed_tensors.quantization.QuantizationConfig
    where: str

    name = "compressed-tensors"

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> "CompressedTensorsConfig":
        QuantizationConfig, _ = _library()
        try:
            parsed = QuantizationConfig.model_validate(cfg)
        except Exception as e:  # noqa: BLE001 - pydantic's ValidationError and the library's ValueErrors
            raise CheckpointFormatError(f"{where}: compressed-tensors quantization_config is invalid: {e}") from None
        status = str(getattr(parsed.quantization_status, "value", parsed.quantization_status))
        if status != "compressed":
            raise UnsupportedFormatError(f"{where}: quantization_status is {status!r}; only 'compressed' checkpoints "
                                         "store quantized tensors")
        return cls(parsed, where)

    def scheme_for(self, name: str, module: nn.Module):
        _, is_match = _library()
        for scheme in self.config.config_groups.values():
            if is_match(name, module, scheme.targets, self.config.ignore or ()):
                return scheme
        return None

    def claims(self, tensors: CheckpointTensors, name: str) -> bool:
        return f"{name}.weight_packed" in tensors or f"{name}.weight_scale" in tensors

    def stored_tensors(self, name: str) -> tuple[str, ...]:
        return tuple(f"{name}.{s}" for s in ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point",
                                            "weight_g_idx", "weight"))

    def read_linear(self, tensors: CheckpointTensors, name: str, module: nn.Linear) -> LayerWeights:
        n, k = module.out_features, module.in_features
        scheme = self.scheme_for(name, module)
        if scheme is None or scheme.weights is None:
            raise CheckpointFormatError(f"tensor '{name}.weight_scale' is stored but no config group of "
                                        f"{self.where} quantizes layer '{name}'")
        fmt = str(getattr(scheme.format, "value", scheme.format) or self.config.format)
        w, act = scheme.weights, scheme.input_activations
        if fmt not in _READ_FORMATS:
            raise UnsupportedFormatError(f"layer '{name}': compressed-tensors format {fmt!r} is not read",
                                         hint=f"qcompiler reads {', '.join(_READ_FORMATS)}")
        if str(w.type.value if hasattr(w.type, "value") else w.type) != "int" or w.num_bits not in (4, 8):
            raise UnsupportedFormatError(f"layer '{name}': weights of type {w.type} with {w.num_bits} bits are not "
                                         "read", hint="qcompiler reads int4 and int8 weights")
        strategy = str(getattr(w.strategy, "value", w.strategy))
        if strategy not in ("channel", "group", "tensor"):
            raise UnsupportedFormatError(f"layer '{name}': weight strategy {strategy!r} is not read")
        g = w.group_size if strategy == "group" else k
        groups = -(-k // g)
        q = self._signed_codes(tensors, name, fmt, w.num_bits, n, k)
        scale = tensors.get(f"{name}.weight_scale").float()
        if strategy == "tensor" and scale.numel() == 1:
            scale = scale.reshape(1, 1).expand(n, 1)
        if tuple(scale.shape) != (n, groups):
            raise CheckpointFormatError(f"tensor '{name}.weight_scale' has shape {list(scale.shape)}, expected "
                                        f"[{n}, {groups}] ({strategy}, group_size={w.group_size})")
        zp = None if w.symmetric else self._zero_points(tensors, name, fmt, w.num_bits, n, groups)
        if act is not None:
            return self._w8a8(name, q, scale, zp, act, strategy, w.num_bits)
        perm = None
        if f"{name}.weight_g_idx" in tensors:
            try:
                perm = act_order_permutation(tensors.get(f"{name}.weight_g_idx"), g, groups)
            except ValueError as e:
                raise CheckpointFormatError(f"tensor '{name}.weight_g_idx': {e}") from None
        off = 2 ** (w.num_bits - 1)
        codes = (q.to(torch.int16) + off)
        if perm is not None:
            codes = codes[:, perm]
        zeros = None if zp is None else (zp.to(torch.int16) + off).to(torch.uint8)
        return UIntWeights(codes.to(torch.uint8).contiguous(), scale.contiguous(), zeros, w.num_bits,
                           0 if g >= k else g, perm)

    @staticmethod
    def _signed_codes(tensors, name, fmt, bits, n, k) -> torch.Tensor:
        if fmt == "pack-quantized":
            from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
            key = f"{name}.weight_packed"
            want = (n, -(-k * bits // 32))
            if key not in tensors or tensors.shape(key) != want:
                got = list(tensors.shape(key)) if key in tensors else "missing"
                raise CheckpointFormatError(f"tensor '{key}' is {got}, expected int32 [N, ceil(K*bits/32)] = "
                                            f"{list(want)} (num_bits={bits})")
            return unpack_from_int32(tensors.get(key), bits, torch.Size((n, k)))
        key = f"{name}.weight"
        t = tensors.get(key)
        if t.dtype != torch.int8 or tuple(t.shape) != (n, k):
            raise CheckpointFormatError(f"tensor '{key}' is {t.dtype} {list(t.shape)}, expected int8 [{n}, {k}]")
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
            raise CheckpointFormatError(f"tensor '{key}' holds values outside {lo}..{hi} (num_bits={bits})")
        return t

    @staticmethod
    def _zero_points(tensors, name, fmt, bits, n, groups) -> torch.Tensor:
        key = f"{name}.weight_zero_point"
        if key not in tensors:
            raise CheckpointFormatError(f"tensor '{key}' is missing; the scheme is asymmetric (symmetric=false)")
        t = tensors.get(key)
        if fmt == "pack-quantized" and t.dtype == torch.int32:
            from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
            t = unpack_from_int32(t, bits, torch.Size((n, groups)), packed_dim=0)
        if tuple(t.shape) != (n, groups):
            raise CheckpointFormatError(f"tensor '{key}' has shape {list(t.shape)}, expected [{n}, {groups}]")
        return t

    @staticmethod
    def _w8a8(name, q, scale, zp, act, strategy, bits) -> Int8Weights:
        a_strategy = str(getattr(act.strategy, "value", act.strategy))
        ok = (bits == 8 and zp is None and strategy == "channel" and act.num_bits == 8 and act.symmetric
              and act.dynamic is True and a_strategy == "token")
        if not ok:
            raise UnsupportedFormatError(
                f"layer '{name}': activation scheme {act.num_bits}-bit {a_strategy} "
                f"{'dynamic' if act.dynamic else 'static'} with {bits}-bit {strategy} weights is not read",
                hint="qcompiler runs int8 per-channel symmetric weights with dynamic per-token int8 activations "
                     "(W8A8), or weight-only schemes")
        return Int8Weights(q.to(torch.int8).contiguous(), scale[:, 0] * 127.0)
