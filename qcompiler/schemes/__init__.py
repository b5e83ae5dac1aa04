"""Schemes: a name, a typed config and the pipeline of passes it expands to.

One file per family; each lists its schemes in ``SCHEMES`` and this package registers them:

* :mod:`~qcompiler.schemes.int8`: ``int8-outlier``, ``int8-vectorwise``, ``int8-absmax``;
* :mod:`~qcompiler.schemes.weight_only`: ``w8-weight-only``, ``w4-weight-only``, ``nf4``;
* :mod:`~qcompiler.schemes.smoothquant`: ``w8a8-smoothquant``;
* :mod:`~qcompiler.schemes.gptq_awq`: ``gptq-w4``, ``gptq-w8``, ``awq-w4``.

:mod:`~qcompiler.schemes.stages` holds the head and the tail they share.
"""

from qcompiler.schemes import gptq_awq, int8, smoothquant, weight_only
from qcompiler.schemes.int8 import Int8Config, Int8OutlierConfig
from qcompiler.schemes.scheme import SCHEMES, Scheme, get_scheme, list_schemes, pipeline_for, register_scheme

__all__ = ["Scheme", "SCHEMES", "register_scheme", "get_scheme", "list_schemes", "pipeline_for",
           "Int8OutlierConfig", "Int8Config"]

for _family in (int8, weight_only, smoothquant, gptq_awq):
    for _scheme in _family.SCHEMES:
        register_scheme(_scheme)
