"""Adam with learning-rate equalisation on stored effective weights, and the per-parameter multiplier table.

The official code stores effective weights too (`implicit_lreq`) and scales each parameter's Adam step by
the He constant gain / sqrt(fan_in) times the layer's lrmul. Adam is invariant to the gradient's scale, so
this is the same training as the runtime-scaled (StyleGAN) form, and the stored tensors keep their meaning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from alae_rt.network import StyleALAE

SQRT2 = math.sqrt(2.0)
MAPPING_LRMUL = 0.1  # F (the official MappingF, used by every official config)
HEAD_LRMUL = 0.1  # D (the official MappingD / MappingToLatent)


def lr_multipliers(model: StyleALAE, mapping_lrmul: float = MAPPING_LRMUL) -> dict[str, float]:
    """Parameter name -> step multiplier: gain / sqrt(fan_in) * lrmul for weights, lrmul for their biases,
    1 for the plain parameters (const, noise weights, the blocks' biases). Gains are those the network's
    initialisation uses (the official ones); `mapping_lrmul` is F's lrmul (0.01 is the official ablation-only
    `Mapping`'s, which leaves F nearly untrained on a short run)."""
    mult: dict[str, float] = {}

    def layer(prefix: str, weight: Tensor, gain: float, lrmul: float = 1.0, fan_in: int | None = None,
              bias: bool = True) -> None:
        fan_in = weight[0].numel() if fan_in is None else fan_in
        mult[f"{prefix}.weight" if bias else prefix] = gain / math.sqrt(fan_in) * lrmul
        if bias:
            mult[f"{prefix}.bias"] = lrmul

    # The other methods' parts (alae_rt.methods): IntroVAE has no F and no head; LIA's F is a flow, whose layers
    # are found with the other Linear layers below, and its image discriminator `critic` is encoder-shaped.
    for i, fc in enumerate(getattr(model.mapping, "layers", ())):
        layer(f"mapping.layers.{i}", fc.weight, SQRT2, mapping_lrmul)
    for i, fc in enumerate(model.head.layers if model.head is not None else ()):
        layer(f"head.layers.{i}", fc.weight, SQRT2, HEAD_LRMUL)
    for i, block in enumerate(model.generator.blocks):
        p = f"generator.blocks.{i}"
        if block.upsample:
            w = block.conv_1  # fused: transposed layout [in, out, 3, 3], fan-in is in * 9
            layer(f"{p}.conv_1", w, SQRT2, fan_in=w.shape[0] * 9 if block.fused else None, bias=False)
        layer(f"{p}.conv_2", block.conv_2, SQRT2, bias=False)
        for j in (1, 2):
            layer(f"{p}.style_{j}", getattr(block, f"style_{j}").weight, 1.0)
    for i, conv in enumerate(model.generator.to_rgb):
        layer(f"generator.to_rgb.{i}", conv.weight, 0.03)
    for prefix in ("encoder", "critic"):
        encoder = getattr(model, prefix, None)
        if encoder is None:
            continue
        for i, conv in enumerate(encoder.from_rgb):
            layer(f"{prefix}.from_rgb.{i}", conv.weight, SQRT2)
        for i, block in enumerate(encoder.blocks):
            p = f"{prefix}.blocks.{i}"
            for j in (1, 2):
                layer(f"{p}.conv_{j}", getattr(block, f"conv_{j}"), SQRT2, bias=False)
                layer(f"{p}.style_{j}", getattr(block, f"style_{j}").weight, SQRT2)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and f"{name}.weight" not in mult:  # LIA's flow
            layer(name, module.weight, SQRT2, mapping_lrmul if name.startswith("mapping.") else 1.0)
    for name, _ in model.named_parameters():
        mult.setdefault(name, 1.0)
    return mult


class LREQAdam(torch.optim.Optimizer):
    """Adam whose step for each parameter is scaled by its multiplier (the official LREQAdam, plus beta1 > 0).

    With beta1 = 0 (the ALAE setting) no first moment is kept. State per parameter: `step`, `exp_avg_sq`
    (and `exp_avg` when beta1 > 0); it is saved by name through `named_state` / `load_named_state`.
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], multipliers: dict[str, float],
                 lr: float, betas: tuple[float, float] = (0.0, 0.99), eps: float = 1e-8):
        named = list(named_params)
        self.names = [n for n, _ in named]
        groups = [{"params": [p], "name": n, "lr_mult": multipliers[n]} for n, p in named]
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps})

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    def reset_state(self) -> None:
        """Forget the moments (the official trainer does this at every LOD switch)."""
        self.state.clear()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (p,) = group["params"]
            if p.grad is None:
                continue
            beta1, beta2 = group["betas"]
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg_sq"] = torch.zeros_like(p)
                if beta1 > 0:
                    state["exp_avg"] = torch.zeros_like(p)
            state["step"] += 1
            grad = p.grad
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            if beta1 > 0:
                grad = state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
            bias1 = 1 - beta1 ** state["step"]
            bias2 = 1 - beta2 ** state["step"]
            # The official form: lr * sqrt(bias2) / (sqrt(v) + eps), times the equalisation multiplier.
            step_size = group["lr"] * math.sqrt(bias2) / bias1 * group["lr_mult"]
            p.addcdiv_(grad, state["exp_avg_sq"].sqrt().add_(group["eps"]), value=-step_size)

    def named_state(self, prefix: str) -> tuple[dict[str, Tensor], dict[str, int]]:
        """(moment tensors by '<prefix>.<param>.<moment>', step counts by parameter name)."""
        tensors, steps = {}, {}
        for group in self.param_groups:
            state = self.state.get(group["params"][0])
            if state:
                steps[group["name"]] = state["step"]
                for key in ("exp_avg_sq", "exp_avg"):
                    if key in state:
                        tensors[f"{prefix}.{group['name']}.{key}"] = state[key]
        return tensors, steps

    def load_named_state(self, prefix: str, tensors: dict[str, Tensor], steps: dict[str, int]) -> None:
        self.state.clear()
        for group in self.param_groups:
            name, p = group["name"], group["params"][0]
            if name in steps:
                state = {"step": int(steps[name])}
                for key in ("exp_avg_sq", "exp_avg"):
                    if f"{prefix}.{name}.{key}" in tensors:
                        state[key] = tensors[f"{prefix}.{name}.{key}"].to(p.device, p.dtype).clone()
                self.state[p] = state
