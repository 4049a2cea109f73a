"""The one rule for latents given from outside: w [N, D] or styles [N, 2L, D], float, finite (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from alae_rt.errors import InputError


def latent_shapes(latent_size: int, num_styles: int, allow_styles: bool = True) -> str:
    """The shapes a model takes, as messages write them: "[N, 512] or [N, 18, 512]"."""
    return f"[N, {latent_size}]" + (f" or [N, {num_styles}, {latent_size}]" if allow_styles else "")


def check_latents(arr: Any, latent_size: int, num_styles: int, name: str, allow_styles: bool = True) -> None:
    """Raise InputError(field=name) unless `arr` is float w [N, D] (or, when allowed, styles [N, 2L, D]), N >= 1,
    and finite. A torch tensor is checked for shape and dtype only: reading a device tensor back to test it for
    NaN would stall the device on the hot path, so finiteness is checked where latents enter from outside
    (files, messages), as numpy arrays."""
    if isinstance(arr, np.ndarray):
        is_float = arr.dtype.kind == "f"
    elif callable(getattr(arr, "is_floating_point", None)):  # a torch.Tensor, without importing torch
        is_float = arr.is_floating_point()
    else:
        raise InputError(f"{name}: expected a float array or tensor, got {type(arr).__name__}", field=name)
    if not is_float:
        raise InputError(f"{name}: expected a float array, got {arr.dtype}", field=name)
    shape = tuple(arr.shape)
    ok = (len(shape) == 2 and shape[1] == latent_size) or (
        allow_styles and len(shape) == 3 and shape[1:] == (num_styles, latent_size))
    if not ok or shape[0] == 0:
        raise InputError(f"{name}: {list(shape)} does not fit this model, which takes "
                         f"{latent_shapes(latent_size, num_styles, allow_styles)} with N >= 1", field=name)
    if isinstance(arr, np.ndarray) and not np.isfinite(arr).all():
        raise InputError(f"{name}: holds NaN or Inf", field=name)
