"""Saving and loading compiled models: safetensors + JSON, no pickle.

    qcompiler.save(qm, "out/minilm-int8")
    qm = qcompiler.load("out/minilm-int8", float_model)
"""

from qcompiler.serialize.errors import (BaseModelMismatchError, IntegrityError, LoadError, SaveError,
                                        VersionMismatchError)
from qcompiler.serialize.record import CompileRecord, WeightsDigest, weights_digest
from qcompiler.serialize.files import (DESCRIPTION_FILE, FORMAT_VERSION, WEIGHTS_FILE, read_description, read_tensors,
                                       verify_files)
from qcompiler.serialize.saved_model import load, save

__all__ = [
    "save", "load", "read_description", "read_tensors", "verify_files",
    "SaveError", "LoadError", "IntegrityError", "VersionMismatchError", "BaseModelMismatchError",
    "CompileRecord", "WeightsDigest", "weights_digest",
    "FORMAT_VERSION", "WEIGHTS_FILE", "DESCRIPTION_FILE",
]
