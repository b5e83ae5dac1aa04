"""``load(dir)`` without the float model: a saved Hugging Face model rebuilt from its directory alone.

The skeleton comes from ``config.json`` on ``meta`` (no float weights are ever made); each saved
region's graph is decoded as is (no re-tracing: the regions were frozen to plain positional
graphs by compile, and their output spec is in the file) around its saved tensors, read by
safetensors straight onto the device, and put in the skeleton where the captured submodule was;
the state outside the regions (embeddings, norms) comes from the file too. Outputs are bit for
bit those of the model that was saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from qcompiler.serialize.backend_state import restore_state
from qcompiler.serialize.errors import IntegrityError, LoadError
from qcompiler.serialize.graph_codec import decode_graph
from qcompiler.serialize.tensors import TensorEntry, region_tensors, set_tensor
from qcompiler.serialize.values import decode_arg

__all__ = ["load_standalone", "region_module", "record_of"]


def _ensure_owner(root: nn.Module, name: str) -> None:
    mod = root
    for part in name.split(".")[:-1]:
        child = mod._modules.get(part)
        if child is None:
            child = nn.Module()
            mod.add_module(part, child)
        mod = child


def region_module(saved: dict[str, Any], skeleton: nn.Module, tensors: dict[str, torch.Tensor],
                   params: dict[int, nn.Parameter]):
    """The frozen region saved as ``saved``, around ``tensors`` (any device, ``meta`` included), for
    the submodule of ``skeleton`` it replaces."""
    from torch.utils._pytree import treespec_loads

    from qcompiler.capture import CaptureMethod, RegionModule

    label = saved["path"] or "<model>"
    calling = saved.get("calling")
    if not calling or calling.get("method") != CaptureMethod.EXPORT.value:
        raise LoadError(f"region '{label}' was saved without its calling convention (or captured with "
                        f"symbolic_trace)", hint="load it with the float model: qcompiler.load(dir, model)")
    graph = decode_graph(saved["graph"], None)
    holder = nn.Module()
    entries = {t: (e["key"], TensorEntry(e["kind"], bool(e.get("requires_grad", False))))
               for t, e in saved["tensors"].items()}
    for target, (key, entry) in entries.items():
        if key not in tensors:
            raise IntegrityError(f"region '{label}': tensor {key!r} is not in the saved files")
        _ensure_owner(holder, target)
        set_tensor(holder, target, tensors[key], entry, params)
    for node in graph.nodes:
        if node.op == "call_module":
            raise LoadError(f"region '{label}' calls submodule {node.target!r}",
                            hint="load it with the float model: qcompiler.load(dir, model)")
        if node.op == "get_attr" and node.target not in entries:
            raise IntegrityError(f"region '{label}': node '{node.name}' reads {node.target!r}, which was not saved")
    gm = fx.GraphModule(holder, graph)
    for target, (key, entry) in entries.items():  # the kinds (parameter / buffer / attribute) as saved
        _ensure_owner(gm, target)
        set_tensor(gm, target, tensors[key], entry, params)
    if set(region_tensors(gm)) != set(entries):
        raise LoadError(f"region '{label}': rebuilt tensors differ from the saved ones")
    try:
        original = skeleton.get_submodule(saved["path"]) if saved["path"] else skeleton
    except AttributeError:
        raise LoadError(f"config.json's model has no submodule '{label}'",
                        hint="config.json does not belong to this saved model") from None
    region = RegionModule(gm, original, saved["path"], decode_arg(saved["consts"]), CaptureMethod.EXPORT,
                          list(calling["names"]))
    region._out_spec = treespec_loads(calling["out_spec"]) if calling.get("out_spec") else None
    if region._out_spec is None:
        raise LoadError(f"region '{label}' was saved before compile froze it",
                        hint="load it with the float model: qcompiler.load(dir, model)")
    return region


def _build_skeleton(root: Path) -> nn.Module:
    from transformers import AutoConfig

    from qcompiler.loading.skeleton import build_skeleton

    config = AutoConfig.from_pretrained(str(root))
    quant = getattr(config, "quantization_config", None)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # transformers must not look for a quantizer of its own
    # newer transformers call it `dtype`, and reading `torch_dtype` there warns that it is deprecated
    dtype = (config.dtype if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = build_skeleton(root, dtype, config=config)
    if quant is not None:
        model.config.quantization_config = quant
    return model


def load_standalone(root: Path, doc: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device,
                    verify: bool = True):
    """The saved model of ``root`` (description ``doc``, tensors already on ``device``; ``verify``:
    check the sha256 of the backend's state file too)."""
    from qcompiler.api import QuantizedModel
    from qcompiler.backends import get_backend
    from qcompiler.pass_manager import Program, Region

    comp = doc["compile"]
    backend = get_backend(comp["backend"])  # registers the backend's ops, which the graphs may call
    if backend.finalize is not None and not backend.finalize_standalone:
        raise LoadError(f"a model compiled for backend {comp['backend']!r} needs its float model to load",
                        hint="qcompiler.load(dir, model)")
    model = _build_skeleton(root)
    params: dict[int, nn.Parameter] = {}
    regions = []
    for saved in doc["regions"]:
        region = region_module(saved, model, tensors, params)
        path = saved["path"]
        if not path:
            model = region
        else:
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, region)
        regions.append(Region(path, region))
    for name, e in doc["outer"].items():
        _ensure_owner(model, name)
        set_tensor(model, name, tensors[e["key"]], TensorEntry(e["kind"], bool(e.get("requires_grad", False))),
                   params)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise IntegrityError(f"the saved model has no values for {left[:4]}",
                             hint="config.json does not match the saved tensors")
    model.to(device)  # computed buffers (rotary) made by the skeleton; saved tensors are there already
    _match_computed_buffers(model, doc.get("computed_buffers", {}))
    report, record = record_of(doc, tensors)
    qm = QuantizedModel(model, Program(regions, model), report, record)
    if backend.finalize is not None:  # triton: sibling fusion and the fast generate(), as compile set them up
        from qcompiler.errors import UnsupportedError
        try:
            backend.check()  # its finalize runs the saved example call through the backend's kernels
        except UnsupportedError as e:
            raise LoadError(f"{root} holds a model compiled for backend {comp['backend']!r}: {e.message}",
                            hint=e.hint) from e
        qm.fuse_siblings = comp.get("fuse_siblings", True)
    note = restore_state(root, doc, backend, device, verify)  # e.g. triton's kernel configs: before any kernel runs
    if backend.finalize is not None:
        qm = backend.finalize(qm, (tuple(record.example_args), dict(record.example_kwargs)))
        qm._report = report  # as saved (it holds compile's finalize notes already)
    if note:
        qm.report().notes.append(note)
    return qm


