"""impl="auto"|"triton"|"torch" of every op: auto falls back to the torch reference without CUDA or the
interpreter, "triton" then says what is missing, anything else is refused."""

import subprocess
import sys

import pytest
import torch
from _shapes import rand

from alae_rt.kernels import act_stats, act_stats_ref, modulate, modulate_ref, modulated_conv3x3, modulated_conv3x3_ref

_T, _M, _S, _B = rand(2, 3, 3, 5), rand(2, 3, seed=1), rand(2, 3, seed=2), rand(2, 3, seed=3)
OPS = {
    "act_stats": (act_stats, act_stats_ref, (_T, rand(2, 1, 3, 5, seed=4), rand(3, seed=5), rand(3, seed=6))),
    "modulate": (modulate, modulate_ref, (_T, _M, _S, _B)),
    "modulated_conv3x3": (modulated_conv3x3, modulated_conv3x3_ref, (_T, _M, _S, _B, rand(4, 3, 3, 3, seed=7))),
}


@pytest.mark.parametrize("op", list(OPS))
def test_auto_takes_the_reference_without_cuda_or_the_interpreter(op, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: auto takes Triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fn, ref, args = OPS[op]
    torch.testing.assert_close(fn(*args), ref(*args), atol=0, rtol=0)  # tensors or tuples of them
    with pytest.raises(RuntimeError, match="not on CUDA"):
        fn(*args, impl="triton")


@pytest.mark.parametrize("op", list(OPS))
def test_unknown_impl_is_refused(op):
    fn, _, args = OPS[op]
    with pytest.raises(ValueError, match="impl must be one of auto, triton, torch, got 'cuda'"):
        fn(*args, impl="cuda")


def test_the_references_import_without_triton():
    """network.py takes its constants and blur from alae_rt.kernels, whose op modules import triton only
    when a kernel launches: the references work where Triton is not installed."""
    code = ("import sys, alae_rt.network, alae_rt.kernels; "
            "assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_launch_fitting_takes_the_first_setting_that_fits_and_keeps_it():
    """Triton refuses a kernel whose shared memory overflows the device at launch (OutOfResources): the
    launcher tries the next, leaner setting and remembers the one that launched for that key."""
    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from alae_rt.kernels._dispatch import launch_fitting

    tried = []

    def launch(config):
        tried.append(config["stages"])
        if config["stages"] > 1:
            raise OutOfResources(385792, 232448, "shared memory")
        return "launched"

    configs = [{"stages": 3}, {"stages": 2}, {"stages": 1}]
    key = ("test_launch_fitting", object())
    assert launch_fitting(launch, key, configs) == "launched" and tried == [3, 2, 1]
    tried.clear()
    assert launch_fitting(launch, key, configs) == "launched" and tried == [1]  # the fitting one, at once
    with pytest.raises(OutOfResources):  # none fits: the device's own error, not a silent skip
        launch_fitting(launch, ("test_launch_fitting", object()), configs[:2])
