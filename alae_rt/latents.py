"""The one rule for latents given from outside: w [N, D] or styles [N, 2L, D], float, finite (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from alae_rt.errors import InputError

# Every latent value given from outside lies within +-LATENT_LIMIT, and so does every edit's result. Trained models'
# w lie within about +-10 and an edit of strength 100 along an official direction moves one by about 20; float32 holds
# the decode of 1e6 still (every preset decodes it to finite pixels), but not of 1e38 (an all-black image).
LATENT_LIMIT = 1e4


def latent_shapes(latent_size: int, num_styles: int, allow_styles: bool = True) -> str:
    """The shapes a model takes, as messages write them: "[N, 512] or [N, 18, 512]"."""
    return f"[N, {latent_size}]" + (f" or [N, {num_styles}, {latent_size}]" if allow_styles else "")


def check_latents(arr: Any, latent_size: int, num_styles: int, name: str, allow_styles: bool = True,
                  values_name: str | None = None) -> None:
    """Raise InputError(field=name) unless `arr` is float w [N, D] (or, when allowed, styles [N, 2L, D]), N >= 1,
    finite and within +-LATENT_LIMIT (errors about the values name `values_name`, by default `name`). A torch
    tensor is checked for shape and dtype only: reading a device tensor back to test its values would stall the
    device on the hot path, so values are checked where latents enter from outside (files, messages), as numpy
    arrays."""
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
    if isinstance(arr, np.ndarray):
        values_name = values_name or name
        if not np.isfinite(arr).all():
            raise InputError(f"{values_name}: holds NaN or Inf", field=values_name)
        peak = float(np.abs(arr).max())
        if peak > LATENT_LIMIT:
            raise InputError(f"{values_name}: holds values up to {peak:.3g}; latents lie within +-{LATENT_LIMIT:g}",
                             field=values_name)
