"""The training loop: progressive phases, optimisers, EMA, checkpoints with exact resume, grids, curves, PSNR."""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from alae_rt.checkpoint import read_safetensors, save_checkpoint, write_safetensors
from alae_rt.config import ModelConfig
from alae_rt.directions import labelled_grid
from alae_rt.errors import CheckpointError, InputError
from alae_rt.evaluation import psnr_db
from alae_rt.images import make_grid, save_image, to_uint8
from alae_rt.methods import MethodConfig, build_model
from alae_rt.training.alae import ALAESteps, ema_update
from alae_rt.training.augment import augment_reals
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import BatchSampler, ImageSet, blend_reals, make_batch, to_float
from alae_rt.training.introvae import IntroVAESteps
from alae_rt.training.lia import LIASteps
from alae_rt.training.losses import latent_loss, pixel_loss
from alae_rt.training.optim import LREQAdam, lr_multipliers
from alae_rt.training.schedule import Phase, phase_at

STATE_FILE = "train_state.safetensors"  # everything to resume: weights, EMA, optimisers, RNG streams, history
CHECKPOINT_FILE = "checkpoint.safetensors"  # the EMA weights: what Runtime.load and the exporters read
HISTORY_COLUMNS = ("step", "images", "lod", "blend", "loss_d", "loss_g", "loss_ae", "loss_pix",
                   "images_per_s")
