"""Backends: the two hot calls, `encode(x) -> w` and `decode(styles, noise) -> images`, behind one interface.

One module per backend (eager, compile, official, triton, onnxruntime, tensorrt, openvino); this one holds the registry.
The Runtime picks a backend once at load; the network code stays free of backend switches. Every backend
is tested against `eager` on the same inputs. A backend's options are its constructor's keyword arguments,
checked here, once, for all of them.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from alae_rt.errors import InputError
from alae_rt.network import StyleALAE


class Backend(Protocol):
    name: str

    def encode(self, x: Tensor) -> Tensor:
        """images [N, C, R, R] -> w [N, D]"""

    def decode(self, styles: Tensor, noise: list[Tensor | None]) -> Tensor:
        """styles [N, 2L, D], 2L noise maps ([1 or N, 1, h, w] or None) -> images [N, C, R, R]"""


BackendFactory = Callable[..., Backend]
# name -> "module:class"; a backend's module (and what it needs: triton, onnxruntime, tensorrt) is imported only
# when that backend is asked for. factory(model, device, **options): the model is already on the device, in the
# Runtime's dtype.
_BUILTIN = {
    "eager": "alae_rt.backends.eager:EagerBackend",
    "compile": "alae_rt.backends.compile:CompileBackend",
    "official": "alae_rt.backends.official:OfficialOrderBackend",  # the official code's op order: the baseline
    "triton": "alae_rt.backends.triton:TritonBackend",
    "onnxruntime": "alae_rt.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "alae_rt.backends.tensorrt:TensorRTBackend",
    "openvino": "alae_rt.backends.openvino:OpenVinoBackend",
}
_BACKENDS: dict[str, BackendFactory | str] = dict(_BUILTIN)


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `Runtime.load(..., backend=name)` build `factory(model, device, **backend_options)`."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    return list(_BACKENDS)


def backend_factory(name: str) -> BackendFactory:
    """The factory registered under `name` (importing its module on first use)."""
    factory = _BACKENDS.get(name)
    if factory is None:
        raise InputError(f"unknown backend {name!r}; choose from auto, {', '.join(_BACKENDS)}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = _BACKENDS[name] = getattr(importlib.import_module(module), attr)
    return factory


def check_options(name: str, factory: BackendFactory, options: dict[str, Any]) -> None:
    """A backend's options are its constructor's keyword arguments (after model and device); a factory that
    takes **kwargs passes what it does not know on (compile: to torch.compile) and checks them itself."""
    params = list(inspect.signature(factory).parameters.values())[2:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise InputError(f"backend {name!r} has no option(s) {', '.join(unknown)}; {takes} "
                         "(--backend-option KEY=VALUE)")
    for p in params:
        if p.name in options and not _fits(p.annotation, options[p.name]):
            raise InputError(f"backend {name!r} option {p.name}: expected {_type_text(p.annotation)}, got "
                             f"{options[p.name]!r} (--backend-option {p.name}=VALUE)")


# What an option's annotation asks of a value given from outside (a CLI string is converted to bool/int/float first).
_SIMPLE_TYPES = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "Path": lambda v: isinstance(v, (str, os.PathLike)),
    "None": lambda v: v is None,
}


def _type_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _fits(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a simple annotation ("bool", "int | None", "str | Path | None"); others (lists, Any,
    unannotated) are the backend's own to check."""
    kinds = [k.strip() for k in _type_text(annotation).split("|")]
    if annotation is inspect.Parameter.empty or not all(k in _SIMPLE_TYPES for k in kinds):
        return True
    return any(_SIMPLE_TYPES[k](value) for k in kinds)


def auto_backend(device: torch.device, model: StyleALAE | None = None) -> str:
    """The fastest backend available for the device: triton on CUDA; on CPU `compile` (2.5-3.3x the official
    way at 1024x1024, benchmarks/results/cpu_fastpath_*) for models big enough that its one-time compilation
    pays off within a few images, eager for small ones and where no C++ compiler is installed."""
    if device.type == "cuda":
        from alae_rt.kernels import triton_available

        return "triton" if triton_available() else "eager"
    from alae_rt.backends.compile import cpp_compiler_available

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
    factory = backend_factory(name)
    check_options(name, factory, options)
    return factory(model, device, **options)