def _match_computed_buffers(model: nn.Module, dtypes: dict[str, str]) -> None:
    """The skeleton's recomputed buffers in the dtypes the saved model held them in."""
    for name, dt in dtypes.items():
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        buf = owner._buffers.get(attr)
        if buf is not None and str(buf.dtype).removeprefix("torch.") != dt:
            owner._buffers[attr] = buf.to(getattr(torch, dt))


def record_of(doc: dict[str, Any], tensors: dict[str, torch.Tensor]):
    """``(Report, CompileRecord)`` of a saved description, its example / calibration tensors taken from ``tensors``."""
    from qcompiler.report import Report
    from qcompiler.serialize.record import CompileRecord, WeightsDigest
    from qcompiler.serialize.values import from_json
    from qcompiler.graph.snapshot import GraphSnapshot

    comp = doc["compile"]
    take = lambda key: tensors[key]  # noqa: E731
    args = decode_arg(doc["example"]["args"], tensor=take)
    kwargs = decode_arg(doc["example"]["kwargs"], tensor=take)
    record = CompileRecord(comp["scheme"], dict(comp["options"]), comp["backend"], comp["capture"],
                           comp["whole_graph"], comp["pipeline"], tuple(args), dict(kwargs),
                           from_json(WeightsDigest, doc["base_model"]),
                           {(r["path"] or "<model>"): GraphSnapshot.from_dict(r["before"])
                            for r in doc["regions"] if r.get("before")},
                           {layer: tensors[key] for layer, key in doc["calibration_absmax"].items()})
    return from_json(Report, doc["report"]), record
