"""The `triton` backend: the encoder and generator through alae_rt.kernels' fused ops.

Activations travel between layers *before* their normalisation, with their per-(sample, channel) statistics;
the normalisation and AdaIN are applied by the consumer as it loads them (the modulated convolution), and
blur / 2x2 pooling / noise / bias / leaky_relu / statistics ride on the kernels that write each map. The
resampling convolutions themselves (transposed 4x4, strided 4x4, the small up-sampling 3x3s) stay with cuDNN.

Option conv="gemm" runs every convolution through one NHWC implicit GEMM (alae_rt.kernels.modulated_conv),
with two exact rewrites (up_weight, down_weight): each up-sampling layer is a stride-2 transposed 4x4 conv and
each down-sampling one a stride-2 4x4 conv at every resolution (nearest 2x + 3x3 and 3x3 + 2x2 pooling did 2.25x
and 4x the multiply-adds of those); the AdaIN before to_rgb is folded into per-sample 1x1 weights, from_rgb's two
leaky_relus are one (slope 0.04). The blurs between are one NHWC pass each (modulated_blur): after an up-sampling
conv with noise, bias, leaky_relu and the statistics; before a down-sampling one with the instance norm.
Weights are prepared once, here; the forward passes have no host syncs, and on CUDA each batch shape is
captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alae_rt.errors import InputError
from alae_rt.kernels import (
    ENC_NORM_EPS,
    GEN_NORM_EPS,
    LRELU_SLOPE,
    act_stats,
    interpreting,
    modulate,
    modulated_blur,
    modulated_conv,
    modulated_conv3x3,
    pack_conv3x3,
    pack_modulated_conv,
    triton_available,
)
from alae_rt.network import StyleALAE, corner_sum_kernel

MAX_GRAPHS = 8  # captured (batch, noise layout) signatures kept per call
CONV_PATHS = ("kernel3x3", "gemm")  # option conv: the fused 3x3 kernel + cuDNN's resampling, or modulated_conv


def up_weight(block) -> Tensor:
    """A generator block's up-sampling conv as the [Cin, Cout, 4, 4] kernel of a stride-2 transposed conv (pad 1).
    Fused blocks store that conv's 3x3 [Cin, Cout]: its 4x4 is the corner sum. Nearest 2x + a 3x3 conv [Cout, Cin]
    is exactly the transposed conv of the corner sum of the *flipped* 3x3 (a transposed conv is a convolution,
    conv2d a correlation), transposed to [Cin, Cout]."""
    if block.fused:
        return corner_sum_kernel(block.conv_1)
    return corner_sum_kernel(block.conv_1.flip(2, 3)).transpose(0, 1)


def down_weight(block) -> Tensor:
    """An encoder block's down-sampling conv as the [Cout, Cin, 4, 4] kernel of a stride-2 conv (pad 1): the
    corner sum of its 3x3, over 4. Fused blocks are defined so; a 3x3 conv then a 2x2 average pool is exactly the
    same (each pooled output averages four 3x3 windows that tile a 4x4 one)."""
    return corner_sum_kernel(block.conv_2) * 0.25


class TritonBackend:
    """Fused-kernel encode/decode. Options: cuda_graphs (default True on CUDA), allow_tf32 (default False:
    fp32 models keep fp32 products), cudnn_max_res (default 0: none): the 3x3 convolutions of layers at this
    resolution and below run unfused - the input materialised by `modulate`, the convolution by cuDNN, its epilogue
    by `act_stats` - for the layers where cuDNN's convolution beats the fused kernel (measured per device). In fp32
    those convolutions follow torch's cuDNN setting (torch.backends.cudnn.allow_tf32: TF32 by default), not
    allow_tf32. conv="gemm": every convolution through modulated_conv (module doc; cudnn_max_res does not apply).
    """

    name = "triton"

    def __init__(self, model: StyleALAE, device: torch.device, cuda_graphs: bool = True, allow_tf32: bool = False,
                 cudnn_max_res: int = 0, conv: str = "kernel3x3"):
        if not triton_available():
            raise InputError("backend 'triton' needs the triton package (it comes with the CUDA builds of torch)")
        if device.type != "cuda" and not interpreting():
            raise InputError("backend 'triton' runs on CUDA GPUs (TRITON_INTERPRET=1 runs it on CPU, slowly, "
                             "for correctness checks)")
        self.model = model
        self.cfg = model.config
        self.allow_tf32 = allow_tf32
        if cudnn_max_res < 0:  # an int: backends.check_options holds options to their annotations
            raise InputError(f"backend option cudnn_max_res: a resolution (0: none), got {cudnn_max_res!r}")
        self.cudnn_max_res = cudnn_max_res
        if conv not in CONV_PATHS:
            raise InputError(f"backend option conv: one of {', '.join(CONV_PATHS)}, got {conv!r}")
        self.conv = conv
        dtype = next(model.parameters()).dtype
        gen, enc = model.generator, model.encoder
        with torch.no_grad():
            # Weights in the layouts the kernels read, made once.
            self._gen_conv2 = [pack_conv3x3(b.conv_2, dtype) for b in gen.blocks]
            self._gen_conv1 = [None if not b.upsample else
                               (corner_sum_kernel(b.conv_1) if b.fused else b.conv_1).contiguous()
                               for b in gen.blocks]
            self._enc_conv1 = [pack_conv3x3(b.conv_1, dtype) for b in enc.blocks]
            self._enc_conv2 = [(corner_sum_kernel(b.conv_2) * 0.25 if b.fused else b.conv_2).contiguous()
                               for b in enc.blocks]
            if conv == "gemm":  # the B operands of modulated_conv, [phases, taps, Cin, Cout]
                self._gemm_up = [pack_modulated_conv(up_weight(b), "up", dtype) if b.upsample else None
                                 for b in gen.blocks]
                self._gemm_gen_conv2 = [pack_modulated_conv(b.conv_2, "same", dtype) for b in gen.blocks]
                self._gemm_enc_conv1 = [pack_modulated_conv(b.conv_1, "same", dtype) for b in enc.blocks]
                self._gemm_down = [pack_modulated_conv(down_weight(b), "down", dtype) for b in enc.blocks]
        encode, decode = (self._encode_gemm, self._decode_gemm) if conv == "gemm" else (self._encode, self._decode)
        graphs = cuda_graphs and device.type == "cuda"
        self.encode = _CudaGraphs(encode) if graphs else encode
        self.decode = _CudaGraphs(decode) if graphs else decode

    def _conv3x3(self, t: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, weight: Tensor, packed: Tensor,
                 noise: Tensor | None = None, noise_weight: Tensor | None = None, bias: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """modulated_conv3x3 (t normalised and modulated on load, the epilogue on the accumulator); at resolutions
        up to cudnn_max_res the same in three passes, the convolution cuDNN's."""
        if t.shape[-1] > self.cudnn_max_res:
            return modulated_conv3x3(t, mean, scale, shift, weight, noise, noise_weight, bias, packed=packed,
                                     allow_tf32=self.allow_tf32, impl="triton")
        x = modulate(t, mean, scale, shift, impl="triton")  # [N, C, H, W]: zero padding lies outside it, as fused
        return act_stats(F.conv2d(x, weight, padding=1), noise, noise_weight, bias, impl="triton")

    # ---- generator ----------------------------------------------------------------------------------------
    def _decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        gen = self.model.generator
        n = styles.shape[0]
        x = gen.const  # [1, c0, 4, 4]
        t = mean = var = style = None
        for i, blk in enumerate(gen.blocks):
            if blk.upsample:
                x = self._adain(t, mean, var, style)  # the previous layer's output, materialised once
                if blk.fused:
                    y = F.conv_transpose2d(x, self._gen_conv1[i], stride=2, padding=1)
                else:
                    y = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), self._gen_conv1[i], padding=1)
                t, mean, var = act_stats(y, noise[2 * i], blk.noise_weight_1, blk.bias_1, pre="blur", impl="triton")
            else:
                t, mean, var = act_stats(x, noise[2 * i], blk.noise_weight_1, blk.bias_1,
                                         batch=noise[2 * i].shape[0] if noise[2 * i] is not None else 1,
                                         impl="triton")
            style = blk.style_1(styles[:, 2 * i])
            scale, shift = self._adain_coefs(var, style, n)
            t, mean, var = self._conv3x3(t, mean.expand(n, -1), scale, shift, blk.conv_2, self._gen_conv2[i],
                                         noise[2 * i + 1], blk.noise_weight_2, blk.bias_2)
            style = blk.style_2(styles[:, 2 * i + 1])
        rgb = gen.to_rgb[-1]
        return F.conv2d(self._adain(t, mean, var, style), rgb.weight, rgb.bias)

    @staticmethod
    def _adain_coefs(var: Tensor, style: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Instance norm (eps 1e-8) + AdaIN as per-(sample, channel) scale and shift, [n, C] each."""
        c = var.shape[1]
        gamma, beta = style.float().view(n, 2, c).unbind(1)
        return torch.rsqrt(var + GEN_NORM_EPS) * (1 + gamma), beta

    def _adain(self, t: Tensor, mean: Tensor, var: Tensor, style: Tensor) -> Tensor:
        n = style.shape[0]
        scale, shift = self._adain_coefs(var, style, n)
        return modulate(t, mean.expand(n, -1), scale, shift, impl="triton")

    # ---- encoder ------------------------------------------------------------------------------------------
    def _encode(self, x: Tensor) -> Tensor:
        enc = self.model.encoder
        rgb = enc.from_rgb[0]
        # leaky_relu twice, as the official FromRGB and the line after it.
        t = F.leaky_relu(F.leaky_relu(F.conv2d(x, rgb.weight, rgb.bias), LRELU_SLOPE), LRELU_SLOPE)
        n, c = t.shape[:2]
        mean = torch.zeros(n, c, device=t.device, dtype=torch.float32)
        scale, shift = torch.ones_like(mean), torch.zeros_like(mean)  # the first conv sees x unnormalised
        w = None
        for i, blk in enumerate(enc.blocks):
            t1, m1, v1 = self._conv3x3(t, mean, scale, shift, blk.conv_1, self._enc_conv1[i], bias=blk.bias_1)
            s1 = blk.style_1(torch.cat((m1, v1.sqrt()), dim=1).to(t.dtype))
            zeros = torch.zeros_like(m1)
            xb = modulate(t1, m1, torch.rsqrt(v1 + ENC_NORM_EPS), zeros, post="blur", impl="triton")
            if blk.fused:
                y = F.conv2d(xb, self._enc_conv2[i], stride=2, padding=1)
                t, mean, var = act_stats(y, bias=blk.bias_2, impl="triton")
            else:
                y = F.conv2d(xb, self._enc_conv2[i], padding=1)
                t, mean, var = act_stats(y, bias=blk.bias_2, pre="pool", impl="triton")
            s2 = blk.style_2(torch.cat((mean, var.sqrt()), dim=1).to(t.dtype))
            w = s1 + s2 if w is None else w + (s1 + s2)
            scale, shift = torch.rsqrt(var + ENC_NORM_EPS), torch.zeros_like(var)
        return w


    # ---- conv="gemm": every convolution one NHWC implicit GEMM ----------------------------------------------
    def _decode_gemm(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        gen = self.model.generator
        n = styles.shape[0]
        t = mean = var = style = None
        for i, blk in enumerate(gen.blocks):
            if blk.upsample:
                scale, shift = self._adain_coefs(var, style, n)
                # The bare transposed conv: the blur comes before noise, bias and the activation.
                y, _, _ = modulated_conv(t, None, mean.expand(n, -1), scale, shift, "up", act=False, stats=False,
                                         packed=self._gemm_up[i], impl="triton")
                t, mean, var = modulated_blur(y, noise=noise[2 * i], noise_weight=blk.noise_weight_1,
                                              bias=blk.bias_1, act=True, stats=True, impl="triton")
            else:
                t, mean, var = act_stats(gen.const, noise[2 * i], blk.noise_weight_1, blk.bias_1,
                                         batch=noise[2 * i].shape[0] if noise[2 * i] is not None else 1,
                                         impl="triton")
            style = blk.style_1(styles[:, 2 * i])
            scale, shift = self._adain_coefs(var, style, n)
            t, mean, var = modulated_conv(t, None, mean.expand(n, -1), scale, shift, "same", noise[2 * i + 1],
                                          blk.noise_weight_2, blk.bias_2, batch=n, packed=self._gemm_gen_conv2[i],
                                          impl="triton")
            style = blk.style_2(styles[:, 2 * i + 1])
        # to_rgb of the AdaIN'd map, as per-sample 1x1 weights: W (t * scale + shift) + b = (W scale) t + (W shift + b)
        # with the mean folded into the shift (at the last layer, in the 1x1's fp32 sum, its cancellation is small:
        # the fixtures' test holds it to 1e-4)
        scale, shift = self._adain_coefs(var, style, n)
        shift = shift - mean * scale
        rgb = gen.to_rgb[-1]
        w = rgb.weight.flatten(1).float()  # [C_img, C]
        folded = (w[None] * scale[:, None, :]).to(t.dtype)  # [N, C_img, C]
        offset = (shift @ w.T + rgb.bias.float()).to(t.dtype)  # [N, C_img]
        h, wd = t.shape[2:]
        pixels = t.permute(0, 2, 3, 1).reshape(n, h * wd, -1)  # [N, HW, C]: a view of the NHWC map
        out = torch.baddbmm(offset[:, None, :], pixels, folded.transpose(1, 2))  # [N, HW, C_img]
        return out.permute(0, 2, 1).reshape(n, -1, h, wd)

    def _encode_gemm(self, x: Tensor) -> Tensor:
        enc = self.model.encoder
        rgb = enc.from_rgb[0]
        # The official FromRGB's leaky_relu and the one after it, as one: slope 0.2 twice is 0.04.
        t = F.leaky_relu(F.conv2d(x.contiguous(memory_format=torch.channels_last), rgb.weight, rgb.bias),
                         LRELU_SLOPE * LRELU_SLOPE)
        mean = scale = shift = None  # the first conv sees the map as it is
        w = None
        for i, blk in enumerate(enc.blocks):
            t1, m1, v1 = modulated_conv(t, None, mean, scale, shift, "same", bias=blk.bias_1,
                                        packed=self._gemm_enc_conv1[i], impl="triton")
            s1 = blk.style_1(torch.cat((m1, v1.sqrt()), dim=1).to(t.dtype))
            zeros = torch.zeros_like(m1)
            xb, _, _ = modulated_blur(t1, m1, torch.rsqrt(v1 + ENC_NORM_EPS), zeros, impl="triton")  # norm, blur
            t, mean, var = modulated_conv(xb, None, mode="down", bias=blk.bias_2, packed=self._gemm_down[i],
                                          impl="triton")
            s2 = blk.style_2(torch.cat((mean, var.sqrt()), dim=1).to(t.dtype))
            w = s1 + s2 if w is None else w + (s1 + s2)
            scale, shift = torch.rsqrt(var + ENC_NORM_EPS), torch.zeros_like(var)
        return w


class _CudaGraphs:
    """Capture a forward once per input signature (shapes, dtypes, absent noise) and replay it; inputs are
    copied into the captured buffers, the output is cloned out of the graph's pool."""

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn = fn
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list, Tensor]] = OrderedDict()

    def __call__(self, *args: Any) -> Tensor:
        flat, rebuild = _flatten(args)
        key = tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in flat)
        entry = self.graphs.get(key)
        if entry is None:
            static = [None if t is None else t.clone() for t in flat]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn(*rebuild(static))  # warm-up: Triton compiles and autotunes outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a server captures a new batch size while its other threads copy and encode responses on
            # their own streams; "global" (the default) would fail their pinned allocations and syncs meanwhile, and
            # the capture with them. Only this thread is barred from unsafe calls, as torch.compile's graphs do.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.fn(*rebuild(static))
            entry = (graph, static, out)
            self.graphs[key] = entry
            if len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph, static, out = entry
        for dst, src in zip(static, flat):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return out.clone()


def _flatten(args: tuple) -> tuple[list[Tensor | None], Callable[[list], tuple]]:
    """(tensor, [tensors or None]) call arguments <-> a flat list, for the graph's static buffers."""
    flat: list[Tensor | None] = []
    spec = []
    for a in args:
        if isinstance(a, (list, tuple)):
            spec.append(len(a))
            flat.extend(a)
        else:
            spec.append(None)
            flat.append(a)

    def rebuild(values: list) -> tuple:
        out, i = [], 0
        for s in spec:
            if s is None:
                out.append(values[i])
                i += 1
            else:
                out.append(list(values[i:i + s]))
                i += s
        return tuple(out)

    return flat, rebuild
