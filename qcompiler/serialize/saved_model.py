"""``qcompiler.save`` / ``qcompiler.load``: a compiled model as safetensors + JSON, no pickle.

A saved model is a directory::

    model.safetensors   every tensor of the compiled model: int8/packed weights, scales, outlier
                        indices, the float parameters that stayed, the example input it was
                        captured with, the calibration max |x| per layer
    qcompiler.json      scheme, options, pipeline text, versions, the sha256 of model.safetensors
                        and of the base model's float weights, every region's rewritten graph
                        (nodes, specs), the report

``load(dir, model)`` re-captures ``model`` (the float model it was compiled from) with the saved
example input, puts the saved graphs in place of the captured ones and the saved tensors in place
of the float ones. Nothing is recalibrated and no scheme-specific code runs, so every scheme,
present or future, round-trips bit for bit. Nothing in either file is executed.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcompiler.serialize.backend_state import collect_state, restore_state
from qcompiler.serialize.errors import BaseModelMismatchError, IntegrityError, LoadError, SaveError
from qcompiler.serialize.files import check_versions as _check_versions
from qcompiler.serialize.files import (DESCRIPTION_FILE, DESCRIPTION_SHA, FORMAT, FORMAT_VERSION, STATE_ENTRY, WEIGHTS_FILE,
                                       canonical_sha, file_sha256, read_description, read_weights,
                                       versions)
from qcompiler.serialize.directory_writer import parse_size, plan_shards, write_directory
from qcompiler.serialize.graph_codec import decode_graph, encode_graph
from qcompiler.serialize.hf_config import calling_convention, hf_config_of, write_generation_config
from qcompiler.serialize.record import CompileRecord, WeightsDigest, weights_digest
from qcompiler.serialize.tensors import (TensorEntry, computed_buffer_dtypes, TensorTable, drop_unlisted, outer_tensors, region_tensors,
                                         set_tensor)
from qcompiler.serialize.values import decode_arg, encode_arg, from_json, to_json

__all__ = ["save", "load_with_model", "describe"]

def _options_json(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        try:
            out[k] = to_json(v)
        except TypeError:
            out[k] = repr(v)  # informational only: load never recompiles
    return out


def save(qm: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
         tokenizer: Any = None, max_shard_size: int | str = "4GB", format: str = "qcompiler",
         **format_options: Any) -> Path:
    """Writes ``qm`` (from :func:`qcompiler.compile` or :func:`qcompiler.from_pretrained`) to the
    directory ``path``; returns it.

    >>> qcompiler.save(qm, "llama-int8", tokenizer=tok)  # config.json, shards, qcompiler.json
    >>> qm2 = qcompiler.load("llama-int8", device="cuda")  # no float model needed

    A Hugging Face model also gets its ``config.json`` (with a ``quantization_config`` block:
    ``{"quant_method": "qcompiler", "scheme": ..., options}``) and, when given, the tokenizer's
    files: ``load(path)`` then rebuilds it from the directory alone. Tensors go in safetensors
    shards of at most ``max_shard_size``. Files appear atomically (see
    :mod:`qcompiler.serialize.directory_writer`). ``metadata`` (JSON-able) is stored as is.
    ``format="compressed-tensors"`` writes a Hugging Face model as a compressed-tensors checkpoint
    (for transformers and vLLM); ``format_options`` go to
    :func:`qcompiler.formats.compressed_tensors_writer.save_compressed_tensors`.
    """
    if format == "compressed-tensors":
        from qcompiler.formats.compressed_tensors_writer import save_compressed_tensors
        return save_compressed_tensors(qm, path, **format_options)
    if format != "qcompiler":
        raise SaveError(f"unknown format {format!r}", hint="use 'qcompiler' (default) or 'compressed-tensors'")
    if format_options:
        raise SaveError(f"qcompiler's own format takes no options, got {', '.join(format_options)}")
    from qcompiler.api import QuantizedModel

    qm = qm.__dict__.get("_qcompiler_model", qm)  # a PreTrainedModel from from_pretrained(QCompilerConfig / a saved dir)
    if not isinstance(qm, QuantizedModel) or qm.record is None:
        raise SaveError(f"save takes the model returned by qcompiler.compile, got {type(qm).__name__}")
    from qcompiler.loading.placement import has_offloaded, onloaded
    if has_offloaded(qm.model):  # a device map's offloaded blocks: brought in to the CPU while written
        with onloaded(qm.model):
            return save(qm, path, metadata=metadata, tokenizer=tokenizer, max_shard_size=max_shard_size)
    out = Path(path)
    tensors, doc = describe(qm, metadata)
    rec: CompileRecord = qm.record
    where = plan_shards(tensors, parse_size(max_shard_size))
    for k, entry in doc["tensors"].items():
        entry["file"] = where[k]
    hf_config = hf_config_of(qm, rec)
    if hf_config is not None:
        doc["hf_config"] = True
    from qcompiler.backends import get_backend
    state = collect_state(get_backend(rec.backend), qm)  # e.g. triton's chosen kernel configs
    if state is not None:
        doc[STATE_ENTRY] = state[0]  # before the description is hashed: the hash covers the file's sha256

    def extra(tmp: Path) -> None:
        if hf_config is not None:
            (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
            write_generation_config(qm, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if state is not None:
            (tmp / state[0]["file"]).write_bytes(state[1])

    write_directory(out, tensors, where, doc, canonical_sha(doc), extra)
    return out


def describe(qm: nn.Module, metadata: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What :func:`save` writes, without writing it: ``(tensors by key, description)`` of a compiled
    model (offloaded blocks onloaded by the caller); the description has no shard list yet."""
    from qcompiler.capture import RegionModule

    rec: CompileRecord = qm.record
    table = TensorTable()
    example = {"args": encode_arg(tuple(rec.example_args), lambda t: _add(table, "example", t)),
               "kwargs": encode_arg(dict(rec.example_kwargs), lambda t: _add(table, "example", t))}
    regions = []
    for region in qm.program.regions:
        gm = region.gm
        entries = {}
        for target, (t, entry) in region_tensors(gm).items():
            key = f"regions/{region.label}/{target}"
            table.add(key, t)
            entries[target] = {"key": key, **to_json(entry)}
        regions.append({"path": region.path, "consts": encode_arg(dict(region.module._consts)),
                        "graph": encode_graph(gm.graph), "tensors": entries,
                        "calling": calling_convention(region.module),
                        "before": rec.graphs_before[region.label].to_dict()
                        if region.label in rec.graphs_before else None})
    outer = {}
    for name, (t, entry) in outer_tensors(qm.program.root, RegionModule).items():  # eager, even if finalized
        key = f"outer/{name}"
        table.add(key, t)
        outer[name] = {"key": key, **to_json(entry)}
    absmax = {}
    for layer, t in rec.calibration_absmax.items():
        absmax[layer] = f"calibration/absmax/{layer}"
        table.add(absmax[layer], t)
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
        "compile": {"scheme": rec.scheme, "options": _options_json(rec.options), "backend": rec.backend,
                    "capture": rec.capture, "whole_graph": rec.whole_graph, "pipeline": rec.pipeline,
                    "fuse_siblings": bool(qm.__dict__.get("fuse_siblings", True))},
        "base_model": to_json(rec.base),
        "example": example, "regions": regions, "outer": outer, "calibration_absmax": absmax,
        "computed_buffers": computed_buffer_dtypes(qm.program.root, RegionModule),
        "tensors": {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                    for k, t in table.tensors.items()},
        "aliases": table.aliases,
        "report": to_json(qm.report()),
        "metadata": metadata or {},
    }
    try:
        json.dumps(doc["metadata"])
    except TypeError as e:
        raise SaveError(f"metadata is not JSON-able: {e}") from e
    return table.tensors, doc


