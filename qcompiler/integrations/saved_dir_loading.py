"""A directory written by ``qcompiler.save`` (config.json: ``quant_method="qcompiler"``) loaded by
plain ``AutoModelForCausalLM.from_pretrained(dir)``, through the quantizer's pre-quantized hooks.

transformers builds the model on ``meta``; :func:`prepare_skeleton` (``_process_model_before_weight_loading``)
puts each saved region in place of the submodule it replaced, decoded from the saved graph around
``meta`` tensors of the saved dtypes and shapes, so the model's state names are the saved ones
renamed (``regions/<path>/<t>`` -> ``<path>.gm.<t>``, ``outer/<n>`` -> ``<n>``: two
``WeightRenaming`` rules). transformers then reads the shards itself, placing every tensor where
``device_map`` says. :func:`finish_loading` (``_process_model_after_weight_loading``) checks that
every tensor came in with its saved dtype and shape, ties the aliases back, and attaches the
``QuantizedModel`` (report, record: ``qcompiler.save(model, dir)`` works). Outputs are bit for bit
those of ``qcompiler.load(dir)``.

``save_pretrained`` of such a model writes the same tensors (:func:`saved_state`), with the
description in the safetensors header (transformers writes the files; ``qcompiler.json`` is not
one of them), so the directory loads again through ``from_pretrained`` (and ``qcompiler.load``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcompiler.serialize.errors import IntegrityError, LoadError
from qcompiler.serialize.tensors import TensorEntry, set_tensor

__all__ = ["EMBEDDED_DESCRIPTION", "SavedDirLoad", "saved_description", "prepare_skeleton",
           "finish_loading", "saved_state", "weight_renamings"]

EMBEDDED_DESCRIPTION = "qcompiler.description"  # safetensors metadata key: the description, as JSON
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_SIDE_KEYS = (r"^example/", r"^calibration/")  # in the shards for qcompiler.load, not model state


@dataclass
class SavedDirLoad:
    """What :func:`prepare_skeleton` learnt, for :func:`finish_loading`."""
    root: Path
    doc: dict[str, Any]
    where: dict[str, str]                                  # stored tensor key -> shard file
    slots: dict[str, tuple[str, TensorEntry]] = field(default_factory=dict)  # model state name -> (key, entry)
    regions: list[tuple[str, nn.Module]] = field(default_factory=list)


def _header_description(file: Path) -> dict[str, Any] | None:
    from safetensors import safe_open
    with safe_open(str(file), framework="pt") as f:
        text = (f.metadata() or {}).get(EMBEDDED_DESCRIPTION)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{file}: the qcompiler description in its header is not valid JSON ({e})") from None


def saved_description(root: Path, files: list[Path]) -> dict[str, Any]:
    """The description of a saved model: ``qcompiler.json`` (shards' sizes and sha256 checked), or
    the copy ``save_pretrained`` put in the shards' header."""
    from qcompiler.serialize.files import (DESCRIPTION_FILE, check_versions, check_weight_files, read_description)

    if (root / DESCRIPTION_FILE).is_file():
        doc = read_description(root)
        check_weight_files(root, doc, verify=True)
    else:
        doc = _header_description(files[0])
        if doc is None:
            raise IntegrityError(f"{root / DESCRIPTION_FILE} does not exist and {files[0].name} carries no qcompiler "
                                 f"description", hint="config.json says quant_method='qcompiler': copy the whole "
                                                      "directory qcompiler.save (or save_pretrained) wrote")
    check_versions(doc)
    return doc


def _check_headers(doc: dict[str, Any], files: list[Path]) -> dict[str, str]:
    """Every shard belongs to this description and holds exactly its tensors, of the listed dtype and shape."""
    from safetensors import safe_open

    from qcompiler.serialize.files import DESCRIPTION_SHA, canonical_sha

    want_sha, manifest, where = canonical_sha(doc), doc.get("tensors", {}), {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if (f.metadata() or {}).get(DESCRIPTION_SHA) != want_sha:
                raise IntegrityError(f"{file} was not written with this model's description (qcompiler.json or "
                                     f"its header copy changed, or the shard is from another save)",
                                     hint="copy the whole saved directory again")
            for k in f.keys():
                sl = f.get_slice(k)
                got_dtype, got_shape = _ST_DTYPES.get(sl.get_dtype()), list(sl.get_shape())
                listed = manifest.get(k)
                if listed is None:
                    raise IntegrityError(f"{file.name}: tensor {k!r} is not listed in the description")
                if got_dtype is None or str(got_dtype).removeprefix("torch.") != listed["dtype"] \
                        or got_shape != listed["shape"]:
                    raise IntegrityError(f"{file.name}: tensor {k!r} is {sl.get_dtype()}{got_shape}, the description "
                                         f"lists {listed['dtype']}{listed['shape']}")
                where[k] = file.name
    missing = sorted(set(manifest) - set(where))
    if missing:
        raise IntegrityError(f"tensor {missing[0]!r} (and {len(missing) - 1} more) is in no shard of "
                             f"{files[0].parent}", hint="a shard is missing: copy the whole saved directory")
    return where


def weight_renamings() -> list:
    """Saved tensor keys -> the model's state names (see the module docstring)."""
    from transformers.core_model_loading import WeightRenaming
    return [WeightRenaming(r"^regions/(.+)/", r"\1.gm."), WeightRenaming(r"^outer/", "")]


def prepare_skeleton(model: nn.Module, checkpoint_files: list[str]) -> SavedDirLoad:
    """Puts the saved regions, on ``meta``, into transformers' ``meta`` skeleton ``model``."""
    from qcompiler.backends import get_backend
    from qcompiler.errors import UnsupportedError
    from qcompiler.serialize.standalone import region_module

    files = [Path(f) for f in checkpoint_files]
    root = files[0].parent
    doc = saved_description(root, files)
    where = _check_headers(doc, files)
    try:
        comp = doc["compile"]
        backend = get_backend(comp["backend"])  # registers the backend's ops, which the graphs call
        manifest, aliases = doc["tensors"], doc.get("aliases", {})
        meta = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in manifest.items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"{root}: the saved description has a malformed entry ({e})") from None
    if backend.finalize is not None:
        raise UnsupportedError(f"{root} was compiled for backend {comp['backend']!r}, which runs outside PyTorch",
                               hint="qcompiler.load(dir, float_model)")
    for alias, key in aliases.items():
        if key not in meta:
            raise IntegrityError(f"{root}: alias {alias!r} points to missing tensor {key!r}")
        meta[alias] = meta[key]
    plan = SavedDirLoad(root, doc, where)
    params: dict[int, nn.Parameter] = {}
    for saved in doc["regions"]:
        path = saved["path"]
        if not path:
            raise UnsupportedError(f"{root} holds one graph for the whole model, which from_pretrained cannot put "
                                   f"in its own model object", hint="qcompiler.load(dir)")
        region = region_module(saved, model, meta, params)
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, region)
        plan.regions.append((path, region))
        for target, e in saved["tensors"].items():
            plan.slots[f"{path}.gm.{target}"] = (e["key"], TensorEntry(e["kind"], bool(e.get("requires_grad"))))
    for name, e in doc["outer"].items():
        try:
            current = model.get_parameter_or_buffer(name)
        except AttributeError:
            raise IntegrityError(f"{root}: config.json's model has no '{name}', saved as {e['key']!r}",
                                 hint="config.json does not belong to these tensors") from None
        if list(current.shape) != list(meta[e["key"]].shape):
            raise IntegrityError(f"{root}: '{name}' is {list(current.shape)} in config.json's model, "
                                 f"{list(meta[e['key']].shape)} in the file ({e['key']!r})",
                                 hint="config.json does not belong to these tensors")
        entry = TensorEntry(e["kind"], bool(e.get("requires_grad")))
        set_tensor(model, name, meta[e["key"]], entry, params)  # the saved dtype, whatever dtype= asked
        plan.slots[name] = (e["key"], entry)
    state = set(model.state_dict())
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in list(tied.items()):  # e.g. lm_head.weight, when lm_head is now a region
        if target not in state or source not in state:
            tied.pop(target)
    left = sorted(state - set(plan.slots) - set(tied))
    if left:
        raise IntegrityError(f"{root}: the saved model has no values for {left[:4]}",
                             hint="config.json does not match the saved tensors")
    quiet_unexpected = [*_SIDE_KEYS, *(re.escape(s) + "$" for s, (_, e) in plan.slots.items() if e.kind == "attribute")]
    model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | set(quiet_unexpected)
    model._keys_to_ignore_on_load_missing = set(model._keys_to_ignore_on_load_missing or ()) | {
        "^" + re.escape(s) + "$" for s, (k, _) in plan.slots.items() if k in aliases}  # tied back in finish_loading
    return plan


