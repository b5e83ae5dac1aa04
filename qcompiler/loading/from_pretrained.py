"""``qcompiler.from_pretrained``: quantize a Hugging Face checkpoint while streaming it from disk.

The model is built on ``meta``; the embeddings and norms come in first (small), then each decoder
block in turn is read from the shards (only its tensors), compiled on the calls it receives from
the blocks before it, and its float weights freed; the LM head last. Peak memory is the quantized
model plus one float block plus the calibration activations, on the device and on the host.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from qcompiler.calibration import CalibrationSet, as_call
from qcompiler.errors import ConfigError, UnsupportedError
from qcompiler.loading.block_stream import outer_linear_paths, record_calls, run_blocks
from qcompiler.loading.checkpoint_reader import CheckpointReader
from qcompiler.loading.errors import CheckpointError, DeviceMemoryError
from qcompiler.loading.model_assembly import assemble
from qcompiler.loading.placement import SingleDevice
from qcompiler.loading.skeleton import TensorSlots, build_skeleton, find_blocks, materialize, meta_tensors
from qcompiler.loading.unit_compile import UnitPlan, compile_unit
from qcompiler.memory_usage import PeakMemory, release_host_memory

__all__ = ["from_pretrained", "default_example"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def default_example(config) -> tuple[tuple, dict]:
    """A short token sequence: enough to capture a weight-only model (its values do not matter)."""
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise ConfigError("this model has no vocab_size to make an example input from",
                          hint="pass example_inputs=... (a call the model accepts)")
    return (torch.arange(8).remainder(vocab).unsqueeze(0),), {}


def _check_device_memory(reader: CheckpointReader, slots: TensorSlots, groups: list[list[str]],
                         dtype: torch.dtype, device: torch.device, max_memory: int | None, prefix: str) -> None:
    """The largest block's float weights, twice (float + its quantized copy while both live), must fit."""
    if device.type != "cuda" and max_memory is None:
        return
    sizes = [reader.nbytes([slots.stored_name(k, reader) for k in keys], dtype) for keys in groups]
    if not sizes:
        return
    i = max(range(len(sizes)), key=sizes.__getitem__)
    need = 2 * sizes[i]
    free = max_memory if max_memory is not None else torch.cuda.mem_get_info(device)[0]
    if need > free:
        raise DeviceMemoryError(
            f"{device} has {free / 2**30:.2f} GiB free; quantizing block {prefix}.{i} needs about "
            f"{need / 2**30:.2f} GiB ({sizes[i] / 2**30:.2f} GiB of float weights + room for the quantized copy)",
            hint="free device memory, use a smaller dtype, or place blocks on other devices")


def from_pretrained(path: str | os.PathLike, scheme: str = "int8-outlier",
                    calibration_data: Iterable[Any] | None = None, *, example_inputs: Any = None,
                    device: str | torch.device | None = None, dtype: torch.dtype = torch.float16,
                    backend: str = "eager", capture: str = "export", calibrate_on: str = "quantized",
                    max_calibration_batches: int | None = None, max_memory: int | dict | None = None,
                    device_map: str | dict | None = None, offload_folder: str | os.PathLike | None = None,
                    progress: bool = True, verify: bool = False, allow_fallback: bool = False,
                    **options: Any):
    """Quantize the Hugging Face checkpoint at ``path`` block by block, never holding its float weights.

    >>> qm = qcompiler.from_pretrained("llama-dir", scheme="int8-outlier", calibration_data=batches,
    ...                                device="cuda", dtype=torch.float16)
    >>> qcompiler.save(qm, "llama-int8")

    ``path`` holds config.json and safetensors shards (as ``save_pretrained`` writes; pickle
    ``.bin`` files are read with ``weights_only=True``). Weight-only schemes need no calibration
    data: ``example_inputs`` (default: 8 token ids) is enough. ``calibrate_on="float"`` feeds
    each block the float model's activations instead of the quantized ones (see
    :mod:`qcompiler.loading.block_stream`). ``max_memory`` caps the device bytes one block may
    take (default: what CUDA reports free). Scheme options go in ``options``. The report
    (``qm.report().memory``) holds the model's bytes and this call's peak device/host memory.

    ``device_map="auto"`` or ``{module_path: device}`` (accelerate's, with ``max_memory`` as a dict
    ``{0: "20GiB", "cpu": "60GiB"}`` and ``offload_folder`` for ``"disk"``) spreads the blocks over
    several devices instead of ``device``: each block is quantized where it will run and the model
    is dispatched with accelerate hooks (see :mod:`qcompiler.loading.device_map`).
    """
    from qcompiler.schemes import get_scheme

    if calibrate_on not in ("quantized", "float"):
        raise ConfigError(f"calibrate_on={calibrate_on!r}", hint="use 'quantized' or 'float'")
    if dtype not in _DTYPES:
        raise UnsupportedError(f"dtype {dtype} cannot be quantized by scheme {scheme!r}",
                               hint="load in torch.float16, torch.bfloat16 or torch.float32")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    sch = get_scheme(scheme)
    sch.make_config(dict(options))  # unknown options fail before any file is read
    calib = CalibrationSet.from_user(calibration_data, max_items=max_calibration_batches)
    if sch.needs_calibration and calib is None:
        raise ConfigError(f"scheme {scheme!r} needs calibration_data", hint="pass calibration_data=[batch, ...]")
    root = Path(path)
    reader = CheckpointReader(root)
    if device_map is not None:  # where each block goes: qcompiler.loading.placement
        from qcompiler.loading.mapped_stream import placement_for
        if device is not None:
            raise ConfigError("from_pretrained got both device= and device_map=", hint="pass one of them")
        placement, dev, max_memory = placement_for(device_map, max_memory, offload_folder, scheme, dtype)
    else:
        placement = SingleDevice(dev)
    with PeakMemory(dev) as peak:
        model = build_skeleton(root, dtype)
        calls = calib.calls if calib is not None else [as_call(example_inputs) if example_inputs is not None
                                                       else default_example(model.config)]
        qm = _stream(model, reader, calls, scheme, dict(options), dtype, dev, backend=backend, capture=capture,
                     calibrated=calib is not None, calibrate_on=calibrate_on, progress=progress, verify=verify,
                     allow_fallback=allow_fallback, max_memory=max_memory, placement=placement)
    if device_map is not None:
        qm.report().notes.append(f"placed with device_map ({placement.plan.describe()})")
    mem = qm.report().memory
    mem.peak_device_bytes, mem.peak_host_bytes, mem.host_bytes_at_start = peak.device_bytes, peak.host_bytes, \
        peak.host_start
    reader.close()
    return qm


