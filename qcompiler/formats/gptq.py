"""GPTQ checkpoints in the AutoGPTQ / GPTQModel ``gptq`` (v1) layout.

Per quantized linear ``<name>`` (K inputs, N outputs, ``b`` bits, groups of ``g``, G = ceil(K / g)):

=================  =============  =====================================================================
``.qweight``       int32 [K*b/32, N]  codes packed along K, ``32 / b`` per word, the lowest bits first
``.qzeros``        int32 [G, N*b/32]  zero points packed along N the same way, stored as ``zero - 1``
``.scales``        fp16  [G, N]
``.g_idx``         int32 [K]          the group of each input dim (``k // g`` unless ``desc_act``)
``.bias``          [N], optional
=================  =============  =====================================================================

``W[n, k] = scales[g_idx[k], n] * (q[k, n] - (qzeros_unpacked[g_idx[k], n] + 1))`` (AutoGPTQ's
``QuantLinear.pack`` / ``forward``). The config is ``quantization_config`` in config.json
(``quant_method: gptq``) or ``quantize_config.json``: ``bits``, ``group_size`` (-1: per channel),
``desc_act``, ``sym``, ``checkpoint_format``. ``gptq_v2`` (zeros stored without the -1) and
Marlin-packed checkpoints are refused rather than read with the wrong convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qcompiler.formats.checkpoint_files import CheckpointTensors
from qcompiler.formats.errors import CheckpointFormatError, UnsupportedFormatError
from qcompiler.formats.int32_packing import unpack_int32
from qcompiler.formats.layer_weights import UIntWeights, act_order_permutation

__all__ = ["GPTQConfig"]

_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class GPTQConfig:
    bits: int
    group_size: int      # -1: one group per output channel
    desc_act: bool
    sym: bool

    name = "gptq"

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> "GPTQConfig":
        fmt = str(cfg.get("checkpoint_format", "gptq")).lower()
        if fmt != "gptq" or cfg.get("is_marlin_format"):
            variant = "marlin" if cfg.get("is_marlin_format") else fmt
            raise UnsupportedFormatError(
                f"{where}: GPTQ checkpoint_format {variant!r} is not read (only the v1 'gptq' layout)",
                hint="gptq_v2 stores zero points without GPTQ v1's -1; convert the checkpoint to "
                     "checkpoint_format='gptq' with GPTQModel, or re-quantize")
        try:
            bits, group = int(cfg["bits"]), int(cfg.get("group_size", -1))
        except (KeyError, TypeError, ValueError):
            raise CheckpointFormatError(f"{where}: GPTQ config needs an integer 'bits', got {cfg.get('bits')!r}") \
                from None
        if bits not in (4, 8):
            raise UnsupportedFormatError(f"{where}: GPTQ bits={bits} is not read",
                                         hint="qcompiler's weight-only ops store 4- and 8-bit codes")
        if group == 0 or group < -1:
            raise CheckpointFormatError(f"{where}: GPTQ group_size must be -1 or > 0, got {group}")
        return cls(bits, group, bool(cfg.get("desc_act", False)), bool(cfg.get("sym", True)))

    def claims(self, tensors: CheckpointTensors, name: str) -> bool:
        return f"{name}.qweight" in tensors

    def stored_tensors(self, name: str) -> tuple[str, ...]:
        return tuple(f"{name}.{s}" for s in _SUFFIXES)

    def read_linear(self, tensors: CheckpointTensors, name: str, module: nn.Linear) -> UIntWeights:
        n, k = module.out_features, module.in_features
        b = self.bits
        per = 32 // b
        g = k if self.group_size == -1 else self.group_size
        groups = -(-k // g)
        _expect(tensors, f"{name}.qweight", (k // per, n), torch.int32,
                f"[K*bits/32, N] = [{k}*{b}/32, {n}] (bits={b} from the quantization config)", k % per == 0)
        _expect(tensors, f"{name}.qzeros", (groups, n // per), torch.int32,
                f"[ceil(K/group_size), N*bits/32] = [{groups}, {n}*{b}/32] (group_size={self.group_size}, bits={b})",
                n % per == 0)
        _expect(tensors, f"{name}.scales", (groups, n), None,
                f"[ceil(K/group_size), N] = [{groups}, {n}] (group_size={self.group_size})")
        q = unpack_int32(tensors.get(f"{name}.qweight"), b, dim=0)           # [K, N]
        z = unpack_int32(tensors.get(f"{name}.qzeros"), b, dim=1) + 1        # [G, N], v1 stores z - 1
        s = tensors.get(f"{name}.scales").float()                            # [G, N]
        if f"{name}.g_idx" in tensors:
            g_idx = tensors.get(f"{name}.g_idx")
            if tuple(g_idx.shape) != (k,):
                raise CheckpointFormatError(f"tensor '{name}.g_idx' has shape {list(g_idx.shape)}, expected [{k}]")
        elif self.desc_act:
            raise CheckpointFormatError(f"tensor '{name}.g_idx' is missing; desc_act=true needs it",
                                        hint="an act-order checkpoint stores each input dim's group in g_idx")
        else:
            g_idx = torch.arange(k) // g
        try:
            perm = act_order_permutation(g_idx, g, groups)
        except ValueError as e:
            raise CheckpointFormatError(f"tensor '{name}.g_idx': {e}") from None
        codes = q.t()                                                        # [N, K]
        if perm is not None:
            codes = codes[:, perm]
        zeros = z.t().contiguous()
        if int(zeros.max()) > 255:
            raise CheckpointFormatError(f"tensor '{name}.qzeros' holds zero points above 255")
        sym_zero = 2 ** (b - 1)
        symmetric = bool((zeros == sym_zero).all())
        return UIntWeights(codes.to(torch.uint8).contiguous(), s.t().contiguous(),
                           None if symmetric else zeros.to(torch.uint8), b, 0 if g >= k else g, perm)


def _expect(tensors: CheckpointTensors, key: str, shape: tuple, dtype, what: str, divisible: bool = True) -> None:
    if key not in tensors:
        raise CheckpointFormatError(f"tensor '{key}' is missing, expected {what}")
    got = tensors.shape(key)
    if not divisible or got != shape:
        raise CheckpointFormatError(f"tensor '{key}' has shape {list(got)}, expected {what}",
                                    hint="the checkpoint's quantization_config (bits, group_size) does not match "
                                         "its tensors")
    if dtype is not None:
        t = tensors.get(key)
        if t.dtype != dtype:
            raise CheckpointFormatError(f"tensor '{key}' has dtype {t.dtype}, expected {dtype}")
