"""ModelConfig: presets, derived fields, validation, the official YAML reader."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import OFFICIAL, require

from alae_rt import ConfigError, ModelConfig
from alae_rt.config import PRESETS, resolve_config


def test_official_presets_and_derived_fields():
    ffhq = ModelConfig.preset("ffhq-1024")
    assert (ffhq.resolution, ffhq.num_styles, ffhq.latent_size) == (1024, 18, 512)
    assert ffhq.generator_channels == (512, 512, 512, 512, 256, 128, 64, 32, 16)
    assert ffhq.encoder_channels[0] == (16, 32) and ffhq.encoder_channels[-1] == (512, 512)
    assert ffhq.generator_fused == (False,) * 5 + (True,) * 4  # 128 and up
    assert ffhq.encoder_fused == (True,) * 4 + (False,) * 5
    assert ModelConfig.preset("celeba-128").resolution == 128
    assert {"ffhq-1024", "celebahq-256", "bedroom-256", "celeba-128", "tiny"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        assert cfg.name == name


def test_config_is_frozen_and_validated():
    cfg = ModelConfig.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.layer_count = 4
    with pytest.raises(ConfigError, match="layer_count must be a positive integer"):
        ModelConfig(0, 8, 32, 32)
    with pytest.raises(ConfigError, match="truncation_psi must be a finite number"):
        ModelConfig(3, 8, 32, 32, truncation_psi=float("nan"))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        ModelConfig.preset("huge")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_official_yaml(tmp_path):
    cfg = ModelConfig.from_official_yaml(require(OFFICIAL / "rgb128" / "config.yaml"))
    assert (cfg.layer_count, cfg.startf, cfg.maxf, cfg.latent_size, cfg.mapping_layers, cfg.channels) == (
        6, 16, 64, 64, 4, 3)
    assert resolve_config(str(OFFICIAL / "rgb128" / "config.yaml")) == cfg
    bad = tmp_path / "mnist.yaml"
    bad.write_text("MODEL:\n  LAYER_COUNT: 4\n  START_CHANNEL_COUNT: 8\n  MAX_CHANNEL_COUNT: 8\n"
                   "  LATENT_SPACE_SIZE: 8\n  ENCODER: EncoderFC\n")
    with pytest.raises(ConfigError, match="only the StyleALAE network"):
        ModelConfig.from_official_yaml(bad)
    bad.write_text("DATASET:\n  PATH: x\n")
    with pytest.raises(ConfigError, match="no MODEL section"):
        ModelConfig.from_official_yaml(bad)
    bad.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelConfig.from_official_yaml(bad)
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_config("no-such-thing")
