"""The rules for inputs given from outside that need no model: latents (w [N, D] or styles [N, 2L, D], float,
finite), truncation psi, seeds and interpolation steps (numpy only: the CLI checks them before a model loads)."""

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


# ---- the other inputs whose rule needs no model: checked by the Runtime, and by the CLI before a model loads -----

PSI_RANGE = (-2.0, 2.0)  # truncation psi: 0 gives dlatent_avg, 1 no truncation, beyond +-2 only noise
SEED_MAX = 2**64 - 1  # seeds seed torch generators, which take 64-bit unsigned values


def check_psi(truncation_psi: Any, field: str = "truncation_psi") -> float:
    """A truncation psi, finite and within PSI_RANGE -> float (InputError(field=field) otherwise)."""
    try:
        psi = float(truncation_psi)
    except (TypeError, ValueError):
        raise InputError(f"{field}: {truncation_psi!r} is not a number", field=field) from None
    if not (np.isfinite(psi) and PSI_RANGE[0] <= psi <= PSI_RANGE[1]):
        raise InputError(f"{field}: {psi} is out of range [{PSI_RANGE[0]}, {PSI_RANGE[1]}]", field=field)
    return psi


def check_seed(value: Any, field: str = "seeds") -> int:
    """A seed as an int in [0, 2**64 - 1] (what a torch generator takes)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= SEED_MAX:
        raise InputError(f"{field}: {value!r} is not a seed; seeds are integers in [0, 2**64 - 1]", field=field)
    return int(value)


def check_steps(steps: Any, field: str = "steps") -> int:
    """Interpolation frames, both ends included: an integer >= 2."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) < 2:
        raise InputError(f"{field} must be >= 2 (frames include both ends), got {steps!r}", field=field)
    return int(steps)
