"""device_map: a model streamed (from_pretrained) or loaded (load(dir)) over CPU + disk offload with
accelerate equals the single-device model, logits bit for bit and greedy tokens; bad maps fail clearly.

The 2-GPU case needs a 2-GPU machine (benchmarks/bench_multi_gpu.py); here the map mixes "cpu"
(run in place) and "disk" (offloaded by accelerate, brought in by its hooks at each forward).
"""

import json

import pytest
import torch

import qcompiler
from qcompiler.errors import ConfigError

SCHEMES = ["int8-outlier", "w4-weight-only"]
CPU_DISK = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "disk"}


def _data(scheme, calib):
    return calib if scheme == "int8-outlier" else None


def _stream(path, scheme, calib, prompt, **kw):
    data = _data(scheme, calib)
    return qcompiler.from_pretrained(path, scheme=scheme, calibration_data=data,
                                     example_inputs=None if data is not None else prompt,
                                     dtype=torch.float32, progress=False, **kw)


@pytest.fixture(scope="module")
def single(llama_dir, calib, prompt, tmp_path_factory):
    """scheme -> (single-device model, its saved directory, its logits and greedy tokens on prompt)."""
    out = {}
    for scheme in SCHEMES:
        qm = _stream(llama_dir[1], scheme, calib, prompt)
        d = qcompiler.save(qm, tmp_path_factory.mktemp("saved") / scheme)
        out[scheme] = (qm, d, _logits(qm, prompt), _greedy(qm, prompt))
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _greedy(model, ids):
    return model.generate(ids, max_new_tokens=6, do_sample=False)


def _on_meta(module):
    ts = list(module.parameters()) + list(module.buffers())
    return bool(ts) and all(t.device.type == "meta" for t in ts)


def _auto_budget(path, scheme):
    """A CPU budget for the quantized sizes that holds the embeddings and block 0 (accelerate also
    keeps room for the largest block) but not the whole model, so "auto" must offload to disk."""
    from accelerate.utils import compute_module_sizes

    from qcompiler.loading.device_map import target_dtype_for
    from qcompiler.loading.skeleton import build_skeleton

    model = build_skeleton(path, torch.float32)
    keep = {n: torch.float32 for n, _ in model.named_parameters() if not n.endswith("proj.weight")
            and n != "lm_head.weight"}
    sizes = compute_module_sizes(model, dtype=target_dtype_for(scheme), special_dtypes=keep)
    return sizes["model.embed_tokens"] + 2 * sizes["model.layers.0"] + 64


@pytest.mark.parametrize("scheme", SCHEMES)
def test_from_pretrained_cpu_and_disk_equals_single_device(scheme, llama_dir, calib, prompt, single, tmp_path):
    qm = _stream(llama_dir[1], scheme, calib, prompt, device_map=CPU_DISK, offload_folder=tmp_path / "off")
    _, _, ref_logits, ref_tokens = single[scheme]
    layers = qm.model.model.layers
    assert _on_meta(layers[1]) and not _on_meta(layers[0])  # block 1 really left memory
    index = json.loads((tmp_path / "off" / "index.json").read_text())
    assert any(k.startswith("model.layers.1.") for k in index) and not any(k.startswith("model.layers.0.") for k in index)
    assert qm.model.hf_device_map == CPU_DISK
    assert torch.equal(_logits(qm, prompt), ref_logits)
    assert torch.equal(_greedy(qm, prompt), ref_tokens)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_load_cpu_and_disk_equals_single_device(scheme, prompt, single):
    _, saved, ref_logits, ref_tokens = single[scheme]
    dm = {**CPU_DISK, "model.layers.0": "disk", "model.layers.1": "cpu"}
    qm = qcompiler.load(saved, device_map=dm)
    assert _on_meta(qm.model.model.layers[0]) and _on_meta(qm.model.lm_head)
    assert torch.equal(_logits(qm, prompt), ref_logits)
    assert torch.equal(_greedy(qm, prompt), ref_tokens)