def _read(plan: SavedDirLoad, keys: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    aliases = plan.doc.get("aliases", {})
    stored = {k: aliases.get(k, k) for k in keys}
    out: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for k in dict.fromkeys(stored.values()):
        by_file.setdefault(plan.where[k], []).append(k)
    for file, ks in by_file.items():
        with safe_open(str(plan.root / file), framework="pt", device=str(device)) as f:
            out.update({k: f.get_tensor(k) for k in ks})
    return {k: out[s] for k, s in stored.items()}


def finish_loading(model: nn.Module, plan: SavedDirLoad, renamings: list = ()):
    """After transformers read the shards: checks, ties aliases, attaches the ``QuantizedModel``."""
    from qcompiler.api import QuantizedModel
    from qcompiler.pass_manager import Program, Region
    from qcompiler.serialize.standalone import record_of

    doc, aliases = plan.doc, plan.doc.get("aliases", {})
    loaded: dict[str, torch.Tensor] = {}
    for name, (key, entry) in plan.slots.items():
        if key in aliases or entry.kind == "attribute":
            continue
        t = model.get_parameter_or_buffer(name)
        want = doc["tensors"][key]
        if t.device.type == "meta" and "disk" in set(map(str, (getattr(model, "hf_device_map", None) or {}).values())):
            from qcompiler.errors import UnsupportedError
            raise UnsupportedError(f"'{name}' was offloaded to disk by device_map: from_pretrained of a qcompiler "
                                   f"directory does not offload to disk",
                                   hint="qcompiler.load(dir, device_map=..., max_memory=...) offloads block by block")
        if t.device.type == "meta" or str(t.dtype).removeprefix("torch.") != want["dtype"] or list(t.shape) != want["shape"]:
            raise IntegrityError(f"'{name}' (saved as {key!r} in {plan.where[key]}) came in as {t.dtype}"
                                 f"{list(t.shape)} on {t.device}, saved as {want['dtype']}{want['shape']}")
        loaded[key] = t
    device = next((t.device for t in loaded.values()), torch.device("cpu"))
    rest = [k for k, (key, e) in plan.slots.items() if key not in loaded and aliases.get(key) not in loaded]
    direct = _read(plan, [plan.slots[s][0] for s in rest], device)  # attributes; aliases of non-state tensors
    params: dict[int, nn.Parameter] = {}
    for name, (key, entry) in plan.slots.items():
        t = loaded.get(key, loaded.get(aliases.get(key))) if key not in direct else direct[key]
        set_tensor(model, name, t, entry, params)  # kinds and ties as saved (`loaded` keeps the ids alive)
    side = [k for k in list(doc["tensors"]) + list(aliases) if k.startswith(("example/", "calibration/"))]
    report, record = record_of(doc, _read(plan, side, "cpu"))
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:  # saved_state writes the saved keys itself: nothing to reverse on save_pretrained
        model._weight_conversions = [c for c in conversions if all(c is not r for r in renamings)]
    qm = QuantizedModel(model, Program([Region(p, m) for p, m in plan.regions], model), report, record)
    model.__dict__["_qcompiler_model"] = qm  # not a submodule: report(), qcompiler.save
    return model


def saved_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``save_pretrained``'s ``(state_dict, metadata)`` for a qcompiler model: ``qcompiler.save``'s
    tensors, the description in the header."""
    from qcompiler.loading.placement import has_offloaded
    from qcompiler.serialize.files import DESCRIPTION_SHA, FORMAT, canonical_sha
    from qcompiler.serialize.saved_model import describe

    qm = model.__dict__.get("_qcompiler_model")
    if qm is None or qm.record is None:
        raise LoadError("this model carries no qcompiler record to save")
    if has_offloaded(qm.model):
        raise LoadError("save_pretrained of a qcompiler model with offloaded blocks is not supported",
                        hint="qcompiler.save(model, dir) onloads them block by block")
    tensors, doc = describe(qm)
    doc["hf_config"] = True
    return tensors, {"qcompiler.format": FORMAT, DESCRIPTION_SHA: canonical_sha(doc),
                     EMBEDDED_DESCRIPTION: json.dumps(doc, sort_keys=True)}
