"""Backends: the two hot calls, `encode(x) -> w` and `decode(styles, noise) -> images`, behind one interface.

The Runtime picks a backend once at load; the network code stays free of backend switches. Every backend
is tested against `eager` on the same inputs.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from alae_rt.errors import InputError
from alae_rt.network import StyleALAE
from alae_rt.official_order import OfficialOrderBackend


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
    from alae_rt.backend_onnxruntime import OnnxRuntimeBackend  # onnxruntime is imported only when asked for

    return OnnxRuntimeBackend(model, device, **options)


def _tensorrt(model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    from alae_rt.backend_tensorrt import TensorRTBackend  # tensorrt is imported only when asked for

    return TensorRTBackend(model, device, **options)


# factory(model, device, **options): the model is already on the device, in the Runtime's dtype.
class CompileBackend:
    """torch.compile (inductor) of the eager modules: fuses each layer's elementwise chain (noise, bias,
    leaky_relu, instance norm, AdaIN) into the convolutions' neighbours. The CPU fast path.

    Compiles on the first call of each input signature (tens of seconds on a small CPU; inductor caches
    the result on disk for later processes). A compilation failure falls back to eager, once, with a warning.
    Options: mode, freezing (inductor's weight freezing: constant-folded, prepacked for oneDNN; it measured no
    faster here and compiles slower, benchmarks/results/cpu_fastpath_*), and anything else torch.compile takes.
    """

    name = "compile"

    def __init__(self, model: StyleALAE, device: torch.device, mode: str | None = None,
                 freezing: bool = False, **options: Any):
        if device.type == "cpu" and not cpp_compiler_available():
            raise InputError("backend 'compile' on CPU needs a C++ compiler (g++ or clang++) on PATH")
        self.model = model
        inductor = dict(options.pop("options", None) or {})
        inductor.setdefault("freezing", bool(freezing))
        try:
            self._encode = torch.compile(model.encoder, mode=mode, options=inductor, **options)
            self._decode = torch.compile(model.generator, mode=mode, options=inductor, **options)
        except (TypeError, RuntimeError) as exc:
            raise InputError(f"backend 'compile': bad options ({exc})") from None
        self.fallback_reason: str | None = None

    def _run(self, compiled: Callable[..., Tensor], eager: Callable[..., Tensor], *args: Any) -> Tensor:
        if self.fallback_reason is None:
            try:
                return compiled(*args)
            except Exception as exc:  # any compiler failure: keep serving, exactly, through eager
                if not _is_compile_failure(exc):
                    raise
                self.fallback_reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                warnings.warn(f"torch.compile failed, running eager instead ({self.fallback_reason})", stacklevel=3)
        return eager(*args)

    def encode(self, x: Tensor) -> Tensor:
        return self._run(self._encode, self.model.encoder, x)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        return self._run(self._decode, self.model.generator, styles, noise)


def _is_compile_failure(exc: Exception) -> bool:
    from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError, TorchDynamoException

    return isinstance(exc, (BackendCompilerFailed, InternalTorchDynamoError, TorchDynamoException))


def cpp_compiler_available() -> bool:
    """Inductor on CPU writes C++: it needs a compiler."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _triton(model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    from alae_rt.backend_triton import TritonBackend  # imports triton: only when asked for

    return TritonBackend(model, device, **options)


BackendFactory = Callable[..., Backend]
_BACKENDS: dict[str, BackendFactory] = {
    "eager": EagerBackend,
    "compile": CompileBackend,
    "official": OfficialOrderBackend,  # the official code's op order: the benchmarks' baseline
    "triton": _triton,
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `Runtime.load(..., backend=name)` build `factory(model, device, **backend_options)`."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    return list(_BACKENDS)


def auto_backend(device: torch.device, model: StyleALAE | None = None) -> str:
    """The fastest backend available for the device: triton on CUDA; on CPU `compile` (2.5-3.3x the official
    way at 1024x1024, benchmarks/results/cpu_fastpath_*) for models big enough that its one-time compilation
    pays off within a few images, eager for small ones and where no C++ compiler is installed."""
    if device.type == "cuda":
        from alae_rt.kernels import triton_available

        return "triton" if triton_available() else "eager"
    if model is not None and cpp_compiler_available():
        from alae_rt.flops import count_flops

        if count_flops(model.config)["decode"] >= COMPILE_MIN_GFLOPS * 1e9:
            return "compile"
    return "eager"


# Decode cost per image from which `auto` compiles on CPU: celeba-128 (9 GFLOPs) and up; the 128x128
# test fixtures (0.5 GFLOPs) run eager, where compiling would take longer than their work.
COMPILE_MIN_GFLOPS = 2.0


def create_backend(name: str, model: StyleALAE, device: torch.device, **options: Any) -> Backend:
    """Build the named backend; "auto" picks the fastest one available for the device."""
    if name == "auto":
        name = auto_backend(device, model)
    factory = _BACKENDS.get(name)
    if factory is None:
        raise InputError(f"unknown backend {name!r}; choose from auto, {', '.join(_BACKENDS)}")
    return factory(model, device, **options)
