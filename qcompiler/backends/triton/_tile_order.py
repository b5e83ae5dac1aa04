"""The order in which GEMM programs take their output tiles (GROUP_M swizzle).

Programs that run at the same time take GROUP_M neighbouring row tiles of one column band, so they
share W tiles in L2 instead of each streaming a different band.
"""

import triton
import triton.language as tl

__all__ = ["grouped_tile"]


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program ``pid``."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_size
    pid_n = (pid % group) // group_size
    return pid_m, pid_n
