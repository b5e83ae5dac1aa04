"""qcompiler: a graph-rewriting compiler that makes LLMs lighter.

    qm = qcompiler.compile(model, scheme="int8-outlier", calibration_data=batches)
    print(qm.report())

Passes, schemes and backends are looked up by name in their registries (``qcompiler.registry``);
the built-in ones load on the first look-up, so importing this package registers nothing by side effect.
"""

from qcompiler import ops
from qcompiler.api import QuantizedModel, compile
from qcompiler.backends import Backend, list_backends, register_backend
from qcompiler.errors import (CalibrationError, CaptureError, ConfigError, PassError, QCompilerError,
                              UnsupportedError, VerificationError)
from qcompiler.export import export_onnx
from qcompiler.pass_manager import (GraphPass, Pass, PassContext, PassManager, PassResult, ProgramPass,
                                    list_passes, parse_pipeline, print_pipeline, register_pass)
from qcompiler.qat import QATModel, convert, prepare_qat
from qcompiler.schemes import Scheme, list_schemes, pipeline_for, register_scheme
from qcompiler.serialize import load, save
from qcompiler.spec import SPEC_KEY, LinearQuantSpec, get_spec
from qcompiler.verify import verify_graph
from qcompiler.loading import from_pretrained  # noqa: E402

from qcompiler.integrations.registration import register_with_transformers  # noqa: E402

__version__ = "0.1.0"
register_with_transformers()  # a qcompiler.save directory read by transformers meets qcompiler's quantizer


def __getattr__(name: str):
    # transformers' quantizer API costs ~3 s to import: QCompilerConfig loads on first use (the
    # registration itself waits for transformers to load its quantizers: qcompiler.integrations.registration)
    if name == "QCompilerConfig":
        from qcompiler.integrations.hf_quantizer import QCompilerConfig
        return QCompilerConfig
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")

__all__ = [
    "compile", "QuantizedModel", "export_onnx", "from_pretrained",
    "list_schemes", "register_scheme", "Scheme", "pipeline_for",
    "register_pass", "list_passes", "parse_pipeline", "print_pipeline",
    "Pass", "GraphPass", "ProgramPass", "PassResult", "PassContext", "PassManager",
    "Backend", "register_backend", "list_backends",
    "SPEC_KEY", "LinearQuantSpec", "get_spec", "verify_graph",
    "QCompilerError", "CaptureError", "CalibrationError", "ConfigError", "UnsupportedError",
    "PassError", "VerificationError",
    "save", "load", "QCompilerConfig",
    "prepare_qat", "convert", "QATModel",
    "ops",
]
