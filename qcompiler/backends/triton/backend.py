"""``backend="triton"``: the scheme's pipeline, then ``lower-triton``.

``qcompiler.compile(model, "int8-outlier", data, backend="triton")`` fails up front with
:class:`UnsupportedError` when the kernels cannot run here (see :func:`is_available`). To keep
the reference ops for layers the kernels cannot take instead, compile with ``backend="eager"``
and ``pipeline=<the scheme's pipeline>,lower-triton{fallback=true}``: each such layer's report
row then says why it was not lowered.
"""

from __future__ import annotations

import qcompiler.passes.lower_triton  # noqa: F401 - registers the lower-triton pass
from qcompiler.backends import Backend, register_backend
from qcompiler.backends.triton import is_available
from qcompiler.errors import UnsupportedError

__all__ = ["TRITON"]


def _check() -> None:
    ok, why = is_available()
    if not ok:
        raise UnsupportedError(f"backend 'triton' cannot run here: {why}",
                               hint="use a CUDA GPU of compute capability >= 7.5, set "
                                    "TRITON_INTERPRET=1 before importing qcompiler to run the kernels "
                                    "on the CPU (slow), or use backend='eager'")


TRITON = register_backend(Backend(
    "triton", "lower-triton,dce", _check,
    "Triton kernels: fused int8 GEMM + fp16 outliers, weight-only int8 for M <= 16"))
