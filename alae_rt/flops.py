"""Parameter and FLOP counts of a method's network, from its config alone (nothing is allocated)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from alae_rt.config import ModelConfig
from alae_rt.methods import MethodConfig, build_model
from alae_rt.network import StyleALAE

# The networks a method may have, in the order they are reported: ALAE has F, G, E and D's head; IntroVAE no mapping
# and no head; LIA an invertible flow as F and an image critic (D's trunk) beside the head.
NETWORKS = ("mapping", "generator", "encoder", "critic", "head")


def _meta_model(cfg: ModelConfig, method: MethodConfig | None) -> StyleALAE:
    with torch.device("meta"):
        return build_model(cfg, method)


def _networks(model: StyleALAE) -> dict[str, torch.nn.Module]:
    """The model's networks that hold parameters (IntroVAE's identity mapping and absent head are left out)."""
    found = {name: getattr(model, name, None) for name in NETWORKS}
    return {name: m for name, m in found.items() if m is not None and any(True for _ in m.parameters())}


def count_params(cfg: ModelConfig, method: MethodConfig | None = None) -> dict[str, int]:
    """Parameters per network of the method (default ALAE): mapping (F), generator (G), encoder (E), critic (LIA's
    image discriminator trunk), head (D), as the method has them, and total."""
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in _networks(_meta_model(cfg, method)).items()}
    counts["total"] = sum(counts.values())
    return counts


def count_flops(cfg: ModelConfig, method: MethodConfig | None = None) -> dict[str, int]:
    """FLOPs per image (a multiply-add counts 2; convolutions and matmuls, the bulk of the work) of the method's
    (default ALAE) encode, decode (the generator with its style projections), map (when it has a mapping network)
    and discriminate (ALAE: D's head on w; LIA: the critic and head on an image; IntroVAE: none)."""
    model = _meta_model(cfg, method)
    nets = _networks(model)
    d, s, r, c = cfg.latent_size, cfg.num_styles, cfg.resolution, cfg.channels
    noise = [torch.empty(1, 1, res, res, device="meta") for res in cfg.block_resolutions for _ in (1, 2)]
    image = torch.empty(1, c, r, r, device="meta")
    calls = {
        "encode": lambda: model.encoder(image),
        "decode": lambda: model.generator(torch.empty(1, s, d, device="meta"), noise),
    }
    if "mapping" in nets:
        calls["map"] = lambda: model.mapping(torch.empty(1, d, device="meta"))
    if "critic" in nets:
        calls["discriminate"] = lambda: model.head(model.critic(image))
    elif "head" in nets:
        calls["discriminate"] = lambda: model.head(torch.empty(1, d, device="meta"))
    flops = {}
    for name, call in calls.items():
        with FlopCounterMode(display=False) as counter:
            call()
        flops[name] = counter.get_total_flops()
    return flops
