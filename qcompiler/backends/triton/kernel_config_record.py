"""The launch configs the Triton autotuner chose in this process, as JSON, and back.

Why: a :class:`~qcompiler.backends.triton._config.TunedLauncher` autotunes each key on its first
call by timing the candidates, so two processes can pick different configs for the same layer (the
weight-only GEMV's SPLIT_K, say: its partial sums are added in a fixed order, so one config gives
the same bits every run, another config other bits). ``qcompiler.save`` of a triton-backend model
keeps what was chosen (:data:`RECORD_FILE`) and ``qcompiler.load`` puts it back before any kernel
runs, so the loaded model computes bit for bit what the saved one did - on the same card and
triton version. Elsewhere the record is not used: the kernels re-tune.

Every ``TunedLauncher`` made with a ``name`` registers here (``"weight_only_gemv.fma"``, ...).
A record (:func:`encode_record`) maps launcher names to ``[key, config]`` pairs, both in the tagged
JSON of :func:`qcompiler.serialize.values.encode_arg` (tuples, dtypes, bools, ints, floats keep
their types)::

    {"format": "qcompiler.kernel_configs", "version": 1, "device": "NVIDIA H200", "triton": "3.6.0",
     "launchers": {"weight_only_gemv_row": [[{"tuple": [{"dtype": "float16"}, false, ...]},
                                             {"dict": [["BLOCK_N", 64], ["SPLIT_K", 2], ...]}]]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import torch

from qcompiler.serialize.values import decode_arg, encode_arg

__all__ = ["RECORD_FILE", "RECORD_FORMAT", "RECORD_VERSION", "KernelConfigRecord", "RestoreResult",
           "register_launcher", "launchers", "snapshot", "restore", "encode_record", "decode_record",
           "card", "collect_for_save", "restore_for_load"]

RECORD_FILE = "kernel_configs.json"
RECORD_FORMAT = "qcompiler.kernel_configs"
RECORD_VERSION = 1

Configs = dict[str, dict[Hashable, dict[str, Any]]]  # launcher name -> key -> launch kwargs

_LAUNCHERS: dict[str, Any] = {}


def _module_of(launcher: Any) -> str:
    fn = getattr(launcher.jit, "fn", None)
    return getattr(fn, "__module__", "") or ""


def register_launcher(name: str, launcher: Any) -> None:
    """Makes ``launcher``'s chosen configs part of every saved record, under ``name``.

    A second launcher of the same name from the same module replaces the first (a reloaded module);
    one from another module is not registered, so a copy of a kernel file executed under another
    module name (the benchmarks' "before" kernels) never stands in for the package's."""
    old = _LAUNCHERS.get(name)
    if old is not None and old is not launcher and _module_of(old) != _module_of(launcher):
        return
    _LAUNCHERS[name] = launcher


def launchers() -> dict[str, Any]:
    """Name -> registered launcher (the kernel modules imported so far)."""
    return dict(_LAUNCHERS)


def snapshot() -> Configs:
    """Every registered launcher's chosen configs (copies); launchers that chose none are left out."""
    return {name: {key: dict(meta) for key, meta in launcher.meta.items()}
            for name, launcher in sorted(_LAUNCHERS.items()) if launcher.meta}


@dataclass
class RestoreResult:
    restored: int = 0                                    # keys filled from the record
    same: int = 0                                        # keys this process had already chosen alike
    kept: int = 0                                        # keys this process had chosen differently: kept
    foreign: int = 0                                     # configs not among this process's candidates: re-tune
    unknown: list[str] = field(default_factory=list)     # launcher names no kernel module registers


def restore(configs: Configs) -> RestoreResult:
    """Fills each launcher's configs for the keys it has not chosen yet in this process. A key it
    already chose differently keeps this process's choice (kernels may have run with it) and is
    counted in ``kept``. A config that is none of the launcher's candidates here (another
    ``QCOMPILER_TRITON_AUTOTUNE``, another config list) is not used (``foreign``): the launchers
    size their split-K workspaces by their own candidates."""
    _import_kernels()
    out = RestoreResult()
    for name, entries in configs.items():
        launcher = _LAUNCHERS.get(name)
        if launcher is None:
            out.unknown.append(name)
            continue
        for key, meta in entries.items():
            have = launcher.meta.get(key)
            if have is None and not _is_candidate(launcher, meta):
                out.foreign += 1
            elif have is None:
                launcher.meta[key] = dict(meta)
                out.restored += 1
            elif have == meta:
                out.same += 1
            else:
                out.kept += 1
    return out


def _is_candidate(launcher: Any, meta: dict[str, Any]) -> bool:
    """Whether ``meta`` is one of ``launcher``'s autotune configs (plus heuristic values)."""
    tuner = getattr(launcher, "autotuner", None)
    if tuner is None:
        return True  # heuristics only: nothing was timed
    return any(all(k in meta and meta[k] == v for k, v in c.all_kwargs().items()) for c in tuner.configs)


def _import_kernels() -> None:
    import qcompiler.backends.triton.ops  # noqa: F401 - imports every kernel module, so every launcher is registered


@dataclass(frozen=True)
class KernelConfigRecord:
    device: str      # torch.cuda.get_device_name() of the card the configs were tuned on
    triton: str      # triton.__version__
    configs: Configs


def encode_record(record: KernelConfigRecord) -> dict[str, Any]:
    """``record`` as JSON (keys and configs in tagged form: no type is lost)."""
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "device": record.device, "triton": record.triton,
            "launchers": {name: [[encode_arg(key), encode_arg(dict(meta))] for key, meta in entries.items()]
                          for name, entries in record.configs.items()}}