def _stream(model: nn.Module, reader: CheckpointReader, calls, scheme: str, options: dict, dtype: torch.dtype,
            dev: torch.device, *, backend: str, capture: str, calibrated: bool, calibrate_on: str, progress: bool,
            verify: bool, allow_fallback: bool, max_memory: int | None, placement=None):
    placement = placement if placement is not None else SingleDevice(dev)
    slots = TensorSlots(model)
    slots.check_against(reader)
    found = find_blocks(model)
    if found is None:
        raise CheckpointError(f"{type(model).__name__} has no list of blocks to stream",
                              hint="load it with transformers and use qcompiler.compile(model, inplace=True)")
    prefix, blocks = found
    inside = lambda key, i: key.startswith(f"{prefix}.{i}.")  # noqa: E731
    block_keys = [[k for k in slots.groups if inside(k, i)] for i in range(len(blocks))]
    in_blocks = {k for keys in block_keys for k in keys}
    heads = outer_linear_paths(model, prefix)
    head_keys = {k for k in slots.groups if k not in in_blocks and any(k.startswith(h + ".") for h in heads)
                 and not any(n in in_blocks for n in slots.groups[k])}
    # a head tied to the embeddings is already there once the embeddings are
    tied_to_outer = {k for k in head_keys if any(not any(n.startswith(h + ".") for h in heads)
                                                 for n in slots.groups[k])}
    head_keys -= tied_to_outer
    if hasattr(placement, "bind"):  # a device map: blocks and heads are known now
        placement.bind(model, [f"{prefix}.{i}" for i in range(len(blocks))] + heads)
        placement.check_memory(reader, slots, block_keys, dtype, prefix)
    else:
        _check_device_memory(reader, slots, block_keys, dtype, dev, max_memory, prefix)
    bytes_before = reader.nbytes([slots.stored_name(k, reader) for k in slots.groups], dtype)

    def get(key: str) -> torch.Tensor:
        return reader.get(slots.stored_name(key, reader), dtype=dtype, device=placement.device_for(key))

    materialize(slots, [k for k in slots.groups if k not in in_blocks and k not in head_keys], get)
    reader.close()
    for name, b in list(model.named_buffers()):  # computed buffers (rotary) go along
        if b.device != placement.device_for(name) and b.device.type != "meta":
            owner_path, _, attr = name.rpartition(".")
            model.get_submodule(owner_path)._buffers[attr] = b.to(placement.device_for(name))
    placement.outer_done(model)
    plan = UnitPlan(scheme, options, backend, capture, calibrated, False, verify, allow_fallback)
    first = record_calls(model, blocks[0], calls, device=placement.input_device)

    def bring_in(i: int) -> None:
        release_host_memory()  # what the last block freed goes back to the OS before the next comes in
        materialize(slots, block_keys[i], get)
        reader.close()  # unmap the shard: the pages read stay in the page cache, not in our RSS

    units, float_last = run_blocks(blocks, prefix, first, plan, bring_in=bring_in, calibrate_on=calibrate_on,
                                   progress=progress, place=lambda i, c: placement.place(f"{prefix}.{i}", c),
                                   finished=lambda i: placement.done(model, f"{prefix}.{i}"))
    release_host_memory()
    materialize(slots, sorted(head_keys), get)
    reader.close()
    for head in heads:
        module = model.get_submodule(head)
        head_calls = record_calls(model, module, calls, device=placement.input_device,
                                  override=(blocks[-1], float_last) if float_last is not None else None)
        release_host_memory()
        res = compile_unit(module, head, placement.place(head, head_calls), plan)
        if res.root is not module:
            parent_path, _, attr = head.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, attr, res.root)
        placement.done(model, head)
        units.append(res)
    left = [n for n in meta_tensors(model) if not placement.is_offloaded(n)]
    if left:
        raise CheckpointError(f"tensors left without values after loading: {left[:4]}",
                              hint="this model's layout is not one from_pretrained streams; file an issue")
    model = placement.finish(model)
    return assemble(model, units, scheme=scheme, options=options, backend=backend, capture=capture,
                    example=calls[0], bytes_before=bytes_before, device=dev)
