"""The autotuner's chosen configs as a JSON record and back (:mod:`qcompiler.backends.triton.kernel_config_record`)."""

import importlib
import json
import pkgutil

import pytest
import torch

import qcompiler.backends.triton as triton_pkg
from qcompiler.backends.triton import kernel_config_record as kcr
from qcompiler.backends.triton._config import TunedLauncher

# Keys as the launchers build them: ints, torch dtypes, bools, None, a float (scale_div); configs
# as best_config.all_kwargs() + heuristics give them (ints, bools).
_GEMV_KEY = (1, torch.float16, False, True, 96, 64, 32, 0, 2, 8, False, False, 1, True, 127.0)
_INT8_KEY = (16, 96, 64, True, False, torch.bfloat16, None, torch.float16)
_GEMV_META = {"BLOCK_N": 64, "BLOCK_KB": 16, "SPLIT_K": 4, "ASM": 0, "num_warps": 4, "num_ctas": 1,
              "num_stages": 3, "SPLIT": True, "GB": 16}
_INT8_META = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 8, "num_ctas": 1, "num_stages": 4}


class _FakeLauncher:
    def __init__(self):
        self.meta = {}


@pytest.fixture
def fake_launchers(monkeypatch):
    """Two launchers registered under real names, in place of the registry (restored after)."""
    fakes = {"weight_only_gemv.dot": _FakeLauncher(), "int8_linear": _FakeLauncher()}
    monkeypatch.setattr(kcr, "_LAUNCHERS", dict(fakes))
    monkeypatch.setattr(kcr, "_import_kernels", lambda: None)
    return fakes


def test_record_round_trips_through_json_with_every_type_kept(fake_launchers):
    fake_launchers["weight_only_gemv.dot"].meta[_GEMV_KEY] = dict(_GEMV_META)
    fake_launchers["int8_linear"].meta[_INT8_KEY] = dict(_INT8_META)
    rec = kcr.KernelConfigRecord("NVIDIA H200", "3.6.0", kcr.snapshot())
    back = kcr.decode_record(json.loads(json.dumps(kcr.encode_record(rec))))
    assert back == rec
    (key, meta), = back.configs["weight_only_gemv.dot"].items()
    # Types, not just values: True == 1 and 127 == 127.0 would compare equal.
    assert [type(v) for v in key] == [type(v) for v in _GEMV_KEY]
    assert {k: type(v) for k, v in meta.items()} == {k: type(v) for k, v in _GEMV_META.items()}
    assert hash(key) == hash(_GEMV_KEY)


def test_restore_fills_unchosen_keys_and_keeps_those_already_chosen(fake_launchers):
    other = dict(_GEMV_META, SPLIT_K=1, SPLIT=False)
    configs = {"weight_only_gemv.dot": {_GEMV_KEY: dict(_GEMV_META), _GEMV_KEY[:-1] + (1.0,): dict(_GEMV_META)},
               "int8_linear": {_INT8_KEY: dict(_INT8_META)}, "gone_kernel": {(1,): {"X": 1}}}
    fake_launchers["weight_only_gemv.dot"].meta[_GEMV_KEY] = other  # this process already ran with it
    fake_launchers["int8_linear"].meta[_INT8_KEY] = dict(_INT8_META)
    got = kcr.restore(configs)
    assert (got.restored, got.same, got.kept, got.unknown) == (1, 1, 1, ["gone_kernel"])
    assert fake_launchers["weight_only_gemv.dot"].meta[_GEMV_KEY] == other
    assert fake_launchers["weight_only_gemv.dot"].meta[_GEMV_KEY[:-1] + (1.0,)] == _GEMV_META


def test_a_config_outside_this_process_candidates_is_not_used(fake_launchers):
    # E.g. saved with full autotuning, loaded with QCOMPILER_TRITON_AUTOTUNE=0 (one candidate): the
    # GEMV sizes its split-K workspace by its own candidates, so a bigger SPLIT_K must not come in.
    import triton

    class _Tuner:
        configs = [triton.Config({k: _GEMV_META[k] for k in ("BLOCK_N", "BLOCK_KB", "SPLIT_K", "ASM")},
                                 num_warps=4, num_stages=3)]
    launcher = fake_launchers["weight_only_gemv.dot"]
    launcher.autotuner = _Tuner()
    split8 = {**_GEMV_META, "SPLIT_K": 8}
    got = kcr.restore({"weight_only_gemv.dot": {_GEMV_KEY: split8, _GEMV_KEY[:-1] + (1.0,): dict(_GEMV_META)}})
    assert (got.restored, got.foreign) == (1, 1)
    assert launcher.meta == {_GEMV_KEY[:-1] + (1.0,): _GEMV_META}


def test_card_mismatch_restores_nothing_and_says_so(fake_launchers, monkeypatch):
    rec = kcr.encode_record(kcr.KernelConfigRecord("NVIDIA H200", "3.6.0",
                                                   {"int8_linear": {_INT8_KEY: dict(_INT8_META)}}))
    monkeypatch.setattr(kcr, "_triton_version", lambda: "3.6.0")
    monkeypatch.setattr(kcr, "card", lambda device: "NVIDIA A100-SXM4-80GB")
    note = kcr.restore_for_load(rec, None)
    assert "saved on NVIDIA H200" in note and "A100" in note and "re-tune" in note
    assert fake_launchers["int8_linear"].meta == {}
    monkeypatch.setattr(kcr, "card", lambda device: "NVIDIA H200")
    monkeypatch.setattr(kcr, "_triton_version", lambda: "3.9.0")
    assert "triton 3.6.0" in kcr.restore_for_load(rec, None) and fake_launchers["int8_linear"].meta == {}
    monkeypatch.setattr(kcr, "_triton_version", lambda: "3.6.0")
    assert kcr.restore_for_load(rec, None) is None  # same card and triton: restored, nothing to say
    assert fake_launchers["int8_linear"].meta == {_INT8_KEY: _INT8_META}


@pytest.mark.parametrize("bad", [
    {"format": "something else"},
    {"format": kcr.RECORD_FORMAT, "version": 99, "device": "x", "triton": "y", "launchers": {}},
    {"format": kcr.RECORD_FORMAT, "version": 1, "device": "x", "triton": "y", "launchers": {"a": [[1, 2, 3]]}},
    {"format": kcr.RECORD_FORMAT, "version": 1, "device": "x", "triton": "y",
     "launchers": {"a": [[{"tuple": [1]}, {"dict": [[1, 2]]}]]}},
    {"format": kcr.RECORD_FORMAT, "version": 1, "device": "x", "triton": "y",
     "launchers": {"a": [[{"tuple": [1]}, {"no_such_tag": 1}]]}},
], ids=["format", "version", "pair", "config-keys", "tag"])
def test_malformed_records_are_value_errors(bad):
    with pytest.raises(ValueError):
        kcr.decode_record(bad)


def test_every_launcher_of_the_package_is_registered_by_name():
    # A launcher without a name would not be saved: its configs would re-tune on load.
    found = []
    for info in pkgutil.iter_modules(triton_pkg.__path__):
        mod = importlib.import_module(f"{triton_pkg.__name__}.{info.name}")
        for v in vars(mod).values():
            found += [x for x in (v.values() if isinstance(v, dict) else [v]) if isinstance(x, TunedLauncher)]
    registered = kcr.launchers()
    assert len(found) >= 12
    for launcher in found:
        assert launcher.name is not None and registered.get(launcher.name) is launcher, launcher.jit
