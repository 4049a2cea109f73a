"""@triton.jit helpers shared by the ops' kernels (imported only where Triton runs)."""

import triton
import triton.language as tl


@triton.jit
def blur_tap(d):
    # One axis of the [1, 2, 1] / 4 kernel at offset d - 1 (d = 0, 1, 2): common.blur_weight is its outer square.
    return 0.25 * (2 - (d - 1) * (d - 1))


@triton.jit
def leaky_relu(v, SLOPE: tl.constexpr):
    return tl.where(v >= 0, v, v * SLOPE)
