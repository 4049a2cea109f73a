"""Shapes, dtypes and tolerances shared by the kernel tests.

Every shape runs in fp32; fp16 and bf16 run on DTYPE_SHAPES only: the storage dtype changes just the casts of
the loads and stores (the arithmetic is fp32 whatever it is), so a whole-row and a split-reduction plane
exercise every cast.
"""

import itertools

import pytest
import torch

# (batch, channels, height, width): 1x1, 3x5, 7x9 maps; 1, 3, 17 channels; batch 1 and 3.
SHAPES = [(1, 1, 1, 1), (3, 3, 3, 5), (1, 17, 7, 9), (3, 17, 3, 5), (3, 1, 7, 9)]
# A plane over the single-pass limit (64x64): the split reduction.
BIG = (2, 3, 67, 71)
# The shapes every dtype runs on: whole rows several to a program, and the split reduction.
DTYPE_SHAPES = [(3, 17, 3, 5), BIG]
LOW_PRECISION = [torch.float16, torch.bfloat16]
# Max abs error against the fp32 torch reference on outputs of order 1, per storage dtype.
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def grid(fp32: dict, low_precision: dict) -> list:
    """pytest params (shape, dtype, *other axes): the product of `fp32`'s axes in fp32, then the product of
    `low_precision`'s axes in fp16 and in bf16. Both dicts name the same axes, "shape" first."""
    params = []
    for dtypes, axes in (([torch.float32], fp32), (LOW_PRECISION, low_precision)):
        assert list(axes)[0] == "shape" and list(axes) == list(fp32)
        for dtype in dtypes:
            for shape, *rest in itertools.product(*axes.values()):
                values = (shape, dtype, *rest)
                params.append(pytest.param(*values, id="-".join(map(case_id, values))))
    return params


def case_id(value) -> str:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()
