"""How a compiled model runs: the fast generate path (static KV cache + CUDA graphs)."""

from qcompiler.runtime.fast_generate import (FastGenerateConfig, disable_fast_generate, enable_fast_generate,
                                             fast_generate_status)

__all__ = ["FastGenerateConfig", "enable_fast_generate", "disable_fast_generate", "fast_generate_status"]
