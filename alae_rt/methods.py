"""The training methods a checkpoint can come from (ALAE, IntroVAE, LIA): their networks on the StyleALAE blocks,
what each latent can do, and the method tag of the checkpoint metadata.

- alae: mapping F (z -> w), generator G (w at every style input), encoder E (x -> w), latent head D.
- introvae (Huang et al., NeurIPS 2018): no mapping - G takes z ~ N(0, I) at every style input; E's style terms
  have 2D outputs, the posterior mean and log-variance of z; what is served is the mean. One z: no style mixing or
  per-layer edits; truncation pulls z towards the prior's mean 0 (dlatent_avg stays 0) on all style inputs.
- lia (Zhu et al., latently invertible autoencoder): an invertible flow phi (alae_rt.flow) in F's place, y = phi(z),
  G takes y as ALAE's G takes w; E maps x -> y. The adversary of its first stage judges images: `critic` (an
  encoder-shaped trunk) then the head. y <-> z exactly through phi.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from alae_rt.config import ModelConfig
from alae_rt.errors import CheckpointError, ConfigError, InputError
from alae_rt.flow import CouplingFlow
from alae_rt.network import Encoder, StyleALAE

METHODS = ("alae", "introvae", "lia")
DEFAULT_METHOD = "alae"  # checkpoints without a "method" in their metadata (all written before there was one)
LIA_FLOW_DEPTH = 4
FLOW_DEPTH_RANGE = (1, 64)


@dataclass(frozen=True)
class MethodConfig:
    """The method that trained a model and the parts of the network that depend on it (stored with the weights)."""

    name: str = DEFAULT_METHOD
    flow_depth: int = 0  # LIA: affine couplings between z and y; 0 for the other methods
    flow_hidden: int = 0  # LIA: hidden units of each coupling's MLP; 0 for the other methods

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ConfigError(f"unknown method {self.name!r}; choose from {', '.join(METHODS)}")
        for field in ("flow_depth", "flow_hidden"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{field} must be an integer, got {value!r}")
        if self.name == "lia":
            lo, hi = FLOW_DEPTH_RANGE
            if not lo <= self.flow_depth <= hi:
                raise ConfigError(f"flow depth must lie in [{lo}, {hi}], got {self.flow_depth}")
            if self.flow_hidden < 1:
                raise ConfigError(f"flow hidden size must be >= 1, got {self.flow_hidden}")
        elif self.flow_depth or self.flow_hidden:
            raise ConfigError(f"method {self.name} has no flow (flow_depth and flow_hidden are LIA's)")

    @classmethod
    def of(cls, name: str, cfg: ModelConfig, flow_depth: int | None = None,
           flow_hidden: int | None = None) -> MethodConfig:
        """A method with its defaults for a model config (LIA: 4 couplings of hidden size D)."""
        if name != "lia":
            if flow_depth is not None or flow_hidden is not None:
                raise ConfigError(f"--flow-depth and --flow-hidden are LIA's; method {name} has no flow")
            return cls(name)
        if cfg.latent_size < 2:
            raise ConfigError(f"LIA's flow needs a latent of at least 2 numbers, got D={cfg.latent_size}")
        return cls(name, LIA_FLOW_DEPTH if flow_depth is None else flow_depth,
                   cfg.latent_size if flow_hidden is None else flow_hidden)

    # ---- what the latent can do -------------------------------------------------------------------------
    @property
    def per_layer_styles(self) -> bool:
        """Different latents at different style inputs (mixing, per-layer edits, a truncation cutoff)."""
        return self.name != "introvae"

    @property
    def latent_head(self) -> bool:
        """A discriminator on latents (Runtime.discriminate): ALAE's D. LIA's judges images, IntroVAE has none."""
        return self.name == "alae"

    @property
    def invertible_mapping(self) -> bool:
        """z can be recovered from the generator's latent (IntroVAE: they are one; LIA: through the flow)."""
        return self.name != "alae"

    @property
    def latent_name(self) -> str:
        return {"alae": "w", "introvae": "z", "lia": "y"}[self.name]

    def require(self, capability: str, what: str, field: str | None = None) -> None:
        """InputError naming `what` unless the method has `capability` (a property name above)."""
        if getattr(self, capability):
            return
        why = {
            "per_layer_styles": "its generator takes one z at every style input (no style mixing, per-layer edits "
                                "or truncation cutoff)",
            "latent_head": "it has no discriminator on latents" if self.name == "introvae" else
                           "its discriminator judges images, not latents",
            "invertible_mapping": "ALAE's mapping F is not invertible",
        }[capability]
        raise InputError(f"{what}: not available for this {self.name} model: {why}", field=field)

    # ---- metadata --------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata entries: "method" (the name) and, for LIA, "method_config" (the flow)."""
        meta = {"method": self.name}
        if self.name == "lia":
            meta["method_config"] = json.dumps({"flow_depth": self.flow_depth, "flow_hidden": self.flow_hidden},
                                               sort_keys=True)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> MethodConfig:
        name = meta.get("method", DEFAULT_METHOD)
        extra: dict[str, Any] = {}
        if "method_config" in meta:
            try:
                extra = json.loads(meta["method_config"])
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: metadata field 'method_config' is not valid JSON") from None
            if not isinstance(extra, dict) or set(extra) - {"flow_depth", "flow_hidden"}:
                raise ConfigError(f"{where}: metadata field 'method_config' holds unknown fields")
        try:
            return cls(name, **extra)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GaussianEncoder(Encoder):
    """IntroVAE's encoder: the StyleALAE encoder with 2D-wide style terms, whose sum is (mean, log-variance) of the
    posterior q(z | x). forward -> the mean [N, D] (what encode serves); `posterior` -> both."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.replace(latent_size=2 * cfg.latent_size))
        self.z_size = cfg.latent_size
        with torch.no_grad():  # log-variance 0 (unit variance) at the start: a stable first KL
            for block in self.blocks:
                for style in (block.style_1, block.style_2):
                    style.weight[self.z_size:].zero_()
                    style.bias[self.z_size:].zero_()

    def posterior(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> tuple[Tensor, Tensor]:
        """(mean [N, D], log-variance [N, D])."""
        h = super().forward(x, lod, blend)  # [N, 2D]
        return h[:, :self.z_size], h[:, self.z_size:]

    def forward(self, x: Tensor, lod: int | None = None, blend: float = 1.0) -> Tensor:
        return self.posterior(x, lod, blend)[0]


class IntroVAEModel(StyleALAE):
    method = "introvae"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, mapping=nn.Identity(), encoder=GaussianEncoder(cfg), head=False)


class LIAModel(StyleALAE):
    method = "lia"

    def __init__(self, cfg: ModelConfig, flow_depth: int, flow_hidden: int):
        super().__init__(cfg, mapping=CouplingFlow(cfg.latent_size, flow_depth, flow_hidden))
        self.critic = Encoder(cfg)  # the image discriminator's trunk: D(x) = head(critic(x))


def build_model(cfg: ModelConfig, method: MethodConfig | None = None) -> StyleALAE:
    """The network of a method for a model config (ALAE: StyleALAE itself); `method_config` is kept on it."""
    method = method or MethodConfig()
    if method.name == "introvae":
        model: StyleALAE = IntroVAEModel(cfg)
    elif method.name == "lia":
        model = LIAModel(cfg, method.flow_depth, method.flow_hidden)
    else:
        model = StyleALAE(cfg)
    model.method_config = method
    return model


def method_of(model: StyleALAE) -> MethodConfig:
    """The MethodConfig of a model (a StyleALAE built directly: ALAE)."""
    return getattr(model, "method_config", None) or MethodConfig()


def check_method(found: MethodConfig, expected: str | None, where: str) -> None:
    """A clear error when a checkpoint of one method is about to be used as another."""
    if expected is not None and expected != found.name:
        if expected not in METHODS:
            raise ConfigError(f"unknown method {expected!r}; choose from {', '.join(METHODS)}")
        raise CheckpointError(f"{where}: this is a {found.name} checkpoint, not {expected}; load it as {found.name} "
                          f"(or leave the method out: the checkpoint names it)")
