"""IntroVAE and LIA under DistributedDataParallel: two gloo processes keep identical weights, LIA across its stage
switch (G and the flow broadcast from rank 0's EMA)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from test_train_ddp import free_port

from alae_rt import ModelConfig
from alae_rt.methods import MethodConfig
from alae_rt.training.cli import distributed_setup
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import ImageSet, load_image_folder
from alae_rt.training.trainer import RunInfo, Trainer

STEPS = 4


def worker(rank: int, world: int, port: int, folder: str, out: str, method: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ddp, device = distributed_setup("cpu")
    try:
        cfg = ModelConfig.preset("tiny")
        data = load_image_folder(folder, cfg.resolution, cfg.channels)
        tcfg = TrainConfig(lod_batch=(4,), lod_images=8, lia_gan_steps=2)
        trainer = Trainer(cfg, tcfg, data, ImageSet(data.images[:0], []), out, RunInfo(folder, "test", 0),
                          device=device, ddp=ddp, say=lambda m: None, method=MethodConfig.of(method, cfg))
        trainer.train(STEPS, every=STEPS, progress=False)
        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("method", ["introvae", "lia"])
def test_two_gloo_ranks_keep_identical_weights(image_folder, tmp_path, method):
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(worker, args=(2, free_port(), str(image_folder), str(out), method), nprocs=2, join=True)
    r0, r1 = (load_file(out / f"rank{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), [k for k in r0 if not torch.equal(r0[k], r1[k])]
