"""Parameter and FLOP counts of the network, from its config alone (nothing is allocated)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from alae_rt.config import ModelConfig
from alae_rt.network import StyleALAE


def _meta_model(cfg: ModelConfig) -> StyleALAE:
    with torch.device("meta"):
        return StyleALAE(cfg)


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per network: mapping (F), generator (G), encoder (E), head (D) and total."""
    model = _meta_model(cfg)
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("mapping", "generator", "encoder", "head")}
    counts["total"] = sum(counts.values())
    return counts


def count_flops(cfg: ModelConfig) -> dict[str, int]:
    """FLOPs per image (a multiply-add counts 2; convolutions and matmuls, the bulk of the work) for
    encode, decode (the generator with its style projections), map and discriminate."""
    model = _meta_model(cfg)
    d, s, r, c = cfg.latent_size, cfg.num_styles, cfg.resolution, cfg.channels
    noise = [torch.empty(1, 1, res, res, device="meta") for res in cfg.block_resolutions for _ in (1, 2)]
    calls = {
        "encode": lambda: model.encoder(torch.empty(1, c, r, r, device="meta")),
        "decode": lambda: model.generator(torch.empty(1, s, d, device="meta"), noise),
        "map": lambda: model.mapping(torch.empty(1, d, device="meta")),
        "discriminate": lambda: model.head(torch.empty(1, d, device="meta")),
    }
    flops = {}
    for name, call in calls.items():
        with FlopCounterMode(display=False) as counter:
            call()
        flops[name] = counter.get_total_flops()
    return flops
