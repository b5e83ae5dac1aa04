"""``backend="triton"``: the scheme's pipeline, then ``lower-triton``.

``qcompiler.compile(model, "int8-outlier", data, backend="triton")`` fails up front with
:class:`UnsupportedError` when the kernels cannot run here (see :func:`is_available`). With
``allow_fallback=True`` the layers the kernels cannot take (all of them where the device is the
reason: no CUDA GPU, no triton) keep the reference ops, and so do the quantize ops feeding them;
each such layer's report row says why, and the report notes the unusable backend.

On a CUDA device, a compiled Hugging Face causal LM also gets the fast ``generate()``
(:mod:`qcompiler.runtime.fast_generate`: static KV cache, decode replayed as CUDA graphs,
compiled prefill); the report notes it. The CPU (and the interpreter) keep the eager path.
"""

from __future__ import annotations

import qcompiler.passes.lower_triton  # noqa: F401 - registers the lower-triton pass
from qcompiler.backends import Backend, register_backend
from qcompiler.backends.saved_state import SavedState
from qcompiler.backends.triton import kernel_config_record
from qcompiler.backends.triton import is_available
from qcompiler.errors import UnsupportedError
from qcompiler.runtime.fast_generate import enable_fast_generate

__all__ = ["TRITON"]


def _check() -> None:
    ok, why = is_available()
    if not ok:
        raise UnsupportedError(f"backend 'triton' cannot run here: {why}",
                               hint="use a CUDA GPU of compute capability >= 7.5, set "
                                    "TRITON_INTERPRET=1 before importing qcompiler to run the kernels "
                                    "on the CPU (slow), or use backend='eager'")


def _finalize(qm, example):
    """Sibling fusion (unless ``compile(..., fuse_siblings=False)``), then the fast generate path
    where it applies (CUDA, a generative model); report notes say."""
    if qm.__dict__.get("fuse_siblings", True):
        from qcompiler.passes.fuse_siblings import fuse_siblings  # late: the pass imports the runtime
        fuse_siblings(qm, example).note(qm.report())
    note = enable_fast_generate(qm)
    if note.startswith("generate()"):
        qm.report().notes.append(note)
    return qm


TRITON = register_backend(Backend(
    "triton", "lower-triton,dce", _check,
    "Triton kernels: fused int8 GEMM + fp16 outliers, weight-only int8 for M <= 16", _finalize,
    finalize_standalone=True,
    # The configs the autotuner chose: load puts them back, so outputs stay bit for bit the saved ones.
    saved_state=SavedState(kernel_config_record.RECORD_FILE, kernel_config_record.collect_for_save,
                           kernel_config_record.restore_for_load)))
