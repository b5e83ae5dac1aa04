"""Saving and loading compiled models: safetensors + JSON, no pickle.

    qcompiler.save(qm, "out/llama-int8")
    qm = qcompiler.load("out/llama-int8", device="cuda")       # Hugging Face models: the directory alone
    qm = qcompiler.load("out/minilm-int8", float_model)        # any model: re-captured from its float model
"""

from qcompiler.serialize.errors import (BaseModelMismatchError, IntegrityError, LoadError, SaveError,
                                        VersionMismatchError)
from qcompiler.serialize.record import CompileRecord, WeightsDigest, weights_digest
from qcompiler.serialize.files import (DESCRIPTION_FILE, FORMAT_VERSION, WEIGHTS_FILE, read_description, read_tensors,
                                       verify_files)
from qcompiler.serialize.loaders import list_loaders, load, quant_method_of, register_loader
from qcompiler.serialize.saved_model import load_with_model, save

__all__ = [
    "save", "load", "load_with_model", "register_loader", "list_loaders", "quant_method_of", "read_description", "read_tensors", "verify_files",
    "SaveError", "LoadError", "IntegrityError", "VersionMismatchError", "BaseModelMismatchError",
    "CompileRecord", "WeightsDigest", "weights_digest",
    "FORMAT_VERSION", "WEIGHTS_FILE", "DESCRIPTION_FILE",
]
