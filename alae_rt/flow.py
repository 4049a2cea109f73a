"""LIA's invertible network between the prior z and the generator's latent y: RealNVP-style affine couplings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alae_rt.kernels.common import LRELU_SLOPE


class AffineCoupling(nn.Module):
    """One RealNVP affine coupling on vectors [N, D]: the conditioning part passes unchanged, the other part becomes
    x_b * exp(s) + t with (s, t) from an MLP of the conditioning part; s = tanh(raw), so each step scales by at
    most e. Parts: the first D // 2 entries and the rest; `flip` swaps which one conditions. The last layer starts
    at zero, so a new coupling is the identity."""

    def __init__(self, latent_size: int, hidden: int, flip: bool):
        super().__init__()
        self.split, self.flip = latent_size // 2, flip
        n_cond = latent_size - self.split if flip else self.split
        self.n_out = latent_size - n_cond
        dims = [n_cond, hidden, hidden, 2 * self.n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for layer in self.layers[:-1]:
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.in_features))
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning [N, n_cond], transformed [N, n_out])."""
        a, b = x[:, :self.split], x[:, self.split:]
        return (b, a) if self.flip else (a, b)

    def _join(self, cond: Tensor, out: Tensor) -> Tensor:
        return torch.cat((out, cond) if self.flip else (cond, out), dim=1)

    def _scale_shift(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = cond
        for layer in self.layers[:-1]:
            h = F.leaky_relu(layer(h), LRELU_SLOPE)
        s, t = self.layers[-1](h).split(self.n_out, dim=1)  # each [N, n_out]
        return torch.tanh(s), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(y [N, D], log |det dy/dx| [N])."""
        cond, b = self._parts(x)
        s, t = self._scale_shift(cond)
        return self._join(cond, b * torch.exp(s) + t), s.sum(dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        cond, b = self._parts(y)
        s, t = self._scale_shift(cond)
        return self._join(cond, (b - t) * torch.exp(-s))


class CouplingFlow(nn.Module):
    """y = phi(z): `depth` affine couplings, alternating which half conditions. Exactly invertible (up to float
    rounding): `inverse(forward(z)) == z`. forward(z) -> y is what the generator's mapping slot calls."""

    def __init__(self, latent_size: int, depth: int, hidden: int):
        super().__init__()
        if latent_size < 2:
            raise ValueError(f"a coupling flow needs latents of at least 2 entries, got {latent_size}")
        self.couplings = nn.ModuleList(AffineCoupling(latent_size, hidden, flip=k % 2 == 1) for k in range(depth))

    def forward(self, z: Tensor) -> Tensor:
        return self.forward_and_logdet(z)[0]

    def forward_and_logdet(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(y [N, D], log |det dy/dz| [N])."""
        logdet = z.new_zeros(z.shape[0])
        for coupling in self.couplings:
            z, ld = coupling(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, y: Tensor) -> Tensor:
        """z [N, D] from y [N, D]."""
        for coupling in reversed(self.couplings):
            y = coupling.inverse(y)
        return y
