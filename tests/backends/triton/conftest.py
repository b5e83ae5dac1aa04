"""Checks the Triton kernel tests can run here: on a CPU machine the kernels need Triton's
interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before anything imports them); on
a CUDA machine the very same tests run on the GPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    raise pytest.UsageError("no CUDA and TRITON_INTERPRET is not set: tests/conftest.py should set "
                            "it before qcompiler.backends.triton is imported")
