"""How a compiled model runs: the fast generate path (static KV cache + CUDA graphs) and the lean
decode loop it uses for the requests that loop supports."""

from qcompiler.runtime.decode_loop import DecodeLoop, DecodeLoopConfig, StepMode
from qcompiler.runtime.fast_generate import (FastGenerateConfig, disable_fast_generate, enable_fast_generate,
                                             fast_generate_status)
from qcompiler.runtime.lean_generate import generate_path, install_lean_generate, uninstall_lean_generate
from qcompiler.runtime.next_token import TokenChoice

__all__ = ["FastGenerateConfig", "enable_fast_generate", "disable_fast_generate", "fast_generate_status",
           "DecodeLoop", "DecodeLoopConfig", "StepMode", "TokenChoice", "install_lean_generate",
           "uninstall_lean_generate", "generate_path"]
