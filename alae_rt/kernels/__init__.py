"""Triton kernels with their torch references and dispatch, one module per op (act_stats, modulate,
modulated_conv3x3, modulated_conv, modulated_blur), laid out as `<op>.py`: the public
`<op>(..., impl="auto"|"triton"|"torch")`, its torch reference `<op>_ref` and its launcher; the `@triton.jit`
kernels, named `<op>_kernel`, sit in `_<op>_triton.py`, imported only when Triton runs. `common.py` holds what the
references share with the network (the leaky_relu slope, the instance-norm eps values, the blur).

Leaf ops: this package imports torch and triton, nothing else of alae-rt, and importing it (or the references)
does not import triton. "auto" takes Triton on CUDA (or under TRITON_INTERPRET=1, for correctness checks on
CPU), else the reference.

The top-level `kernels/` folder is a link to this one (pyproject.toml lists the package).
"""

from alae_rt.kernels._dispatch import interpreting, triton_available, use_triton
from alae_rt.kernels.act_stats import act_stats, act_stats_ref, merge_stats
from alae_rt.kernels.common import ENC_NORM_EPS, GEN_NORM_EPS, LRELU_SLOPE, blur, blur_weight
from alae_rt.kernels.modulate import modulate, modulate_ref
from alae_rt.kernels.modulated_blur import modulated_blur, modulated_blur_ref
from alae_rt.kernels.modulated_conv import modulated_conv, modulated_conv_ref, pack_modulated_conv
from alae_rt.kernels.modulated_conv3x3 import modulated_conv3x3, modulated_conv3x3_ref, pack_conv3x3

__all__ = [
    "ENC_NORM_EPS", "GEN_NORM_EPS", "LRELU_SLOPE", "act_stats", "act_stats_ref", "blur", "blur_weight",
    "interpreting", "merge_stats", "modulate", "modulate_ref", "modulated_blur", "modulated_blur_ref", "modulated_conv",
    "modulated_conv_ref", "modulated_conv3x3", "modulated_conv3x3_ref",
    "pack_conv3x3", "pack_modulated_conv", "triton_available", "use_triton",
]
