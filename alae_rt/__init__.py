"""alae-rt: a deployment runtime for StyleALAE (encode, reconstruct, edit, mix, generate).

The model classes load on first use (PEP 562), so that the gRPC client and the CLI's help start without
importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from alae_rt.config import PRESETS, ModelConfig
from alae_rt.errors import AlaeError, CheckpointError, ConfigError, InputError

if TYPE_CHECKING:
    from alae_rt.checkpoint import Checkpoint, convert, load_checkpoint, save_checkpoint
    from alae_rt.network import StyleALAE
    from alae_rt.runtime import Runtime

__version__ = "0.1.0"

_LAZY = {
    "Checkpoint": "alae_rt.checkpoint", "convert": "alae_rt.checkpoint", "load_checkpoint": "alae_rt.checkpoint",
    "save_checkpoint": "alae_rt.checkpoint", "StyleALAE": "alae_rt.network", "Runtime": "alae_rt.runtime",
}

__all__ = [  # spelled out (not derived from _LAZY) so that type checkers and linters read it
    "PRESETS", "AlaeError", "Checkpoint", "CheckpointError", "ConfigError", "InputError", "ModelConfig",
    "Runtime", "StyleALAE", "convert", "load_checkpoint", "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
