"""Triton kernels with their torch references and dispatch (fused AdaIN / modulated convolution / noise).

Leaf ops: this package imports torch and triton, nothing else of alae-rt. Each public op takes
impl="auto"|"triton"|"torch": Triton on CUDA (or under TRITON_INTERPRET=1, for correctness checks on CPU),
else its plain-torch reference `<op>_ref`.

Installed as `alae_rt.kernels`: alae_rt/kernels is a link to this folder (pyproject.toml lists the package).
"""

from alae_rt.kernels._dispatch import interpreting, triton_available, use_triton
from alae_rt.kernels.epilogue import (
                       act_stats,
                       act_stats_ref,
                       encoder_epilogue,
                       encoder_epilogue_ref,
                       generator_epilogue,
                       generator_epilogue_ref,
                       merge_stats,
                       modulate,
                       modulate_ref,
)

__all__ = [
    "act_stats", "act_stats_ref", "encoder_epilogue", "encoder_epilogue_ref", "generator_epilogue",
    "generator_epilogue_ref", "interpreting", "merge_stats", "modulate", "modulate_ref", "triton_available",
    "use_triton",
]
