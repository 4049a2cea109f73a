"""modulated_conv3x3: a 3x3 convolution whose input is normalised and AdaIN-modulated per (sample, input channel)
as it is loaded (zero padding applies after the modulation), with the act_stats epilogue (noise, bias,
leaky_relu, the output's statistics) on the accumulator - so a layer's activation is written once and read once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.kernels._dispatch import broadcast_stride, interpreting, launch_fitting, use_triton
from alae_rt.kernels.act_stats import act_stats_ref, merge_stats
from alae_rt.kernels.common import LRELU_SLOPE
from alae_rt.kernels.modulate import modulate_ref


def modulated_conv3x3(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, weight: Tensor,
                      noise: Tensor | None = None, noise_weight: Tensor | None = None, bias: Tensor | None = None,
                      packed: Tensor | None = None, allow_tf32: bool = False, impl: str = "auto"
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """See modulated_conv3x3_ref. Triton: an implicit GEMM over (positions x output channels), reducing over
    input channels and the 9 taps; `packed` = pack_conv3x3(weight) saves the repacking per call. fp32 inputs
    use exact fp32 products unless allow_tf32; fp16/bf16 multiply in their dtype and accumulate in fp32."""
    if not use_triton(impl, t):
        return modulated_conv3x3_ref(t, mean, scale, shift, weight, noise, noise_weight, bias)
    return _modulated_conv3x3_triton(t, mean, scale, shift, weight, noise, noise_weight, bias, packed, allow_tf32)


def modulated_conv3x3_ref(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, weight: Tensor,
                          noise: Tensor | None = None, noise_weight: Tensor | None = None, bias: Tensor | None = None
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """out = leaky_relu(conv3x3(x) + noise_weight*noise + bias), x = (t - mean) * scale + shift zero-padded.

    t [N or 1, Cin, H, W]; mean, scale, shift [N, Cin]; weight [Cout, Cin, 3, 3]; noise [N or 1, 1, H, W];
    noise_weight, bias [Cout]. Returns (out [N, Cout, H, W] in t's dtype, mean, var [N, Cout] fp32). fp32 math.
    """
    x = modulate_ref(t.float(), mean, scale, shift)
    y = F.conv2d(x, weight.float(), padding=1)
    out, m, v = act_stats_ref(y, noise, noise_weight, bias)
    return out.to(t.dtype), m, v


def pack_conv3x3(weight: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """[Cout, Cin, 3, 3] -> [9, Cin, Cout] (tap-major, output channels contiguous): the kernel's B operand.
    Done once when a model is loaded."""
    return weight.permute(2, 3, 1, 0).reshape(9, weight.shape[1], weight.shape[0]).contiguous().to(
        dtype or weight.dtype)


# ---- launcher ----------------------------------------------------------------------------------------------------


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _modulated_conv3x3_triton(t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, weight: Tensor,
                              noise: Tensor | None, noise_weight: Tensor | None, bias: Tensor | None,
                              packed: Tensor | None, allow_tf32: bool) -> tuple[Tensor, Tensor, Tensor]:
    # Imported here: Triton is optional (the CPU build of torch has none), the reference needs none.
    from alae_rt.kernels._modulated_conv3x3_triton import modulated_conv3x3_kernel

    t = t.contiguous()
    n, cin = scale.shape
    cout = weight.shape[0]
    h, w = t.shape[2], t.shape[3]
    hw = h * w
    packed = pack_conv3x3(weight, t.dtype) if packed is None else packed
    exact_fp32 = t.dtype == torch.float32 and not allow_tf32
    # a 4x4 map fills a 16-row tile, not a quarter of a 64 one
    block_m = max(16, min(64 if exact_fp32 else 128, _pow2(hw)))
    block_n = min(64, max(16, _pow2(cout)))
    block_k = min(32, max(16, _pow2(cin)))
    tiles_m = -(-hw // block_m)
    out = torch.empty(n, cout, h, w, device=t.device, dtype=t.dtype)
    partials = torch.empty(n, cout, tiles_m, 3, device=t.device, dtype=torch.float32)
    dummy = t  # stands in for absent pointers; never read

    def launch(config: dict) -> None:
        modulated_conv3x3_kernel[(tiles_m, -(-cout // block_n), n)](
            t, broadcast_stride(t),
            mean.float().contiguous(), scale.float().contiguous(), shift.float().contiguous(), packed,
            noise.contiguous() if noise is not None else dummy, hw if noise is not None and noise.shape[0] > 1 else 0,
            noise_weight if noise is not None else dummy, bias if bias is not None else dummy,
            out, partials, cin, cout, h, w, tiles_m,
            HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, SLOPE=LRELU_SLOPE,
            INPUT_PRECISION="ieee" if exact_fp32 else "tf32",
            # Triton's interpreter has no bf16 matmul: there the (exact) products are taken in fp32.
            DOT_FP32=interpreting() and packed.dtype == torch.bfloat16,
            BLOCK_M=block_m, BLOCK_N=block_n, **config,
        )

    if exact_fp32:
        # Exact fp32 products are FMA instructions, not matrix ones: Triton unrolls the tile's products (9 taps
        # of them) into the kernel. At the fp16 path's tiles, an H200 refused the build's 377 KiB of shared memory
        # (3 stages; the block's limit is 227) and each build took ~10 s (the runs' timings): tiles of a quarter.
        configs = [{"BLOCK_K": 16, "num_stages": 2}, {"BLOCK_K": 16, "num_stages": 1}]
    else:  # fastest first, then leaner (fewer pipeline stages, a narrower reduction tile) for smaller devices
        configs = [{"BLOCK_K": block_k}, {"BLOCK_K": block_k, "num_stages": 2},
                   {"BLOCK_K": block_k, "num_stages": 1}, {"BLOCK_K": 16, "num_stages": 1}]
    launch_fitting(launch, ("modulated_conv3x3", t.device, t.dtype, packed.dtype, allow_tf32, block_m, block_n,
                            block_k), configs)
    m, v = merge_stats(partials)
    return out, m, v
