"""LIA's flow (alae_rt.flow): exactly invertible, its log-determinant equal to autograd's, identity when new."""

from __future__ import annotations

import pytest
import torch

from alae_rt.flow import AffineCoupling, CouplingFlow


def randomised(flow: CouplingFlow, seed: int = 0) -> CouplingFlow:
    """A flow whose couplings are not the identity (a new one's last layers are zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            scale = 1.0 / p.shape[1] ** 0.5 if p.ndim == 2 else 0.1  # trained-like: outputs of order 1
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return flow


def test_new_flow_is_the_identity():
    z = torch.randn(4, 6)
    flow = CouplingFlow(6, depth=3, hidden=8)
    y, logdet = flow.forward_and_logdet(z)
    assert torch.equal(y, z) and torch.equal(logdet, torch.zeros(4))


@pytest.mark.parametrize("d", [2, 7, 64])
@pytest.mark.parametrize("depth", [1, 2, 5])
def test_inverse_undoes_forward(d, depth):
    flow = randomised(CouplingFlow(d, depth, hidden=11)).double()
    z = torch.randn(9, d, dtype=torch.float64)
    y = flow(z)
    assert not torch.allclose(y, z)
    torch.testing.assert_close(flow.inverse(y), z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow(flow.inverse(z)), z, rtol=1e-12, atol=1e-12)


def test_float32_round_trip_is_exact_to_rounding():
    flow = randomised(CouplingFlow(64, 4, hidden=64), seed=3)
    z = torch.randn(256, 64)
    torch.testing.assert_close(flow.inverse(flow(z)), z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [2, 5])
def test_logdet_matches_the_jacobian(d):
    flow = randomised(CouplingFlow(d, 3, hidden=6), seed=1).double()
    z = torch.randn(3, d, dtype=torch.float64)
    _, logdet = flow.forward_and_logdet(z)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0], z[i])  # [d, d]
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac).logabsdet, rtol=1e-10, atol=1e-10)


def test_couplings_alternate_the_conditioning_half():
    a, b = AffineCoupling(5, 4, flip=False), AffineCoupling(5, 4, flip=True)
    randomised(a), randomised(b)
    x = torch.randn(2, 5)
    assert torch.equal(a(x)[0][:, :2], x[:, :2]) and not torch.allclose(a(x)[0][:, 2:], x[:, 2:])
    assert torch.equal(b(x)[0][:, 2:], x[:, 2:]) and not torch.allclose(b(x)[0][:, :2], x[:, :2])


def test_a_flow_needs_two_dimensions():
    with pytest.raises(ValueError, match="at least 2"):
        CouplingFlow(1, 2, hidden=4)


def test_gradients_reach_every_coupling():
    flow = randomised(CouplingFlow(6, 3, hidden=5))
    flow(torch.randn(4, 6)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