def test_auto_with_small_max_memory_offloads_and_matches(llama_dir, calib, prompt, single, tmp_path):
    budget = {"cpu": _auto_budget(llama_dir[1], "w4-weight-only")}
    qm = _stream(llama_dir[1], "w4-weight-only", calib, prompt, device_map="auto", max_memory=budget,
                 offload_folder=tmp_path)
    placed = set(qm.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}, qm.model.hf_device_map
    assert torch.equal(_logits(qm, prompt), single["w4-weight-only"][2])
    loaded = qcompiler.load(single["int8-outlier"][1], device_map="auto", max_memory={"cpu": 40_000})
    assert "disk" in set(loaded.model.hf_device_map.values())
    assert torch.equal(_logits(loaded, prompt), single["int8-outlier"][2])


@pytest.mark.parametrize("device_map, needle", [
    ({**CPU_DISK, "model.layers.1": "cuda:7"}, "'model.layers.1'"),
    ({**CPU_DISK, "model.layers.1": 5}, "GPU"),
    ({**CPU_DISK, "model.layers.9": "cpu"}, "'model.layers.9'"),
    ({k: v for k, v in CPU_DISK.items() if k != "model.norm"}, "model.norm"),
    ({**CPU_DISK, "model.layers.1.mlp": "cpu"}, "splits 'model.layers.1'"),
    ({**CPU_DISK, "model.layers.1": "meta"}, "'meta'"),
    ("balanced", "auto"),
])
def test_bad_device_maps_fail_naming_the_entry(device_map, needle, llama_dir, calib, prompt, tmp_path):
    with pytest.raises(ConfigError) as e:
        _stream(llama_dir[1], "w4-weight-only", calib, prompt, device_map=device_map, offload_folder=tmp_path)
    assert needle in str(e.value), str(e.value)


def test_disk_needs_an_offload_folder_and_load_rejects_bad_maps(llama_dir, calib, prompt, single):
    with pytest.raises(ConfigError, match="offload_folder"):
        _stream(llama_dir[1], "w4-weight-only", calib, prompt, device_map=CPU_DISK)
    with pytest.raises(ConfigError, match="'model.layers.7'"):
        qcompiler.load(single["w4-weight-only"][1], device_map={**CPU_DISK, "model.layers.7": "cpu"})


def test_save_of_an_offloaded_model_round_trips(llama_dir, calib, prompt, single, tmp_path):
    qm = _stream(llama_dir[1], "w4-weight-only", calib, prompt, device_map=CPU_DISK, offload_folder=tmp_path / "off")
    qcompiler.save(qm, tmp_path / "saved")  # the disk block is brought in to be written
    assert _on_meta(qm.model.model.layers[1])  # and offloaded again afterwards
    ref = single["w4-weight-only"][2]
    assert torch.equal(_logits(qcompiler.load(tmp_path / "saved"), prompt), ref)
    assert torch.equal(_logits(qm, prompt), ref)


def test_coarse_entries_are_split_into_blocks(llama_dir, calib, prompt, single, tmp_path):
    from qcompiler.loading.device_map import resolve_device_map
    from qcompiler.loading.skeleton import build_skeleton

    skeleton = build_skeleton(llama_dir[1], torch.float32)
    units = ["model.layers.0", "model.layers.1", "lm_head"]
    plan = resolve_device_map(skeleton, {"": "cpu", "model.layers": "disk"}, units)
    assert plan.entries == {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                            "lm_head": "cpu", "model.layers.0": "disk", "model.layers.1": "disk"}
    assert plan.is_offloaded("model.layers.1.mlp.up_proj.weight") and not plan.is_offloaded("lm_head.weight")
    qm = _stream(llama_dir[1], "w4-weight-only", calib, prompt, device_map={"": "cpu", "model.layers": "disk"},
                 offload_folder=tmp_path)
    assert _on_meta(qm.model.model.layers[0]) and _on_meta(qm.model.model.layers[1])
    assert any("device_map" in n for n in qm.report().notes)
    assert torch.equal(_logits(qm, prompt), single["w4-weight-only"][2])


def test_capture_cache_keys_differ_by_device():
    # blocks of a device map trace on different devices: a graph traced on one must not be reused on another
    from qcompiler.capture import _capture_key

    mlp = torch.nn.Linear(4, 4)
    x = torch.zeros(2, 4)
    assert _capture_key(mlp, {"x": x}, {}) == _capture_key(mlp, {"x": x.clone()}, {})
    assert _capture_key(mlp, {"x": x}, {}) != _capture_key(mlp, {"x": x.to("meta")}, {})
