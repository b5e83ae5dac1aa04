"""AWQ checkpoints in AutoAWQ's GEMM layout (``version: gemm``), 4 bits.

Per quantized linear ``<name>`` (K inputs, N outputs, groups of ``g``):

=============  ==================  ==================================================================
``.qweight``   int32 [K, N/8]      codes packed along N, 8 per word; nibble ``i`` of word ``j`` holds
                                   output column ``8 j + AWQ_ORDER[i]``, AWQ_ORDER = 0,2,4,6,1,3,5,7
``.qzeros``    int32 [K/g, N/8]    raw zero points (no -1), packed the same way
``.scales``    fp16  [K/g, N]
=============  ==================  ==================================================================

``W[n, k] = (q[k, n] - z[k // g, n]) * scales[k // g, n]`` (AutoAWQ ``WQLinear_GEMM.from_linear``;
GPTQModel's ``AwqGEMMQuantLinear`` uses the same order). The config is ``quantization_config``
(``quant_method: awq``, ``bits``, ``group_size``, ``zero_point``, ``version``) or AutoAWQ's
``quant_config.json`` (``w_bit``, ``q_group_size``). GEMV / GEMV-fast / Marlin layouts store the
weight in another arrangement and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qcompiler.formats.checkpoint_files import CheckpointTensors
from qcompiler.formats.errors import CheckpointFormatError, UnsupportedFormatError
from qcompiler.formats.gptq import _expect
from qcompiler.formats.int32_packing import AWQ_REVERSE_ORDER, unpack_int32
from qcompiler.formats.layer_weights import UIntWeights

__all__ = ["AWQConfig"]


def _awq_columns(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] in AWQ order -> int32 codes [R, N] in column order."""
    nib = unpack_int32(packed, 4, dim=1).reshape(packed.shape[0], -1, 8)   # [R, N/8, nibble]
    return nib[:, :, list(AWQ_REVERSE_ORDER)].reshape(packed.shape[0], -1)


@dataclass(frozen=True)
class AWQConfig:
    bits: int
    group_size: int      # -1: one group per output channel

    name = "awq"

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> "AWQConfig":
        version = str(cfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise UnsupportedFormatError(f"{where}: AWQ version {version!r} is not read (only the GEMM layout)",
                                         hint="GEMV and Marlin AWQ checkpoints pack the weight along another "
                                              "dim; re-export with version='gemm'")
        if not cfg.get("zero_point", True):
            raise UnsupportedFormatError(f"{where}: AWQ with zero_point=false is not read")
        bits = cfg.get("bits", cfg.get("w_bit"))
        group = cfg.get("group_size", cfg.get("q_group_size"))
        if bits != 4:
            raise UnsupportedFormatError(f"{where}: AWQ GEMM stores 4-bit codes, the config says bits={bits!r}")
        if not isinstance(group, int) or not (group > 0 or group == -1):
            raise CheckpointFormatError(f"{where}: AWQ group_size must be -1 (per channel) or > 0, got {group!r}")
        return cls(bits, group)

    def claims(self, tensors: CheckpointTensors, name: str) -> bool:
        return f"{name}.qweight" in tensors

    def stored_tensors(self, name: str) -> tuple[str, ...]:
        return tuple(f"{name}.{s}" for s in ("qweight", "qzeros", "scales"))

    def read_linear(self, tensors: CheckpointTensors, name: str, module: nn.Linear) -> UIntWeights:
        n, k = module.out_features, module.in_features
        g = k if self.group_size == -1 else self.group_size   # -1: one group per output channel
        groups = k // g
        shape = tensors.shape(f"{name}.qweight") if f"{name}.qweight" in tensors else None
        if shape != (k, n // 8) and shape == (n, k // 8):
            raise UnsupportedFormatError(f"tensor '{name}.qweight' has shape [N, K/8] = [{n}, {k // 8}]: the GEMV "
                                         f"layout, but the config says GEMM ([K, N/8] = [{k}, {n // 8}])")
        _expect(tensors, f"{name}.qweight", (k, n // 8), torch.int32, f"[K, N/8] = [{k}, {n}/8]", n % 8 == 0)
        _expect(tensors, f"{name}.qzeros", (groups, n // 8), torch.int32,
                f"[K/group_size, N/8] = [{k}/{g}, {n}/8] (group_size={g})", k % g == 0 and n % 8 == 0)
        _expect(tensors, f"{name}.scales", (groups, n), None, f"[K/group_size, N] = [{k}/{g}, {n}]", k % g == 0)
        q = _awq_columns(tensors.get(f"{name}.qweight"))      # [K, N]
        z = _awq_columns(tensors.get(f"{name}.qzeros"))       # [G, N]
        s = tensors.get(f"{name}.scales").float()
        return UIntWeights(q.t().to(torch.uint8).contiguous(), s.t().contiguous(), z.t().to(torch.uint8).contiguous(),
                           4, 0 if g >= k else g)
