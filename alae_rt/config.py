"""Model configuration: a frozen dataclass with derived fields, named presets and the official YAML reader."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alae_rt.errors import ConfigError

# Official config keys (configs/*.yaml of the official code) -> our field names. The official spelling
# TRUNCATIOM_* is accepted next to the correct one.
_OFFICIAL_KEYS = {
    "LAYER_COUNT": "layer_count",
    "START_CHANNEL_COUNT": "startf",
    "MAX_CHANNEL_COUNT": "maxf",
    "LATENT_SPACE_SIZE": "latent_size",
    "MAPPING_LAYERS": "mapping_layers",
    "CHANNELS": "channels",
    "TRUNCATIOM_PSI": "truncation_psi",
    "TRUNCATION_PSI": "truncation_psi",
    "TRUNCATIOM_CUTOFF": "truncation_cutoff",
    "TRUNCATION_CUTOFF": "truncation_cutoff",
}
# The official code selects network classes by name; only the StyleALAE ones are this network.
_OFFICIAL_CLASSES = {
    "ENCODER": "EncoderDefault",
    "GENERATOR": "GeneratorDefault",
    "MAPPING_TO_LATENT": "MappingToLatent",
    "MAPPING_FROM_LATENT": "MappingFromLatent",
}

# Resolution from which the official blocks use fused (strided / transposed) convolutions.
FUSED_MIN_RESOLUTION = 128


@dataclass(frozen=True)
class ModelConfig:
    """StyleALAE hyper-parameters. `resolution`, channel tables and style counts are derived."""

    layer_count: int  # L: blocks in G and E; resolution 2**(L+1)
    startf: int  # channels of the highest-resolution block
    maxf: int  # channel clamp
    latent_size: int  # D: size of z and w
    mapping_layers: int = 8  # M: layers of F
    channels: int = 3  # C: image channels
    truncation_psi: float = 0.7
    truncation_cutoff: int = 8
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("layer_count", "startf", "maxf", "latent_size", "mapping_layers", "channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ModelConfig.{field} must be a positive integer, got {value!r}")
        if self.layer_count > 12:
            raise ConfigError(f"ModelConfig.layer_count={self.layer_count} is over 12 (resolution > 8192)")
        if not isinstance(self.truncation_psi, (int, float)) or not math.isfinite(self.truncation_psi):
            raise ConfigError(f"ModelConfig.truncation_psi must be a finite number, got {self.truncation_psi!r}")
        if self.truncation_cutoff < 0:
            raise ConfigError(f"ModelConfig.truncation_cutoff must be >= 0, got {self.truncation_cutoff!r}")

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return 2 ** (self.layer_count + 1)

    @property
    def num_styles(self) -> int:
        """2L: style inputs of the generator (two per block)."""
        return 2 * self.layer_count

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """Output resolution of generator block i (4, 8, ..., R)."""
        return tuple(4 * 2**i for i in range(self.layer_count))

    @property
    def style_ranges(self) -> dict[str, tuple[int, ...]]:
        """Style input indices grouped by their generator block's resolution, as StyleGAN editing tools group them:
        coarse (4-8 px: pose, face shape), middle (16-32: features, expression), fine (64 and up: colour, texture).
        Block i feeds styles 2i and 2i+1; a group without blocks is left out (a 32x32 model has no fine styles)."""
        bounds = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 2**30)}
        groups = {name: tuple(s for i, r in enumerate(self.block_resolutions) if lo <= r <= hi
                              for s in (2 * i, 2 * i + 1)) for name, (lo, hi) in bounds.items()}
        return {name: layers for name, layers in groups.items() if layers}

    @property
    def generator_channels(self) -> tuple[int, ...]:
        """Output channels of generator block i; block 0's input is `const` with the same count."""
        return tuple(min(self.maxf, self.startf * 2 ** (self.layer_count - 1 - i)) for i in range(self.layer_count))

    @property
    def generator_fused(self) -> tuple[bool, ...]:
        return tuple(r >= FUSED_MIN_RESOLUTION for r in self.block_resolutions)

    @property
    def encoder_resolutions(self) -> tuple[int, ...]:
        """Input resolution of encoder block i (R, R/2, ..., 4)."""
        return tuple(self.resolution // 2**i for i in range(self.layer_count))

    @property
    def encoder_channels(self) -> tuple[tuple[int, int], ...]:
        """(in, out) channels of encoder block i."""
        return tuple(
            (min(self.maxf, self.startf * 2**i), min(self.maxf, self.startf * 2 ** (i + 1)))
            for i in range(self.layer_count)
        )

    @property
    def encoder_fused(self) -> tuple[bool, ...]:
        return tuple(r >= FUSED_MIN_RESOLUTION for r in self.encoder_resolutions)

    # ---- construction -----------------------------------------------------------------------------
    @staticmethod
    def preset(name: str) -> ModelConfig:
        """A named preset (`ModelConfig.preset("ffhq-1024")`); `PRESETS` lists them."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"incomplete model config: {exc}") from None

    @classmethod
    def from_official_yaml(cls, path: str | Path) -> ModelConfig:
        """Read the MODEL section of an official ALAE config file (yacs YAML)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict) or not isinstance(data.get("MODEL"), dict):
            raise ConfigError(f"{path}: no MODEL section (expected an official ALAE config)")
        model = data["MODEL"]
        for key, expected in _OFFICIAL_CLASSES.items():
            if key in model and model[key] != expected:
                raise ConfigError(
                    f"{path}: MODEL.{key} is {model[key]!r}; only the StyleALAE network ({expected}) is supported"
                )
        fields: dict[str, Any] = {"name": path.stem}
        for key, field in _OFFICIAL_KEYS.items():
            if key in model:
                fields[field] = model[key]
        missing = [k for k in ("LAYER_COUNT", "START_CHANNEL_COUNT", "MAX_CHANNEL_COUNT", "LATENT_SPACE_SIZE")
                   if k not in model]
        if missing:
            raise ConfigError(f"{path}: MODEL section lacks {', '.join(missing)}")
        fields.setdefault("mapping_layers", 5)  # the official default when a config omits it
        fields.setdefault("channels", 3)
        return cls(**fields)


def resolve_config(config: ModelConfig | str | Path | None) -> ModelConfig | None:
    """A ModelConfig from a ModelConfig, a preset name or a path to an official YAML file."""
    if config is None or isinstance(config, ModelConfig):
        return config
    text = str(config)
    if text in PRESETS:
        return PRESETS[text]
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return ModelConfig.from_official_yaml(text)
    raise ConfigError(f"config {text!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")


PRESETS: dict[str, ModelConfig] = {
    # The official StyleALAE models (configs/ffhq.yaml, celeba-hq256.yaml, bedroom.yaml, celeba.yaml).
    "ffhq-1024": ModelConfig(9, 16, 512, 512, 8, name="ffhq-1024"),
    "celebahq-256": ModelConfig(7, 64, 512, 512, 8, name="celebahq-256"),
    "bedroom-256": ModelConfig(7, 32, 512, 512, 8, name="bedroom-256"),
    "celeba-128": ModelConfig(6, 64, 256, 256, 8, name="celeba-128"),
    # Small ones for tests, smoke runs and the bundled default model.
    "faces-128": ModelConfig(6, 16, 128, 128, 6, name="faces-128"),
    "small-64": ModelConfig(5, 16, 64, 64, 4, name="small-64"),
    "tiny": ModelConfig(3, 8, 32, 32, 2, name="tiny"),
    "tiny-gray": ModelConfig(3, 8, 32, 32, 2, channels=1, name="tiny-gray"),
}
