"""Backends: the two hot calls, `encode(x) -> w` and `decode(styles, noise) -> images`, behind one interface.

The Runtime picks a backend once at load; the network code stays free of backend switches. Every backend
is tested against `eager` on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from .errors import InputError
from .network import StyleALAE


class Backend(Protocol):
    name: str

    def encode(self, x: Tensor) -> Tensor:
        """images [N, C, R, R] -> w [N, D]"""

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        """styles [N, 2L, D], 2L noise maps ([1 or N, 1, h, w] or None) -> images [N, C, R, R]"""


class EagerBackend:
    """Plain torch modules: the reference every other backend is checked against."""

    name = "eager"

    def __init__(self, model: StyleALAE, device: torch.device, **options: Any):
        if options:
            raise InputError(f"backend 'eager' takes no options, got {', '.join(options)}")
        self.model = model

    def encode(self, x: Tensor) -> Tensor:
        return self.model.encoder(x)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        return self.model.generator(styles, noise)


def _onnxruntime(model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    from .backend_onnxruntime import OnnxRuntimeBackend  # onnxruntime is imported only when asked for

    return OnnxRuntimeBackend(model, device, **options)


def _tensorrt(model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    from .backend_tensorrt import TensorRTBackend  # tensorrt is imported only when asked for

    return TensorRTBackend(model, device, **options)


# factory(model, device, **options): the model is already on the device, in the Runtime's dtype.
BackendFactory = Callable[..., Backend]
_BACKENDS: dict[str, BackendFactory] = {"eager": EagerBackend, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}
# Named in the design; each lands with its own package (kernels, export, benchmarks).
_PLANNED = ("triton", "compile")


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `Runtime.load(..., backend=name)` build `factory(model, device, **backend_options)`."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    return list(_BACKENDS)


def auto_backend(device: torch.device) -> str:
    """The fastest backend available for the device."""
    return "eager"


def create_backend(name: str, model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    """Build the named backend; "auto" picks the fastest one available for the device."""
    if name == "auto":
        name = auto_backend(device)
    factory = _BACKENDS.get(name)
    if factory is None:
        if name in _PLANNED:
            raise InputError(f"backend {name!r} is not available in this build; available: {', '.join(_BACKENDS)}")
        raise InputError(f"unknown backend {name!r}; choose from auto, {', '.join(_BACKENDS)}")
    return factory(model, device, **options)
