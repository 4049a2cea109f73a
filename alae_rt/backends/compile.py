"""The `compile` backend: torch.compile (inductor) of the eager modules, the CPU fast path."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from alae_rt.backends.eager import channels_last_input, to_channels_last
from alae_rt.errors import InputError
from alae_rt.network import StyleALAE

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompileBackend:
    """torch.compile (inductor) of the eager modules: fuses each layer's elementwise chain (noise, bias,
    leaky_relu, instance norm, AdaIN) into the convolutions' neighbours. The CPU fast path.

    Compiles on the first call of each input signature (tens of seconds on a small CPU; inductor caches
    the result on disk for later processes). A compilation failure falls back to eager, once, with a warning.
    Options: mode, freezing (inductor's weight freezing: constant-folded, prepacked for oneDNN; it measured no
    faster here and compiles slower, benchmarks/results/cpu_fastpath_*), channels_last (both networks in
    channels-last order, as the eager backend's option), and anything else torch.compile takes.
    """

    name = "compile"
    channels_last = False

    def __init__(self, model: StyleALAE, device: torch.device, mode: str | None = None,
                 freezing: bool = False, channels_last: bool = False, **options: Any):
        if device.type == "cpu" and not cpp_compiler_available():
            raise InputError("backend 'compile' on CPU needs a C++ compiler (g++ or clang++) on PATH")
        self.model, self.channels_last = model, channels_last
        if not isinstance(channels_last, bool):
            raise InputError(f"backend 'compile' option channels_last: expected true or false, got {channels_last!r}")
        if channels_last:
            to_channels_last(model)
        if mode is not None and mode not in COMPILE_MODES:
            raise InputError(f"backend 'compile' option mode: {mode!r}; choose from {', '.join(COMPILE_MODES)}")
        for key in ("fullgraph", "dynamic"):
            if key in options and not (isinstance(options[key], bool) or key == "dynamic" and options[key] is None):
                raise InputError(f"backend 'compile' option {key}: expected true or false, got {options[key]!r}")
        inductor = dict(options.pop("options", None) or {})
        if freezing:
            inductor["freezing"] = True
        if mode is not None and inductor:
            raise InputError("backend 'compile': torch.compile takes a mode or inductor options (freezing is one), "
                             "not both")
        kwargs = {"mode": mode} if mode is not None else {"options": inductor} if inductor else {}
        try:
            self._encode = torch.compile(model.encoder, **kwargs, **options)
            self._decode = torch.compile(model.generator, **kwargs, **options)
        except (TypeError, RuntimeError, AssertionError) as exc:
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
        return self._run(self._encode, self.model.encoder, channels_last_input(x) if self.channels_last else x)

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        # One kind of tensor for every caller: a compiled graph is specialised on strides and dispatch keys, and w
        # broadcast to all style inputs (a stride-0 view) or styles made outside inference mode would each compile
        # another graph. The copy is [N, 2L, D]: kilobytes.
        images = self._run(self._decode, self.model.generator, styles.clone(memory_format=torch.contiguous_format),
                           noise)
        return images.contiguous() if self.channels_last else images


def _is_compile_failure(exc: Exception) -> bool:
    from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError, TorchDynamoException

    return isinstance(exc, (BackendCompilerFailed, InternalTorchDynamoError, TorchDynamoException))


def cpp_compiler_available() -> bool:
    """Inductor on CPU writes C++: it needs a compiler."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
