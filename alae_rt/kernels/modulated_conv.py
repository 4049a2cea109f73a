"""modulated_conv: the network's convolutions as one NHWC implicit GEMM - the input modulated per (sample, input
channel) as it is loaded (`x * scale + shift`: instance norm and AdaIN folded into one affine map; zero padding
after it), then noise, bias, leaky_relu and the output's per-(sample, channel) statistics on the accumulator.

Modes (weights in torch's layouts; pack_modulated_conv makes the kernel's operand once):
  "same": 3x3, stride 1, pad 1, weight [Cout, Cin, 3, 3] - the blocks' second convolutions, the encoder's first;
  "up":   transposed 4x4, stride 2, pad 1, weight [Cin, Cout, 4, 4] - every up-sampling layer (nearest 2x + 3x3
          is this with the kernel corner_sum(flip(w)), exactly);
  "down": 4x4, stride 2, pad 1, weight [Cout, Cin, 4, 4] - every encoder down-sampling layer (3x3 + 2x2 average
          pool is this with corner_sum(w) / 4, exactly).
Tensors are [N, C, H, W] in channels-last memory (NHWC): a tap moves by C elements, so a row's channels are one
contiguous vector load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.kernels._dispatch import broadcast_stride, interpreting, use_triton
from alae_rt.kernels.act_stats import merge_stats
from alae_rt.kernels.common import LRELU_SLOPE

MODES = ("same", "up", "down")
# mode -> (the kernel's MODE, taps a side of a phase, stride, phases)
GEOMETRY = {"same": (0, 3, 1, 1), "up": (1, 2, 1, 4), "down": (2, 4, 2, 1)}
MIN_BLOCK_M = 64  # the narrowest row tile of the autotune list: sizes the statistics' slots
CL = torch.channels_last


def modulated_conv(x: Tensor, weight: Tensor | None, mean: Tensor | None = None, scale: Tensor | None = None,
                   shift: Tensor | None = None, mode: str = "same", noise: Tensor | None = None,
                   noise_weight: Tensor | None = None, bias: Tensor | None = None, act: bool = True,
                   stats: bool = True, batch: int | None = None, packed: Tensor | None = None,
                   allow_tf32: bool = False, config: dict | None = None, impl: str = "auto"
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """See modulated_conv_ref. Triton: `packed` = pack_modulated_conv(weight, mode) saves the repacking per call
    (weight may then be None);
    fp16/bf16 multiply in their dtype (autotuned tiles on a GPU) and accumulate in fp32; fp32 takes exact products
    unless allow_tf32. `config` forces a tile ({"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}: the
    benchmarks' sweep; the interpreter's default is a small one)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not use_triton(impl, x):
        if weight is None:
            raise ValueError("modulated_conv: the torch reference needs weight (packed is the kernel's operand)")
        return modulated_conv_ref(x, weight, mean, scale, shift, mode, noise, noise_weight, bias, act, stats, batch)
    return _modulated_conv_triton(x, weight, mean, scale, shift, mode, noise, noise_weight, bias, act, stats, batch,
                                  packed, allow_tf32, config)


def modulated_conv_ref(x: Tensor, weight: Tensor, mean: Tensor | None = None, scale: Tensor | None = None,
                       shift: Tensor | None = None, mode: str = "same", noise: Tensor | None = None,
                       noise_weight: Tensor | None = None, bias: Tensor | None = None, act: bool = True,
                       stats: bool = True, batch: int | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """y = conv((x - mean) * scale + shift) (+ noise_weight * noise + bias, leaky_relu if act), and its statistics.

    x [N or 1, Cin, H, W]; mean, scale, shift [N, Cin], or all None (x as it is); weight as the mode says (module doc);
    noise [N or 1, 1, HO, WO]; noise_weight, bias [Cout]. Returns (y [B, Cout, HO, WO] in x's dtype, channels
    last; mean, biased var [B, Cout] fp32, or None when not stats), B = batch or the broadcast batch. fp32 math.
    """
    xf = x.float()
    if scale is not None:
        n, c = scale.shape
        xf = (xf - mean.float().view(n, c, 1, 1)) * scale.float().view(n, c, 1, 1) + shift.float().view(n, c, 1, 1)
    wf = weight.float()
    if mode == "same":
        y = F.conv2d(xf, wf, padding=1)
    elif mode == "down":
        y = F.conv2d(xf, wf, stride=2, padding=1)
    else:
        y = F.conv_transpose2d(xf, wf, stride=2, padding=1)
    cout = y.shape[1]
    if noise is not None:
        y = torch.addcmul(y, noise_weight.float().view(1, cout, 1, 1), noise.float())
    if bias is not None:
        y = y + bias.float().view(1, cout, 1, 1)
    if act:
        y = F.leaky_relu(y, LRELU_SLOPE)
    if batch is not None and y.shape[0] != batch:
        y = y.expand(batch, -1, -1, -1)
    y_mean = y_var = None
    if stats:
        y_var, y_mean = torch.var_mean(y, dim=(2, 3), correction=0)
    return y.to(x.dtype).contiguous(memory_format=CL), y_mean, y_var


def pack_modulated_conv(weight: Tensor, mode: str, dtype: torch.dtype | None = None) -> Tensor:
    """The kernel's B operand [phases, taps, Cin, Cout] (output channels contiguous). "up": phase (py, px) of the
    output's 2x2 interleave takes, at tap (ty, tx), kernel element (1 - py + 2 ty, 1 - px + 2 tx) from input
    (a + py - ty, b + px - tx) - the four kernel rows of the transposed conv split by output parity."""
    if mode == "up":
        cin, cout = weight.shape[:2]
        k = torch.arange(2, device=weight.device)
        taps = 1 - k[:, None] + 2 * k[None, :]  # [phase parity, tap] -> kernel row
        w = weight[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # [Cin, Cout, py, px, ty, tx]
        packed = w.permute(2, 3, 4, 5, 0, 1).reshape(4, 4, cin, cout)
    else:
        cout, cin, kh, kw = weight.shape
        packed = weight.permute(2, 3, 1, 0).reshape(1, kh * kw, cin, cout)
    return packed.contiguous().to(dtype or weight.dtype)


# ---- launcher ----------------------------------------------------------------------------------------------------


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def small_config(m: int, cin: int, cout: int) -> dict:
    """A tile for exact fp32 and the interpreter, no wider than the layer: small enough to build fast on a GPU;
    under the interpreter, whose cost is per program (numpy on a whole tile is cheap), up to 1024 rows."""
    rows = 1024 if interpreting() else 64
    return {"BLOCK_M": max(16, min(rows, _pow2(m))), "BLOCK_N": min(64, max(16, _pow2(cout))),
            "BLOCK_K": min(32, max(16, _pow2(cin))), "num_warps": 4, "num_stages": 2}


def _modulated_conv_triton(x: Tensor, weight: Tensor | None, mean: Tensor | None, scale: Tensor | None,
                           shift: Tensor | None, mode: str,
                           noise: Tensor | None, noise_weight: Tensor | None, bias: Tensor | None, act: bool,
                           stats: bool, batch: int | None, packed: Tensor | None, allow_tf32: bool,
                           config: dict | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    # Imported here: Triton is optional (the CPU build of torch has none), the reference needs none.
    from alae_rt.kernels._modulated_conv_triton import modulated_conv_fixed, modulated_conv_tuned

    x = x.contiguous(memory_format=CL)
    cin, h, w = x.shape[1:]
    kernel_mode, taps_w, stride, phases = GEOMETRY[mode]
    cout = packed.shape[-1] if packed is not None else weight.shape[1] if mode == "up" else weight.shape[0]
    n = batch or max(x.shape[0], 1 if scale is None else scale.shape[0], 1 if noise is None else noise.shape[0])
    if mode == "up":
        ho, wo, hout, wout = h, w, 2 * h, 2 * w  # each phase computes on the input's grid
    elif mode == "down":
        ho, wo = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        hout, wout = ho, wo
    else:
        ho, wo, hout, wout = h, w, h, w
    m = n * ho * wo
    if n * max(h * w * cin, hout * wout * cout) >= 2**31:
        raise ValueError(f"modulated_conv: {n} x {cout} x {hout} x {wout} has too many elements for 32-bit offsets")
    packed = pack_modulated_conv(weight, mode, x.dtype) if packed is None else packed
    out = torch.empty(n, cout, hout, wout, device=x.device, dtype=x.dtype, memory_format=CL)
    exact_fp32 = x.dtype == torch.float32 and not allow_tf32
    tuned = config is None and x.dtype != torch.float32 and not interpreting()
    if config is None and not tuned:
        config = small_config(m, cin, cout)
    # Slots per sample and phase: the tiles of the narrowest BLOCK_M that hold one of its rows.
    block_m = MIN_BLOCK_M if tuned else config["BLOCK_M"]
    slots = -(-(ho * wo) // block_m) + 1
    partials = torch.zeros(n, cout, phases * slots if stats else 1, 3, device=x.device, dtype=torch.float32)
    dummy = x  # stands in for absent pointers; never read
    args = (x, broadcast_stride(x), mean.float().contiguous() if scale is not None else dummy,
            scale.float().contiguous() if scale is not None else dummy,
            shift.float().contiguous() if shift is not None else dummy, packed,
            noise.contiguous() if noise is not None else dummy,
            hout * wout if noise is not None and noise.shape[0] > 1 else 0,
            noise_weight if noise is not None else dummy, bias if bias is not None else dummy, out, partials,
            m, cin, cout, h, w, ho, wo, slots)
    flags = dict(MODE=kernel_mode, TAPS_W=taps_w, STRIDE=stride, HAS_MOD=scale is not None,
                 HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, ACT=act, STATS=stats, SLOPE=LRELU_SLOPE,
                 INPUT_PRECISION="ieee" if exact_fp32 else "tf32",
                 DOT_FP32=interpreting() and packed.dtype == torch.bfloat16)
    if tuned:
        def grid(meta):
            return (-(-m // meta["BLOCK_M"]), -(-cout // meta["BLOCK_N"]), phases)
        modulated_conv_tuned[grid](*args, **flags)
    else:
        tile = {k: config[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
        grid = (-(-m // tile["BLOCK_M"]), -(-cout // tile["BLOCK_N"]), phases)
        modulated_conv_fixed[grid](*args, **flags, **tile, num_warps=config.get("num_warps", 4),
                                   num_stages=config.get("num_stages", 2))
    if not stats:
        return out, None, None
    y_mean, y_var = merge_stats(partials)
    return out, y_mean, y_var
