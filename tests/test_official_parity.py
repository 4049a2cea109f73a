"""The network against the official code's outputs on official-format checkpoints (fp32, CPU, 1e-4)."""

from __future__ import annotations

import pytest
import torch
from helpers import FACES128, check_all_outputs, require
from helpers import PARITY_TOL as TOL

from alae_rt import Runtime, convert


def test_official_checkpoint_reproduces_every_output(official):
    folder, ref = official
    check_all_outputs(Runtime.load(folder / "checkpoint.pth"), ref)


def test_official_yaml_config_gives_the_same_outputs(official):
    folder, ref = official
    rt = Runtime.load(folder / "checkpoint.pth", config=folder / "config.yaml")
    assert rt.config.name == "config"
    check_all_outputs(rt, ref)


def test_converted_safetensors_reproduces_every_output(official, tmp_path):
    folder, ref = official
    dst = tmp_path / "model.safetensors"
    convert(folder / "checkpoint.pth", dst)
    check_all_outputs(Runtime.load(dst), ref)


def test_reconstruct_and_default_truncation_match(official):
    """The composite calls: reconstruct = decode(encode(x)); generate's psi/cutoff default to the config's."""
    folder, ref = official
    rt = Runtime.load(folder / "checkpoint.pth")
    assert (rt.config.truncation_psi, rt.config.truncation_cutoff) == (ref["truncation_psi"], ref["truncation_cutoff"])
    torch.testing.assert_close(rt.reconstruct(ref["x"], noise=ref["reconstruct_noise"]), ref["reconstruct_img"], **TOL)
    torch.testing.assert_close(rt.generate(z=ref["z"], noise=ref["generate_noise"]), ref["generate_img"], **TOL)


def test_chunked_batches_match_whole_batches(official):
    folder, ref = official
    rt = Runtime.load(folder / "checkpoint.pth", max_batch=1)
    check_all_outputs(rt, ref)


def test_image_files_preprocess_like_the_fixture_inputs(official):
    """The fixture's x came from shared/data/faces128 through the official preprocessing."""
    folder, ref = official
    rt = Runtime.load(folder / "checkpoint.pth")
    paths = [require(FACES128 / name) for name in ref["image_files"]]
    torch.testing.assert_close(rt.prepare_images(paths), ref["x"], atol=1e-5, rtol=0)
    torch.testing.assert_close(rt.encode(paths), ref["encode_w"], **TOL)


def test_uses_the_ema_copies_not_the_training_copies(official, tmp_path):
    """Swapping the EMA copies for the training ones changes the outputs: the loader must pick `_s`."""
    folder, ref = official
    ck = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)
    for name in ("discriminator", "generator", "mapping_tl", "mapping_fl"):
        ck["models"][name + "_s"] = ck["models"][name]
    swapped = tmp_path / "swapped.pth"
    torch.save(ck, swapped)
    w = Runtime.load(swapped).encode(ref["x"])
    assert not torch.allclose(w, ref["encode_w"], **TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 0.05)])
def test_low_precision_runs_close_to_fp32(official, dtype, tol):
    """fp16/bf16 eager: same outputs within a dtype-sized tolerance (max abs error on images in [-1, 1])."""
    folder, ref = official
    rt = Runtime.load(folder / "checkpoint.pth", dtype=dtype)
    img = rt.decode(ref["encode_w"], noise=ref["reconstruct_noise"])
    assert img.dtype == dtype
    assert (img.float() - ref["reconstruct_img"]).abs().max() < tol