def _add(table: TensorTable, prefix: str, t: torch.Tensor) -> str:
    key = f"{prefix}/{len(table.tensors) + len(table.aliases)}"
    table.add(key, t)
    return key


def load_with_model(path: str | os.PathLike, model: nn.Module, *, check_versions: bool = True,
                    verify: bool = True) -> nn.Module:
    """Rebuilds the compiled model saved in ``path`` on top of ``model``, the float model it was
    compiled from (checked by a sha256 of its weights). No calibration runs; outputs are bit for
    bit those of the saved model. ``model`` is not modified. (:func:`qcompiler.load` dispatches
    here when given a model.)"""
    from qcompiler.api import QuantizedModel
    from qcompiler.backends import get_backend
    from qcompiler.capture import CaptureMethod, capture_regions
    from qcompiler.errors import QCompilerError
    from qcompiler.pass_manager import Program, Region
    from qcompiler.report import Report
    from qcompiler.graph.snapshot import GraphSnapshot

    root = Path(path)
    doc = read_description(root)
    if check_versions:
        _check_versions(doc)
    try:
        base = from_json(WeightsDigest, doc["base_model"])
        comp = doc["compile"]
    except (KeyError, ValueError, TypeError) as e:
        raise IntegrityError(f"{DESCRIPTION_FILE} is missing or has a malformed entry: {e}") from None
    tensors = read_weights(root, doc, verify=verify)
    _check_base(model, base)
    try:
        backend = get_backend(comp["backend"])  # registers the backend's ops, which the graphs may call
    except QCompilerError as e:
        raise LoadError(f"the model was compiled for backend {comp['backend']!r}: {e.message}", hint=e.hint) from e

    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    moved = _Mover()
    take = lambda key: moved(tensors[key], device)  # noqa: E731 - the example runs where the model is
    args = decode_arg(doc["example"]["args"], tensor=take)
    kwargs = decode_arg(doc["example"]["kwargs"], tensor=take)
    qmodel = copy.deepcopy(model).eval()
    plan = capture_regions(qmodel, args, kwargs, method=CaptureMethod(comp["capture"]), whole=comp["whole_graph"])
    saved_paths = [r["path"] for r in doc["regions"]]
    got = [p for p, _ in plan.regions]
    if got != saved_paths:
        raise BaseModelMismatchError(f"the model captures into regions {got[:4]}..., the saved one into "
                                     f"{saved_paths[:4]}...", hint="the model's code differs from the one saved")
    if plan.regions and plan.regions[0][0] == "":
        qmodel = plan.regions[0][1]
    params: dict[int, nn.Parameter] = {}
    for (rpath, rmod), saved in zip(plan.regions, doc["regions"]):
        _rebuild_region(rmod, saved, tensors, params, moved)
        if hasattr(rmod, "freeze"):
            rmod.freeze()  # as compile leaves its regions
    _restore_outer(qmodel, doc["outer"], tensors, params, moved)

    program = Program([Region(p, m) for p, m in plan.regions], qmodel)
    report = from_json(Report, doc["report"])
    record = CompileRecord(comp["scheme"], dict(comp["options"]), comp["backend"], comp["capture"],
                           comp["whole_graph"], comp["pipeline"], tuple(args), dict(kwargs), base,
                           {(r["path"] or "<model>"): GraphSnapshot.from_dict(r["before"])
                            for r in doc["regions"] if r.get("before")},
                           {layer: tensors[key] for layer, key in doc["calibration_absmax"].items()})  # on cpu
    qm = QuantizedModel(qmodel, program, report, record)
    qm.fuse_siblings = comp.get("fuse_siblings", True)  # as compile was told (read by the triton finalize)
    note = restore_state(root, doc, backend, device, verify)  # e.g. triton's kernel configs: before any kernel runs
    if backend.finalize is not None:  # e.g. onnxruntime: the model runs in another runtime
        qm = backend.finalize(qm, (tuple(args), dict(kwargs)))
        qm._report = from_json(Report, doc["report"])  # as saved: finalize notes its own temp files
    if note:
        qm.report().notes.append(note)
    return qm