GRID_SEED = 1234  # fixed latents and noise of the sample grids, so grids of one run compare over time
MIN_GRID_SIDE = 64  # low-LOD images are enlarged (nearest) to at least this in the grids
# A method's updates (alae_rt.methods lists the methods); each is a module like ALAESteps.
METHOD_STEPS: dict[str, type[ALAESteps]] = {"alae": ALAESteps, "introvae": IntroVAESteps, "lia": LIASteps}
METHOD_LABELS = {"alae": "ALAE", "introvae": "IntroVAE", "lia": "LIA"}


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class RunInfo:
    """What the run was made from, stored with its checkpoints (the model card's provenance)."""

    data: str
    command: str
    holdout: int
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Training of one StyleALAE-family network on an image set with a method (ALAE by default; IntroVAE, LIA:
    alae_rt.methods); rank 0 writes everything under `out`."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, train: ImageSet, holdout: ImageSet,
                 out: str | Path, info: RunInfo, device: torch.device | str = "cpu",
                 ddp: Distributed | None = None, say: Callable[[str], None] | None = None,
                 method: MethodConfig | None = None):
        self.mcfg, self.cfg = model_cfg, train_cfg
        self.method = method or MethodConfig()
        self.train_set, self.holdout = train, holdout
        self.out = Path(out)
        self.info = info
        self.device = torch.device(device)
        self.ddp = ddp or Distributed()
        self.say = say or (lambda m: print(m, file=sys.stderr))
        if len(train) == 0:
            raise InputError("no training images left after the held-out split")
        for lod in range(model_cfg.layer_count):
            if train_cfg.batch(lod) % self.ddp.world:
                raise InputError(f"batch {train_cfg.batch(lod)} (LOD {lod}) does not split over {self.ddp.world} "
                                 "processes; make every per-LOD batch a multiple of the process count")
        torch.manual_seed(train_cfg.seed)  # the initial weights: the same on every rank
        self.model = build_model(model_cfg, self.method).to(self.device)
        self.steps_module = METHOD_STEPS[self.method.name](self.model, train_cfg)
        self.steps_module.init_latent_average(torch.Generator().manual_seed(train_cfg.seed))
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval() if self.ddp.main else None
        self.runner: torch.nn.Module = self.steps_module
        if self.ddp.world > 1:
            self.runner = torch.nn.parallel.DistributedDataParallel(
                self.steps_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        mult = lr_multipliers(self.model, train_cfg.mapping_lrmul)
        named = dict(self.model.named_parameters())
        betas, eps, lr = train_cfg.adam_betas, train_cfg.adam_eps, train_cfg.lr(0)
        # The official optimiser groups: E with D (and LIA's image discriminator), and G with F.
        self.opt_enc = LREQAdam([(n, p) for n, p in named.items() if n.startswith(("encoder.", "head.", "critic."))],
                                mult, lr, betas, eps)
        self.opt_dec = LREQAdam([(n, p) for n, p in named.items() if n.startswith(("generator.", "mapping."))],
                                mult, lr, betas, eps)
        self.sampler = BatchSampler(len(train), train_cfg.seed, train_cfg.flip)
        self.gen = torch.Generator(device=self.device).manual_seed(train_cfg.seed * 1000 + 1 + self.ddp.rank)
        self.step = 0
        self.images_seen = 0
        self.wall_s = 0.0  # training time over all sessions of the run
        self.lod: int | None = None  # the LOD of the last step, to reset the optimisers at a switch
        self.history: list[list[float]] = []
        self.psnr_history: list[list[float]] = []  # [step, resolution, dB]
        # Encoder refinement (after training): its step count, [step, pixel loss, latent loss] and optimiser.
        self.refine_step = 0
        self.refine_history: list[list[float]] = []
        self.refine_info: dict[str, Any] = {}
        self.opt_refine: LREQAdam | None = None
        # A method's later stage (LIA's encoder training) runs at the phase where its first stage ended.
        self.stage = 0
        self.stage_phase: Phase | None = None
        self._stop = False

    # ---- one iteration --------------------------------------------------------------------------------------
    def phase(self) -> Phase:
        if self.stage_phase is not None:
            return self.stage_phase
        return phase_at(self.images_seen, self.cfg, self.mcfg.layer_count)

    def enter_stage(self, stage: int) -> None:
        """Start a method's later stage (LIA's second: E trained against the frozen G and flow). G, F and
        dlatent_avg become the EMA's - the weights that are served, so E learns to invert those - the phase stays
        where the first stage ended and the optimisers start afresh."""
        self.stage_phase = self.phase_of_last_step()
        self.stage = stage
        parts = ("generator", "mapping")
        with torch.no_grad():
            for part in parts:
                target = getattr(self.model, part)
                if self.ema is not None:
                    target.load_state_dict(getattr(self.ema, part).state_dict())
                if self.ddp.world > 1:
                    for t in target.state_dict().values():
                        dist.broadcast(t, 0)
            if self.ema is not None:
                self.model.dlatent_avg.copy_(self.ema.dlatent_avg)
            if self.ddp.world > 1:
                dist.broadcast(self.model.dlatent_avg, 0)
        self.opt_enc.reset_state()
        self.opt_dec.reset_state()
        self.say(f"step {self.step}: {METHOD_LABELS[self.method.name]} stage {stage + 1} starts at "
                 f"{self.stage_phase.resolution}px; {', '.join(parts)} frozen at their EMA weights")

    def train_step(self) -> dict[str, float]:
        """One iteration of the method (ALAE: steps I, II, III) on the next batch; returns its losses."""
        stage = self.steps_module.stage_at(self.step)
        if stage != self.stage:
            self.enter_stage(stage)
        ph = self.phase()
        if ph.lod != self.lod:
            if self.lod is not None:  # a switch: fresh moments, as the official trainer
                self.opt_enc.reset_state()
                self.opt_dec.reset_state()
            self.lod = ph.lod
        for opt in (self.opt_enc, self.opt_dec):
            opt.set_lr(ph.lr)
        indices, flips = self.sampler.next(ph.batch, self.ddp.rank, self.ddp.world)
        reals = make_batch(self.train_set, indices, flips, ph.resolution, ph.blend).to(self.device)
        reals = augment_reals(reals, self.cfg.augment, self.gen)
        losses = self.steps_module.update(self.runner, reals, ph.lod, ph.blend, self.gen, self.opt_enc, self.opt_dec,
                                          self.step)
        if self.ema is not None:
            ema_update(self.ema, self.model, self.cfg.ema_beta(ph.batch))
        self.step += 1
        self.images_seen += ph.batch
        if self.ddp.world > 1:
            dist.all_reduce(losses)
            losses /= self.ddp.world
        d, g, ae, pix = losses.tolist()
        if not all(math.isfinite(v) for v in (d, g, ae, pix)):
            raise FloatingPointError(f"step {self.step}: non-finite loss (d={d}, g={g}, ae={ae}, pixel={pix})")
        return {"loss_d": d, "loss_g": g, "loss_ae": ae, "loss_pix": pix, "lod": ph.lod, "blend": ph.blend,
                "batch": ph.batch}

    # ---- the loop ---------------------------------------------------------------------------------------------
    def train(self, steps: int, every: int = 500, progress: bool = True, log_every: int = 10) -> None:
        """Run until `steps` iterations in all (counting those of earlier sessions); every `every` steps (and at
        the end, or on Ctrl-C / SIGTERM) write the checkpoint, grids, loss curves and held-out PSNR."""
        from tqdm import tqdm

        if self.refine_step:
            raise InputError("this run's encoder has been refined (--refine-encoder); more ALAE training would "
                             "undo it through the EMA - refine after the last training session")
        if self.step >= steps:
            self.say(f"already at step {self.step} of {steps}; nothing to do")
            return
        bar = tqdm(total=steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not (progress and self.ddp.main), dynamic_ncols=True)
        previous = self._install_signal_handlers()
        say = self.say
        if not bar.disable:  # notes go above the progress bar, not into it
            def say_above_bar(message: str) -> None:
                with tqdm.external_write_mode(file=sys.stderr):
                    say(message)

            self.say = say_above_bar
        rate = None
        log = (self.out / "log.jsonl").open("a") if self.ddp.main else None
        try:
            while self.step < steps:
                t0 = time.perf_counter()
                stats = self.train_step()
                dt = time.perf_counter() - t0
                self.wall_s += dt
                ips = stats["batch"] / dt
                rate = ips if rate is None else 0.9 * rate + 0.1 * ips
                self.history.append([self.step, self.images_seen, stats["lod"], stats["blend"], stats["loss_d"],
                                     stats["loss_g"], stats["loss_ae"], stats["loss_pix"], ips])
                bar.set_postfix_str(f"{4 * 2 ** stats['lod']}px blend {stats['blend']:.2f} d {stats['loss_d']:.3f} "
                                    f"g {stats['loss_g']:.3f} ae {stats['loss_ae']:.4f} {rate:.1f} img/s")
                bar.update(1)
                if log is not None and (self.step % log_every == 0 or self.step == steps):
                    log.write(json.dumps(dict(zip(HISTORY_COLUMNS, self.history[-1]))) + "\n")
                    log.flush()
                stop = self._should_stop()
                if stop or self.step % every == 0 or self.step == steps:
                    self.snapshot()
                if stop:
                    self.say(f"interrupted: stopped after step {self.step}; the checkpoint in {self.out} is "
                             "complete - continue with --resume")
                    raise KeyboardInterrupt
        finally:
            self.say = say
            bar.close()
            if log is not None:
                log.close()
            self._restore_signal_handlers(previous)

    # ---- encoder refinement -----------------------------------------------------------------------------------
    def refine_encoder(self, steps: int, lr: float, latent_weight: float = 1.0, every: int = 500,
                       progress: bool = True, command: str = "") -> None:
        """The second stage of LIA applied to ALAE: G, F and D frozen (the EMA weights, what is served), E trained
        on ||G(E(x)) - x||^2 over the training images (with the run's augmentation), plus `latent_weight` *
        ||E(G(w)) - w||^2 on w = F(z) so that E keeps mapping generated images to their w. Runs until `steps`
        refinement steps in all; the EMA checkpoint then carries the refined E. One process only."""
        from tqdm import tqdm

        if self.ddp.world > 1:
            raise InputError("--refine-encoder runs in one process (not under torchrun)")
        if self.method.name != "alae":
            raise InputError(f"--refine-encoder refines ALAE runs; this one is {self.method.name}"
                             + (" (its own second stage trains the encoder: --lia-gan-steps)"
                                if self.method.name == "lia" else ""))
        ph = self.phase_of_last_step()
        if ph.lod != self.mcfg.layer_count - 1 or ph.blend < 1.0:
            raise InputError(f"the run is still growing ({ph.resolution}px, blend {ph.blend:.2f}); train it to "
                             f"{self.mcfg.resolution}px before --refine-encoder")
        if self.refine_step >= steps:
            self.say(f"encoder refinement already at step {self.refine_step} of {steps}; nothing to do")
            return
        model = self.ema
        model.requires_grad_(False)
        model.encoder.requires_grad_(True)
        if self.opt_refine is None:
            self.opt_refine = self._refine_optimiser(lr)
        self.opt_refine.set_lr(lr)
        self.refine_info = {"lr": lr, "latent_weight": latent_weight, "command": command or
                            self.refine_info.get("command", "")}
        steps_module = ALAESteps(model, self.cfg)
        lod, n_styles = ph.lod, self.mcfg.num_styles
        bar = tqdm(total=steps, initial=self.refine_step, desc="refine encoder", unit="step", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        previous = self._install_signal_handlers()
        try:
            while self.refine_step < steps:
                t0 = time.perf_counter()
                indices, flips = self.sampler.next(ph.batch)
                x = make_batch(self.train_set, indices, flips, ph.resolution, 1.0).to(self.device)
                x = augment_reals(x, self.cfg.augment, self.gen)
                n = x.shape[0]
                w = model.encoder(x, lod=lod, blend=1.0)
                rec = model.generator(w[:, None].expand(-1, n_styles, -1), steps_module.noise(n, lod, self.gen),
                                      lod=lod, blend=1.0)
                pix = pixel_loss(rec, x)
                lat = torch.zeros_like(pix)
                if latent_weight > 0:
                    with torch.no_grad():
                        w_gen = steps_module.map_latents(n, self.gen, track=False)  # dlatent_avg stays as trained
                        fakes = model.generator(w_gen[:, None].expand(-1, n_styles, -1),
                                                steps_module.noise(n, lod, self.gen), lod=lod, blend=1.0)
                    lat = latent_loss(model.encoder(fakes, lod=lod, blend=1.0), w_gen)
                self.opt_refine.zero_grad(set_to_none=True)
                (pix + latent_weight * lat).backward()
                self.opt_refine.step()
                self.refine_step += 1
                self.wall_s += time.perf_counter() - t0
                self.refine_history.append([self.refine_step, pix.item(), lat.item()])
                if not math.isfinite(self.refine_history[-1][1] + self.refine_history[-1][2]):
                    raise FloatingPointError(f"refinement step {self.refine_step}: non-finite loss")
                bar.set_postfix_str(f"pixel {pix.item():.4f} latent {lat.item():.4f}")
                bar.update(1)
                stop = self._stop
                if stop or self.refine_step % every == 0 or self.refine_step == steps:
                    self.snapshot()
                if stop:
                    self.say(f"interrupted: stopped after refinement step {self.refine_step}; continue with "
                             "--refine-encoder --resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()
            self._restore_signal_handlers(previous)
            model.requires_grad_(False)

    def _refine_optimiser(self, lr: float) -> LREQAdam:
        """Adam over the EMA model's encoder: what refinement trains."""
        named = [(f"encoder.{n}", p) for n, p in self.ema.encoder.named_parameters()]
        return LREQAdam(named, lr_multipliers(self.ema, self.cfg.mapping_lrmul), lr, self.cfg.adam_betas,
                        self.cfg.adam_eps)

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}

        def handler(signum, frame):
            if self._stop:  # a second Ctrl-C: stop now; the files on disk are the last complete ones
                raise KeyboardInterrupt
            self._stop = True
            if self.ddp.main:
                print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    def _should_stop(self) -> bool:
        if self.ddp.world == 1:
            return self._stop
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # all ranks stop at the same step
        return bool(flag.item() > 0)

    # ---- outputs ------------------------------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Checkpoint + training state (rank 0 writes; the latent RNG states of all ranks are gathered), then
        grids, loss curves and the held-out PSNR."""
        latent_states = self._gather_latent_states()
        if not self.ddp.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        ph = self.phase_of_last_step()
        if len(self.holdout):
            db = self.holdout_psnr(ph)
            self.psnr_history.append([self.step, ph.resolution, db])
        self.save_state(latent_states)
        self.save_checkpoint()
        self.write_grids(ph)
        self.plot_curves()
        line = f"step {self.step}: {self.images_seen} images, {ph.resolution}px (blend {ph.blend:.2f})"
        if self.history:
            d, g, ae = self.history[-1][4:7]
            line += f", losses d {d:.3f} g {g:.3f} ae {ae:.4f}"
            if self.history[-1][7] > 0:
                line += f" pixel {self.history[-1][7]:.4f}"
        if self.refine_step:
            line += f"; encoder refined {self.refine_step} steps (pixel {self.refine_history[-1][1]:.4f})"
        if len(self.holdout):
            line += f", held-out PSNR {self.psnr_history[-1][2]:.2f} dB"
        self.say(line + f"; saved to {self.out}")

    def phase_of_last_step(self) -> Phase:
        """The phase the weights were last trained in (the one grids and PSNR must use)."""
        if not self.history:
            return self.phase()
        lod, blend = int(self.history[-1][2]), float(self.history[-1][3])
        return Phase(lod, blend, self.cfg.batch(lod), self.cfg.lr(lod))

    def _gather_latent_states(self) -> list[Tensor]:
        state = self.gen.get_state()
        if self.ddp.world == 1:
            return [state]
        # Gloo and NCCL gather tensors of one shape on the collective's device.
        local = state.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.ddp.world)]
        dist.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def inference_state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}

    def provenance(self) -> dict[str, Any]:
        ph = self.phase_of_last_step()
        res = self.mcfg.resolution
        note = "" if ph.lod == self.mcfg.layer_count - 1 and ph.blend >= 1.0 else \
            f"; still growing: trained up to {ph.resolution}px, higher blocks untrained"
        return {
            "description": f"{METHOD_LABELS[self.method.name]}-trained {self.mcfg.name} ({res}px) on "
                           f"{Path(self.info.data).name}, {self.step} steps, {self.images_seen} images, "
                           f"EMA weights{note}",
            "method": self.method.name,
            "dataset": self.info.data,
            "train_images": len(self.train_set),
            "holdout_images": len(self.holdout),
            "steps": self.step,
            "images_seen": self.images_seen,
            "trained_resolution": ph.resolution,
            "blend": ph.blend,
            "wall_time_s": round(self.wall_s, 1),
            "world_size": self.ddp.world,
            "device": str(self.device),
            "command": self.info.command,
            "train_config": json.loads(self.cfg.to_json()),
            "heldout_psnr_db": self.psnr_history[-1][2] if self.psnr_history else None,
            **({"encoder_refinement": {"steps": self.refine_step, **self.refine_info}} if self.refine_step else {}),
            **self.info.extra,
        }

    def save_checkpoint(self, path: str | Path | None = None, dtype: torch.dtype | None = None) -> Path:
        """The EMA weights in our safetensors format (write, then rename)."""
        return save_checkpoint(path or self.out / CHECKPOINT_FILE, self.inference_state(), self.mcfg,
                               self.provenance(), dtype=dtype, method=self.method)

    def save_state(self, latent_states: list[Tensor]) -> Path:
        """Everything to resume exactly, in one safetensors file (tensors + JSON metadata; no pickle)."""
        tensors: dict[str, Tensor] = {}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        enc, enc_steps = self.opt_enc.named_state("opt.enc")
        dec, dec_steps = self.opt_dec.named_state("opt.dec")
        tensors.update(enc)
        tensors.update(dec)
        tensors.update({f"rng.data.{k}": v for k, v in self.sampler.state().items()})
        for rank, state in enumerate(latent_states):
            tensors[f"rng.latent.{rank}"] = state
        tensors["history"] = torch.tensor(self.history, dtype=torch.float64).reshape(-1, len(HISTORY_COLUMNS))
        tensors["psnr_history"] = torch.tensor(self.psnr_history, dtype=torch.float64).reshape(-1, 3)
        if self.refine_step:
            tensors["refine_history"] = torch.tensor(self.refine_history, dtype=torch.float64).reshape(-1, 3)
            refine, refine_steps = self.opt_refine.named_state("opt.refine")
            tensors.update(refine)
        meta = {
            "format": "alae-rt-train-state",
            "model_config": self.mcfg.to_json(),
            "train_config": self.cfg.to_json(),
            "step": str(self.step),
            "images_seen": str(self.images_seen),
            "lod": "" if self.lod is None else str(self.lod),
            "wall_s": repr(self.wall_s),
            "world_size": str(self.ddp.world),
            "opt_steps": json.dumps({"enc": enc_steps, "dec": dec_steps,
                                     **({"refine": refine_steps} if self.refine_step else {})}),
            "refine": json.dumps({"step": self.refine_step, **self.refine_info}),
            **self.method.to_metadata(),
            "stage": json.dumps({"stage": self.stage, **({"lod": self.stage_phase.lod, "blend": self.stage_phase.blend}
                                                          if self.stage_phase is not None else {})}),
            "run": json.dumps({"data": self.info.data, "command": self.info.command, "holdout": self.info.holdout,
                               "extra": self.info.extra}),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return write_safetensors(self.out / STATE_FILE, tensors, meta)

    def load_state(self, path: str | Path) -> None:
        """Continue exactly where a run stopped: weights, EMA, optimiser moments, RNG streams, counters."""
        tensors, meta = read_state(path)
        found = MethodConfig.from_metadata(meta, str(path))
        if found != self.method:
            raise InputError(f"{path}: the run trains {found.name} {found.to_dict()}, this trainer {self.method.name} "
                             f"{self.method.to_dict()}; resume a run with its own method")
        world = int(meta["world_size"])
        if world != self.ddp.world:
            raise InputError(f"{path}: the run used {world} process(es); resume it with the same number "
                             f"(this job has {self.ddp.world})")
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model)
        if self.ema is not None:
            self.ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
        steps = json.loads(meta["opt_steps"])
        self.opt_enc.load_named_state("opt.enc", tensors, steps["enc"])
        self.opt_dec.load_named_state("opt.dec", tensors, steps["dec"])
        self.sampler.load_state({k[len("rng.data."):]: v for k, v in tensors.items() if k.startswith("rng.data.")})
        self.gen.set_state(tensors[f"rng.latent.{self.ddp.rank}"])
        self.step = int(meta["step"])
        self.images_seen = int(meta["images_seen"])
        self.lod = int(meta["lod"]) if meta["lod"] else None
        self.wall_s = float(meta["wall_s"])
        history = tensors["history"]
        if history.shape[1] == len(HISTORY_COLUMNS) - 1:  # a run saved before the pixel term: its loss was 0
            history = torch.cat([history[:, :7], torch.zeros_like(history[:, :1]), history[:, 7:]], dim=1)
        self.history = history.tolist()
        self.psnr_history = tensors["psnr_history"].tolist()
        stage = json.loads(meta.get("stage", "{}"))
        self.stage = int(stage.get("stage", 0))
        self.stage_phase = None
        if "lod" in stage:
            lod = int(stage["lod"])
            self.stage_phase = Phase(lod, float(stage["blend"]), self.cfg.batch(lod), self.cfg.lr(lod))
        refine = json.loads(meta.get("refine", "{}"))
        self.refine_step = int(refine.pop("step", 0))
        self.refine_info = refine
        if self.refine_step:
            self.refine_history = tensors["refine_history"].tolist()
            self.opt_refine = self._refine_optimiser(refine["lr"])
            self.opt_refine.load_named_state("opt.refine", tensors, steps["refine"])

    # ---- grids, PSNR, curves ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, styles: Tensor, ph: Phase) -> Tensor:
        gen = torch.Generator().manual_seed(GRID_SEED)
        maps = ALAESteps(self.ema, self.cfg).noise(styles.shape[0], ph.lod, gen)
        maps = [m if m is None else m.to(self.device) for m in maps]
        return self.ema.generator(styles, maps, lod=ph.lod, blend=ph.blend)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, ph: Phase) -> tuple[Tensor, Tensor]:
        """(reals, EMA reconstructions), both float [N, C, r, r] at the phase's resolution and blend."""
        x = blend_reals(to_float(images, ph.resolution), ph.blend).to(self.device)
        w = self.ema.encoder(x, lod=ph.lod, blend=ph.blend)
        return x, self._decode(w[:, None].expand(-1, self.mcfg.num_styles, -1), ph)

    def holdout_psnr(self, ph: Phase) -> float:
        x, rec = self.reconstruct(self.holdout.images, ph)
        return psnr_db(to_uint8(x), to_uint8(rec))

    def write_grids(self, ph: Phase) -> None:
        """samples.png (16 EMA samples, psi 0.7) and reconstructions.png (training, then held-out, images, each beside
        its reconstruction, under labels saying which)."""
        scale = max(1, MIN_GRID_SIDE // ph.resolution)

        def big(x: Tensor) -> np.ndarray:
            return to_uint8(x.repeat_interleave(scale, -1).repeat_interleave(scale, -2))

        gen = torch.Generator().manual_seed(GRID_SEED)
        z = torch.randn(16, self.mcfg.latent_size, generator=gen).to(self.device)
        cutoff = self.mcfg.truncation_cutoff if self.method.per_layer_styles else self.mcfg.num_styles
        with torch.no_grad():
            styles = self.ema.mapping(z)[:, None].expand(-1, self.mcfg.num_styles, -1)
            styles = self.ema.truncate(styles, self.mcfg.truncation_psi, cutoff)
        samples = big(self._decode(styles, ph))
        save_image(make_grid([list(samples[i:i + 8]) for i in (0, 8)]), self.out / "samples.png")
        blocks, titles = [], []
        for images, which in ((self.train_set.images[:8], "training images"),
                              (self.holdout.images[:8], "held-out images (never trained on)")):
            if len(images):
                x, rec = self.reconstruct(images, ph)
                pairs = [img for pair in zip(big(x), big(rec)) for img in pair]
                blocks.append([pairs[i:i + 8] for i in range(0, len(pairs), 8)])  # 4 (real, reconstruction) a row
                titles.append(f"{which}: each real, then its reconstruction ({ph.resolution}x{ph.resolution}"
                              f"{', enlarged' if scale > 1 else ''})")
        grid = labelled_grid(blocks, titles, ["real", "recon."] * 4, cell=None)
        save_image(grid, self.out / "reconstructions.png")

    def plot_curves(self) -> None:
        """losses.png: the three losses and the held-out PSNR against images shown, LOD switches marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.history:
            return
        h = np.asarray(self.history)
        kimg = h[:, 1] / 1000.0
        fig, axes = plt.subplots(1, 3 if self.psnr_history else 2, figsize=(15, 4), squeeze=False)
        axes = axes[0]
        labels = self.steps_module.loss_labels
        axes[0].plot(kimg, h[:, 4], label=labels[0], lw=0.8)
        axes[0].plot(kimg, h[:, 5], label=labels[1], lw=0.8)
        axes[0].legend()
        if np.any(h[:, 6] > 0):
            axes[1].semilogy(kimg, h[:, 6], label=labels[2], color="C2", lw=0.8)
        if np.any(h[:, 7] > 0):
            axes[1].semilogy(kimg, h[:, 7], label=labels[3], color="C4", lw=0.8)
        if axes[1].lines:
            axes[1].legend()
        if self.psnr_history:
            p = np.asarray(self.psnr_history)
            images = np.interp(p[:, 0], h[:, 0], h[:, 1]) / 1000.0
            axes[2].plot(images, p[:, 2], "o-", color="C3", label="held-out reconstruction PSNR (dB)")
            axes[2].legend()
        switches = kimg[1:][np.diff(h[:, 2]) != 0]
        for ax in axes:
            for s in switches:
                ax.axvline(s, color="grey", lw=0.5, ls="--")
            ax.set_xlabel("thousands of images shown (dashed: LOD switches)")
        fig.tight_layout()
        fig.savefig(self.out / "losses.png", dpi=100)
        plt.close(fig)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def read_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a training-state file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from (expected {STATE_FILE} in the run folder)")
    tensors, meta = read_safetensors(path, "training state")
    if meta.get("format") != "alae-rt-train-state":
        raise CheckpointError(f"{path}: not an alae-rt training state")
    return tensors, meta
