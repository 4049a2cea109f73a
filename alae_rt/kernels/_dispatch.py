"""Which implementation an op runs: Triton on CUDA (or under TRITON_INTERPRET=1), else the torch reference;
and what the launchers share."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

IMPLS = ("auto", "triton", "torch")


def triton_available() -> bool:
    """Triton is importable (it ships with the CUDA builds of torch; the CPU build needs `pip install triton`)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors through Triton's interpreter (slow; for correctness)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(impl: str, *tensors: torch.Tensor) -> bool:
    """Resolve `impl`: "auto" takes Triton when it is installed and the tensors are on CUDA (or the interpreter
    is on); "triton" insists, with an error saying what is missing; "torch" is the reference."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    ok = triton_available() and (on_cuda or interpreting())
    if impl == "triton" and not ok:
        why = "triton is not installed" if not triton_available() else "tensors are not on CUDA"
        raise RuntimeError(f"impl='triton' asked for, but {why} (TRITON_INTERPRET=1 runs the kernels on CPU)")
    return ok


def broadcast_stride(t: torch.Tensor) -> int:
    """A launcher's batch stride for t: 0 for a batch of one, which the kernels broadcast over the batch."""
    return t.stride(0) if t.shape[0] > 1 else 0


# The launch settings that fit, per (kernel, device, dtype, tile): found once, then reused.
_FITTING: dict[tuple, int] = {}


def launch_fitting(launch: Callable[[dict], Any], key: tuple, configs: Sequence[dict]) -> Any:
    """launch(config) with the first of `configs` whose shared memory fits the device, remembered per `key`.

    Triton sizes a kernel's shared memory (its tiles times the software pipeline's stages) when it builds it
    for a device and refuses an oversized one at launch, before any work is done (OutOfResources): an H100 or
    H200 gives a block 227 KiB, consumer cards 99 KiB. So the launchers list their settings from the fastest
    to the leanest (fewer pipeline stages, then a narrower reduction tile) and the first that launches
    stays the choice for that key."""
    from triton.runtime.errors import OutOfResources

    first = _FITTING.get(key, 0)
    for i in range(first, len(configs)):
        try:
            result = launch(configs[i])
        except OutOfResources:
            if i == len(configs) - 1:
                raise
            continue
        _FITTING[key] = i
        return result
    raise ValueError("launch_fitting needs at least one config")
