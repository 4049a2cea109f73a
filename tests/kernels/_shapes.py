"""Shapes and tolerances shared by the kernel tests."""

import torch

# (batch, channels, height, width): 1x1, 3x5, 7x9 maps; 1, 3, 17 channels; batch 1 and 3.
SHAPES = [(1, 1, 1, 1), (3, 3, 3, 5), (1, 17, 7, 9), (3, 17, 3, 5), (3, 1, 7, 9)]
# A plane over the single-pass limit (64x64): the split reduction.
BIG = (2, 3, 67, 71)
# Max abs error against the fp32 torch reference on outputs of order 1, per storage dtype.
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
DTYPES = list(TOL)


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()
