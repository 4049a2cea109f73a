"""The eager backend's per-call work at batch 1 against the official order's: launches, host syncs, host tensors.

At batch 1 a GPU waits on the host, so each launch, each read-back (.item(), bool(tensor), nonzero) and each tensor
made on the host and copied over costs time there. Counted on the meta device (shapes only, no memory), so the real
ffhq-1024 network runs in a fraction of a second: every op the dispatcher sees that is not a view or a bare
allocation would launch a kernel on a GPU.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alae_rt import ModelConfig
from alae_rt.backends import create_backend
from alae_rt.network import StyleALAE

META = torch.device("meta")
NO_LAUNCH = {"empty", "empty_strided"}  # allocations; views are known by their schema (OpOverload.is_view)
HOST_SYNCS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "allclose"}
# Launches eager may make beyond the official order's. At ffhq-1024, batch 1: decode 172 against 172, encode 252
# against 263; eager made 220 and 308 when each blur built its weight at every call (six launches a blur).
MARGIN = 0


class _Ops(TorchDispatchMode):
    """The ops one call dispatches: their names, the launches among them, and any that leave the model's device."""

    def __init__(self):
        super().__init__()
        self.launches: Counter[str] = Counter()
        self.off_device: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_SYNCS:
            raise AssertionError(f"aten.{name}: a host-device sync inside the call")
        out = func(*args, **(kwargs or {}))
        if not func.is_view and name not in NO_LAUNCH:
            self.launches[name] += 1
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device != META for t in tensors):
            self.off_device.append(f"{func}: {[str(t.device) for t in tensors]}")
        return out


@pytest.fixture(scope="module")
def ffhq_on_meta():
    cfg = ModelConfig.preset("ffhq-1024")
    with META:
        model = StyleALAE(cfg)
    model = model.to(META).eval().requires_grad_(False)  # as the Runtime moves it: constants made on the CPU too
    styles = torch.empty(1, cfg.num_styles, cfg.latent_size, device=META)  # [N, 2L, D]
    noise = [torch.empty(1, 1, r, r, device=META) for r in cfg.block_resolutions for _ in (1, 2)]
    x = torch.empty(1, cfg.channels, cfg.resolution, cfg.resolution, device=META)  # [N, C, R, R]
    return model, {"decode": lambda b: b.decode(styles, noise), "encode": lambda b: b.encode(x)}


def _ops(model, calls, backend: str, op: str) -> _Ops:
    b = create_backend(backend, model, META)
    with torch.no_grad():  # composite ops decompose as under autograd: convolution, addmm, native_batch_norm
        calls[op](b)  # anything made once, on first use, is made here
        with _Ops() as ops:
            calls[op](b)
    return ops


@pytest.mark.parametrize("op", ["decode", "encode"])
def test_eager_launches_no_more_kernels_than_the_official_order_at_batch_1(ffhq_on_meta, op):
    model, calls = ffhq_on_meta
    eager, official = (_ops(model, calls, b, op) for b in ("eager", "official"))
    n_eager, n_official = eager.launches.total(), official.launches.total()
    extra = dict(eager.launches - official.launches)
    assert n_eager <= n_official + MARGIN, f"{op}: eager {n_eager} launches, official {n_official}; extra: {extra}"


@pytest.mark.parametrize("backend", ["eager", "official"])
@pytest.mark.parametrize("op", ["decode", "encode"])
def test_a_call_makes_no_host_tensor_and_reads_nothing_back(ffhq_on_meta, backend, op):
    """Every tensor an op takes or makes is on the model's device: nothing made on the host and copied over, no
    constant left behind on the CPU; and no op reads a value back (the dispatch mode raises on one)."""
    model, calls = ffhq_on_meta
    ops = _ops(model, calls, backend, op)
    assert not ops.off_device, "\n".join(ops.off_device[:5])
