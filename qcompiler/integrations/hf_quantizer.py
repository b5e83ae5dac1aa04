"""``AutoModelForCausalLM.from_pretrained(path, quantization_config=QCompilerConfig(...))``.

Registered with transformers' public quantizer API (``register_quantization_config`` /
``register_quantizer``) when this module is imported: on the first ``qcompiler.QCompilerConfig``, or
when transformers loads its quantizers (:mod:`qcompiler.integrations.registration`), so
``import qcompiler`` alone does not pay for importing transformers. The checkpoint is streamed
through :func:`qcompiler.from_pretrained` (block by block: peak memory ~ the quantized model + one
float block; :mod:`qcompiler.integrations.streaming_quantize`) and the compiled modules become the
``PreTrainedModel``'s own, so ``generate()`` and everything else keep working::

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=QCompilerConfig("w4-weight-only"))
    model.generate(ids, max_new_tokens=20)
    model.save_pretrained("out")        # compressed-tensors: plain from_pretrained("out") loads it

A directory ``qcompiler.save`` wrote (``quant_method: "qcompiler"``) loads through plain
``from_pretrained(dir)`` (:mod:`qcompiler.integrations.saved_dir_loading`).

Schemes that need calibration data (``w8a8-smoothquant``, ``gptq-*``, ``awq-w4``, int8-outlier's
static mode) cannot get it through ``from_pretrained``; pass ``calibration_data=`` to
``QCompilerConfig`` (a list of dicts of ``input_ids``), or compile with ``qcompiler.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

__all__ = ["QCompilerConfig", "QCompilerHfQuantizer"]

METHOD = "qcompiler"


@register_quantization_config(METHOD)
class QCompilerConfig(QuantizationConfigMixin):
    """Which qcompiler scheme to apply while loading, and its options, as keywords or ``options=``:
    ``QCompilerConfig("int8-outlier", threshold=6.0)``; an unknown option fails here."""

    def __init__(self, scheme: str = "int8-outlier", backend: str = "eager", options: dict[str, Any] | None = None,
                 calibration_data: list | None = None, **scheme_options: Any):
        from qcompiler.schemes import get_scheme
        scheme_options.pop("quant_method", None)  # present when transformers rebuilds it from a dict
        self.quant_method = METHOD
        self.scheme = scheme
        self.backend = backend
        self.options = {**dict(options or {}), **scheme_options}  # QCompilerConfig("nf4", block_size=64)
        self.calibration_data = calibration_data
        self.saved_as: dict | None = None
        sch = get_scheme(scheme)
        sch.make_config(self.options)  # bad options fail here, before any weight is read
        if sch.needs_calibration and calibration_data is None:
            from qcompiler.errors import ConfigError
            raise ConfigError(f"scheme {scheme!r} needs calibration data, which from_pretrained does not take",
                              hint="QCompilerConfig(scheme, calibration_data=[{'input_ids': ...}, ...]), or "
                                   "qcompiler.compile(model, scheme, calibration_data=...)")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs):
        """The block of a config.json (a model already quantized): taken as it is, without the
        checks for compiling (calibration data), so the quantizer can say how to load it."""
        d = {**config_dict, **kwargs}
        config = cls.__new__(cls)
        config.quant_method = METHOD
        config.scheme = d.pop("scheme", "int8-outlier")
        config.backend = d.pop("backend", "eager")
        d.pop("quant_method", None)
        config.options = {**dict(d.pop("options", None) or {}), **d}
        config.calibration_data, config.saved_as = None, None
        return (config, {}) if return_unused_kwargs else config

    def to_dict(self) -> dict[str, Any]:
        if getattr(self, "saved_as", None):  # set by save_pretrained: the format the weights were written in
            return dict(self.saved_as)
        return {"quant_method": METHOD, "scheme": self.scheme, "backend": self.backend, "options": self.options}


@register_quantizer(METHOD)
class QCompilerHfQuantizer(HfQuantizer):
    """Loads the float weights, then compiles the model with the config's scheme, in place; or, for a
    directory ``qcompiler.save`` wrote (``pre_quantized``), rebuilds its regions on ``meta`` before
    transformers reads the shards (:mod:`qcompiler.integrations.saved_dir_loading`)."""

    requires_calibration = False

    def __init__(self, quantization_config: QCompilerConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self._saved = None      # SavedDirLoad of a pre-quantized directory
        self._renamings: list = []
        self._streamed = None   # StreamedLoad: the checkpoint quantized while streamed
        self._device_map = None
        self._kernels_skipped = False  # transformers asked for hub kernels, which this load does not apply

    def update_device_map(self, device_map):
        if self.pre_quantized:
            return device_map  # transformers places the saved tensors itself
        self._device_map = device_map
        return None  # qcompiler's streaming loader places (and dispatches) the blocks; transformers must not again

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        return False  # the float weights load as they are; quantization runs after loading

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if self.pre_quantized:
            from qcompiler.integrations.saved_dir_loading import prepare_skeleton, weight_renamings
            if not checkpoint_files:
                from qcompiler.errors import UnsupportedError
                raise UnsupportedError("a qcompiler model loads from its directory's safetensors shards, and "
                                       "from_pretrained found none", hint="qcompiler.load(dir)")
            self._saved = prepare_skeleton(model, list(checkpoint_files))
            self._renamings = weight_renamings()
        else:
            self._skip_hub_kernels(model)
            if checkpoint_files:
                from qcompiler.integrations.streaming_quantize import hide_state
                self._streamed = hide_state(model, checkpoint_files, self._device_map)
        return model

    def _skip_hub_kernels(self, model) -> None:
        """transformers >= 5.25 kernelizes a model (hub kernels, ``use_kernels`` on by default) after
        loading its weights but before this quantizer's after-loading step. A streamed load still has
        its weights on ``meta`` then (qcompiler streams them in afterwards), so kernelizing fails
        ("Unsupported device type 'meta'"); a ``state_dict`` load would be compiled with kernelized
        forwards nobody tested. qcompiler captures and replaces those layers anyway, so the one
        ``set_use_kernels`` call of this load runs with ``False``; the report says so."""
        if not callable(getattr(type(model), "set_use_kernels", None)):
            return
        own = type(model).set_use_kernels

        def set_use_kernels(use_kernels, *args, **kwargs):
            model.__dict__.pop("set_use_kernels", None)  # once: later calls are the model's own
            self._kernels_skipped = bool(use_kernels)
            return own(model, False, *args, **kwargs)

        model.set_use_kernels = set_use_kernels

    def get_weight_conversions(self):
        return list(self._renamings)  # saved keys -> the rebuilt regions' state names

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            from qcompiler.integrations.saved_dir_loading import finish_loading
            return finish_loading(model, self._saved, self._renamings)
        model.__dict__.pop("set_use_kernels", None)  # not called by this transformers version: nothing to skip
        if self._streamed is not None:
            from qcompiler.integrations.streaming_quantize import stream_into
            return self._note_kernels(stream_into(model, self._streamed, self.quantization_config))
        import qcompiler  # a state_dict passed to from_pretrained: no files to stream, compile what loaded
        cfg: QCompilerConfig = self.quantization_config
        vocab = int(getattr(model.config, "vocab_size", 16))
        device = next(model.parameters()).device
        example = {"input_ids": (torch.arange(8, device=device) % max(vocab, 1)).reshape(1, 8)}
        qm = qcompiler.compile(model, cfg.scheme, cfg.calibration_data, example_inputs=example, backend=cfg.backend,
                               progress=False, **cfg.options)
        for name, child in list(qm.model.named_children()):
            setattr(model, name, child)  # the compiled regions, in the loaded PreTrainedModel itself
        model.__dict__["_qcompiler_model"] = qm  # not a submodule: report(), qcompiler.save
        return self._note_kernels(model)

    def _note_kernels(self, model):
        if self._kernels_skipped:
            model.__dict__["_qcompiler_model"].report().notes.append(
                "transformers' hub kernels (use_kernels) not applied: qcompiler captures and compiles this model's "
                "layers itself")
        return model

    def is_serializable(self, **kwargs) -> bool:
        return True  # as compressed-tensors, for the schemes that format expresses; else qcompiler's own

    def get_state_dict_and_metadata(self, model):
        """``save_pretrained`` of a loaded qcompiler directory writes qcompiler's format again
        (:func:`~qcompiler.integrations.saved_dir_loading.saved_state`); of a model quantized while
        loading, compressed-tensors (through the compressed-tensors library): the config's
        ``quantization_config`` becomes the compressed-tensors one, so plain
        ``from_pretrained(saved_dir)`` loads it. Schemes it cannot express fail here, naming the layer."""
        if self.pre_quantized:
            from qcompiler.integrations.saved_dir_loading import saved_state
            return saved_state(model)
        from qcompiler.formats import ExportFormatError
        from qcompiler.formats.compressed_tensors_writer import compressed_config, compressed_model
        try:
            fresh, compressor = compressed_model(model)
        except ExportFormatError as e:  # e.g. int8-outlier: no peer format, so qcompiler's own
            from transformers.utils import logging
            from qcompiler.integrations.saved_dir_loading import saved_state
            from qcompiler.serialize.hf_config import hf_config_of
            logging.get_logger(__name__).warning(
                f"save_pretrained: {e.message}; writing qcompiler's own format instead (plain from_pretrained "
                f"loads it where qcompiler is imported; vLLM does not)")
            qm = model.__dict__["_qcompiler_model"]
            self.quantization_config.saved_as = hf_config_of(qm, qm.record)["quantization_config"]
            return saved_state(model)
        self.quantization_config.saved_as = compressed_config(compressor)
        return fresh.state_dict(), {}

    @property
    def is_trainable(self) -> bool:
        return False
