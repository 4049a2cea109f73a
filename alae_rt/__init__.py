"""alae-rt: a deployment runtime for StyleALAE (encode, reconstruct, edit, mix, generate)."""

from .checkpoint import Checkpoint, convert, load_checkpoint, save_checkpoint
from .config import PRESETS, ModelConfig
from .errors import AlaeError, CheckpointError, ConfigError, InputError
from .network import StyleALAE
from .runtime import Runtime

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "AlaeError", "Checkpoint", "CheckpointError", "ConfigError", "InputError", "ModelConfig",
    "Runtime", "StyleALAE", "convert", "load_checkpoint", "save_checkpoint",
]