def decode_record(doc: Any) -> KernelConfigRecord:
    """The inverse of :func:`encode_record`; ``ValueError`` naming what is wrong with ``doc``."""
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a kernel-config record (format {doc.get('format') if isinstance(doc, dict) else doc!r:.40})")
    if doc.get("version") != RECORD_VERSION:
        raise ValueError(f"kernel-config record version {doc.get('version')!r}, this qcompiler reads {RECORD_VERSION}")
    device, version, named = doc.get("device"), doc.get("triton"), doc.get("launchers")
    if not isinstance(device, str) or not isinstance(version, str) or not isinstance(named, dict):
        raise ValueError("the record lacks its 'device', 'triton' or 'launchers' entry")
    configs: Configs = {}
    for name, entries in named.items():
        if not isinstance(entries, list):
            raise ValueError(f"launcher {name!r}: expected a list of [key, config] pairs")
        got: dict[Hashable, dict[str, Any]] = {}
        for pair in entries:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"launcher {name!r}: {pair!r:.60} is not a [key, config] pair")
            key, meta = decode_arg(pair[0]), decode_arg(pair[1])
            if not isinstance(key, tuple) or not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
                raise ValueError(f"launcher {name!r}: key {key!r:.60} / config {meta!r:.60} have the wrong types")
            hash(key)  # TypeError for a list inside: caught by the caller with the file name
            got[key] = meta
        configs[str(name)] = got
    return KernelConfigRecord(device, version, configs)


# ----------------------------------------------------------------------------- the backend's hooks

def card(device: torch.device | None) -> str | None:
    """The name of the CUDA card the kernels run on for ``device`` (the current one unless
    ``device`` is a CUDA device); None without a CUDA GPU or under the Triton interpreter, where
    configs are not tuned (one config per kernel)."""
    from qcompiler.backends.triton._config import interpreting

    if interpreting() or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else None)


def _triton_version() -> str:
    import triton
    return triton.__version__


def collect_for_save(qm: Any) -> dict[str, Any] | None:
    """The record ``qcompiler.save`` writes for a triton-backend model: this process's chosen
    configs (of every registered launcher: keys of other models too), with the card and triton
    version. None without a CUDA card (see :func:`card`) or when no launcher has chosen anything."""
    device = next((t.device for t in qm.parameters()), None)
    name, configs = card(device), snapshot()
    if name is None or not configs:
        return None
    return encode_record(KernelConfigRecord(name, _triton_version(), configs))


def restore_for_load(doc: Any, device: torch.device | None) -> str | None:
    """Puts a saved record's configs in place (``load`` calls it before any kernel runs). Returns a
    note for the report when the configs are (partly) not used: another card or triton version, no
    GPU, or keys this process had already tuned otherwise. Malformed ``doc``: ``ValueError``."""
    record = decode_record(doc)
    here = card(device)
    if here is None:
        return (f"kernel configs: saved on {record.device}, not restored here (no CUDA GPU, or the "
                f"Triton interpreter)")
    version = _triton_version()
    if (here, version) != (record.device, record.triton):
        return (f"kernel configs: saved on {record.device} with triton {record.triton}, this is {here} with "
                f"triton {version}: not restored, the kernels re-tune (outputs may differ from the saved "
                f"model's in the last bits)")
    got = restore(record.configs)
    parts = []
    if got.kept:
        parts.append(f"{got.kept} key(s) this process had already tuned otherwise kept their configs (outputs "
                     f"of those layers may differ from the saved model's in the last bits)")
    if got.foreign:
        parts.append(f"{got.foreign} config(s) are not among this process's candidates (QCOMPILER_TRITON_AUTOTUNE "
                     f"set otherwise?): those keys re-tune (outputs may differ in the last bits)")
    if got.unknown:
        parts.append(f"launchers {', '.join(got.unknown[:4])} no longer exist: their configs were dropped")
    return f"kernel configs: {got.restored} restored; " + "; ".join(parts) if parts else None