def _check_base(model: nn.Module, base: WeightsDigest) -> None:
    got = weights_digest(model)
    if got.sha256 == base.sha256:
        return
    if got.model_class != base.model_class:
        why = f"it is a {got.model_class}, the saved model was compiled from a {base.model_class}"
    elif (got.tensors, got.nbytes) != (base.tensors, base.nbytes):
        why = (f"it has {got.tensors} tensors / {got.nbytes} bytes of state, the saved model's base had "
               f"{base.tensors} / {base.nbytes}")
    else:
        why = "same architecture, but its weights differ (sha256 mismatch)"
    raise BaseModelMismatchError(f"wrong base model: {why}",
                                 hint="pass the float model the saved model was compiled from, unmodified")


class _Mover:
    """``tensor.to(device)`` once per (tensor, device), so tied tensors stay one object."""

    def __init__(self):
        self._done: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __call__(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        key = (id(t), device)
        if key not in self._done:
            self._done[key] = t.to(device)
        return self._done[key]


def _rebuild_region(rmod: nn.Module, saved: dict[str, Any], tensors: dict[str, torch.Tensor],
                    params: dict[int, nn.Parameter], moved: _Mover) -> None:
    label = saved["path"] or "<model>"
    gm = rmod.gm
    graph = decode_graph(saved["graph"], gm)
    # The saved graph runs under the re-captured calling convention: their inputs must agree.
    inputs = lambda g: [n.name for n in g.nodes if n.op == "placeholder"]  # noqa: E731
    if inputs(graph) != inputs(gm.graph):
        raise BaseModelMismatchError(f"region '{label}' takes inputs {inputs(gm.graph)} when captured now, "
                                     f"{inputs(graph)} in the file",
                                     hint="the model's code (or qcompiler's capture) differs from the one saved")
    entries = {t: (e["key"], TensorEntry(e["kind"], bool(e.get("requires_grad", False))))
               for t, e in saved["tensors"].items()}
    current = region_tensors(gm)
    for target, (key, _) in entries.items():
        if target in current and (current[target][0].shape, current[target][0].dtype) != \
                (tensors[key].shape, tensors[key].dtype):
            t = current[target][0]
            raise BaseModelMismatchError(f"region '{label}': '{target}' is {t.dtype}{list(t.shape)} in the model, "
                                         f"{tensors[key].dtype}{list(tensors[key].shape)} in the file")
    # New buffers go where the region's float weights are; replaced ones where they were.
    home = next((t.device for t, _ in current.values()), torch.device("cpu"))
    gm.graph = graph
    drop_unlisted(gm, set(entries))
    for target, (key, entry) in entries.items():
        where = current[target][0].device if target in current else home
        try:
            set_tensor(gm, target, moved(tensors[key], where), entry, params)
        except AttributeError as e:
            raise LoadError(f"region '{label}': cannot place '{target}': {e}") from None
    gm.recompile()
    now = set(region_tensors(gm))
    if now != set(entries):
        extra, missing = sorted(now - set(entries)), sorted(set(entries) - now)
        raise LoadError(f"region '{label}': rebuilt tensors differ from the saved ones "
                        f"(unexpected: {extra[:3]}, missing: {missing[:3]})")


def _restore_outer(qmodel: nn.Module, saved: dict[str, Any], tensors: dict[str, torch.Tensor],
                   params: dict[int, nn.Parameter], moved: _Mover) -> None:
    from qcompiler.capture import RegionModule

    current = outer_tensors(qmodel, RegionModule)
    if set(current) != set(saved):
        extra, missing = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        raise BaseModelMismatchError(f"the model's state outside the compiled regions differs from the saved "
                                     f"one (not saved: {extra[:3]}, not in the model: {missing[:3]})")
    for name, e in saved.items():
        t, key = current[name][0], e["key"]
        if (t.shape, t.dtype) != (tensors[key].shape, tensors[key].dtype):
            raise BaseModelMismatchError(f"'{name}' is {t.dtype}{list(t.shape)} in the model, "
                                         f"{tensors[key].dtype}{list(tensors[key].shape)} in the file")
        set_tensor(qmodel, name, moved(tensors[key], t.device),
                   TensorEntry(e["kind"], bool(e.get("requires_grad", False))), params)
