"""Data-parallel training: two gloo processes on the CPU, as torchrun starts them, keep identical weights - ALAE,
and IntroVAE and LIA, LIA across its stage switch (G and the flow broadcast from rank 0's EMA)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import write_images
from safetensors.torch import load_file, save_file

from alae_rt import ModelConfig
from alae_rt.methods import MethodConfig
from alae_rt.training.cli import distributed_setup
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import ImageSet, load_image_folder
from alae_rt.training.trainer import RunInfo, Trainer

STEPS = 4  # 4 px, then the 8 px block fading in (a LOD switch: optimiser reset, new parameters in use)
METHODS = ("alae", "introvae", "lia")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_alae(trainer_args: tuple, out: str, rank: int) -> None:
    cfg, data, folder, device, ddp = trainer_args
    trainer = Trainer(cfg, TrainConfig(lod_batch=(4,), lod_images=8), data, ImageSet(data.images[:0], []),
                      out, RunInfo(folder, "test", 0), device=device, ddp=ddp, say=lambda m: None)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train(STEPS, every=2, progress=False)
    state = {f"final.{k}": v for k, v in trainer.model.state_dict().items()}
    state.update({f"initial.{k}": v for k, v in initial.items()})
    enc, _ = trainer.opt_enc.named_state("opt")
    state.update(enc)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"rank{rank}.safetensors"))


def train_method(trainer_args: tuple, out: str, rank: int, method: str) -> None:
    cfg, data, folder, device, ddp = trainer_args
    tcfg = TrainConfig(lod_batch=(4,), lod_images=8, lia_gan_steps=2)
    trainer = Trainer(cfg, tcfg, data, ImageSet(data.images[:0], []), out, RunInfo(folder, "test", 0),
                      device=device, ddp=ddp, say=lambda m: None, method=MethodConfig.of(method, cfg))
    trainer.train(STEPS, every=STEPS, progress=False)
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))


def worker(rank: int, world: int, port: int, folder: str, out: str) -> None:
    # The environment torchrun gives each process; distributed_setup joins the gloo group from it. One group
    # trains the three methods in turn, each into its own folder: a spawned process pays for importing torch.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ddp, device = distributed_setup("cpu")
    try:
        cfg = ModelConfig.preset("tiny")
        data = load_image_folder(folder, cfg.resolution, cfg.channels)
        trainer_args = (cfg, data, folder, device, ddp)
        for method in METHODS:
            run = os.path.join(out, method)
            if method == "alae":
                train_alae(trainer_args, run, rank)
            else:
                train_method(trainer_args, run, rank, method)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The three methods trained by two gloo ranks: <runs>/<method>/rank{0,1}.safetensors and rank 0's run files."""
    base = tmp_path_factory.mktemp("ddp")
    folder = write_images(base / "images", 12)
    out = base / "runs"
    for method in METHODS:
        (out / method).mkdir(parents=True)
    mp.spawn(worker, args=(2, free_port(), str(folder), str(out)), nprocs=2, join=True)
    return out


def both_ranks(run: Path) -> tuple[dict, dict]:
    r0, r1 = (load_file(run / f"rank{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), [k for k in r0 if not torch.equal(r0[k], r1[k])]
    return r0, r1


def test_two_gloo_ranks_keep_identical_weights(runs):
    out = runs / "alae"
    r0, _ = both_ranks(out)
    final = [k for k in r0 if k.startswith("final.")]
    changed = [k for k in final if not torch.equal(r0[k], r0["initial." + k[len("final."):]])]
    assert len(changed) > len(final) // 2  # it trained, and both ranks moved the same way
    # Only rank 0 wrote the run's files, and its checkpoint has the synced weights' EMA.
    assert (out / "checkpoint.safetensors").is_file() and (out / "train_state.safetensors").is_file()
    state = load_file(out / "train_state.safetensors")
    assert "rng.latent.0" in state and "rng.latent.1" in state
    assert not torch.equal(state["rng.latent.0"], state["rng.latent.1"])  # each rank its own latents


@pytest.mark.parametrize("method", ["introvae", "lia"])
def test_two_gloo_ranks_keep_identical_weights_for_each_method(runs, method):
    both_ranks(runs / method)
