"""The `triton` backend: the encoder and generator through alae_rt.kernels' fused ops.

Activations travel between layers *before* their normalisation, with their per-(sample, channel) statistics;
the normalisation and AdaIN are applied by the consumer as it loads them (the modulated convolution), and
blur / 2x2 pooling / noise / bias / leaky_relu / statistics ride on the kernels that write each map. The
resampling convolutions themselves (transposed 4x4, strided 4x4, the small up-sampling 3x3s) stay with cuDNN.
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
    modulated_conv3x3,
    pack_conv3x3,
    triton_available,
)
from alae_rt.network import StyleALAE, corner_sum_kernel

MAX_GRAPHS = 8  # captured (batch, noise layout) signatures kept per call


class TritonBackend:
    """Fused-kernel encode/decode. Options: cuda_graphs (default True on CUDA), allow_tf32 (default False:
    fp32 models keep fp32 products), cudnn_max_res (default 0: none): the 3x3 convolutions of layers at this
    resolution and below run unfused - the input materialised by `modulate`, the convolution by cuDNN, its epilogue
    by `act_stats` - for the layers where cuDNN's convolution beats the fused kernel (measured per device). In fp32
    those convolutions follow torch's cuDNN setting (torch.backends.cudnn.allow_tf32: TF32 by default), not
    allow_tf32."""

    name = "triton"

    def __init__(self, model: StyleALAE, device: torch.device, cuda_graphs: bool = True, allow_tf32: bool = False,
                 cudnn_max_res: int = 0):
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
        graphs = cuda_graphs and device.type == "cuda"
        self.encode = _CudaGraphs(self._encode) if graphs else self._encode
        self.decode = _CudaGraphs(self._decode) if graphs else self._decode

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
