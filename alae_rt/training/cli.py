"""`alae-rt train`: ALAE (or IntroVAE, LIA) training from an image folder, with checkpoints, grids, curves and exact
resume."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from alae_rt.cli.options import add_device_arg, add_out_arg, add_threads_arg, require
from alae_rt.config import PRESETS, ModelConfig
from alae_rt.errors import ConfigError, InputError
from alae_rt.evaluation import default_holdout
from alae_rt.methods import FLOW_DEPTH_RANGE, LIA_FLOW_DEPTH, METHODS, MethodConfig
from alae_rt.training.augment import AUGMENTATIONS, DIFF_AUGMENTATIONS
from alae_rt.training.config import TrainConfig
from alae_rt.training.data import load_image_folder, split_holdout
from alae_rt.training.trainer import STATE_FILE, Distributed, RunInfo, Trainer, read_state

DEFAULT_PRESET = "small-64"
DEFAULT_EVERY = 500

DESCRIPTION = """\
Train a StyleALAE with the ALAE algorithm (Pidhorskyi et al., CVPR 2020): per iteration (I) E and D on real
vs generated images (non-saturating logistic loss + R1, gamma 10), (II) F and G against D, (III) E and G on
the latent reconstruction ||F(z) - E(G(F(z)))||^2; Adam (0, 0.99) with learning-rate equalisation,
progressive growing from 4x4 with blending, EMA weights, dlatent_avg tracking, style mixing, flips.

Writes to RUN_DIR every --every steps (and at the end, or on Ctrl-C): checkpoint.safetensors (EMA weights,
loadable by Runtime.load / --checkpoint), train_state.safetensors (optimiser state, RNG streams; for
--resume), samples.png, reconstructions.png, losses.png and log.jsonl; the held-out PSNR is printed.

Other methods on the same blocks (--method): IntroVAE (Huang et al., NeurIPS 2018) - E outputs the mean and
log-variance of z, G takes z; E keeps KL(E(x)) small and pushes the KL of G's images above a margin, G pulls it
down, both with the reconstruction term (--introvae-alpha, --introvae-beta, --introvae-margin) - and LIA (Zhu et
al.) - an invertible flow z -> y in F's place; stage 1 trains flow, G and an image discriminator as a GAN for
--lia-gan-steps iterations, stage 2 freezes G and the flow and trains E on pixel, discriminator-feature and
adversarial losses. The checkpoint names its method; the Runtime, the server and the exporters serve all three.

Multi-GPU / multi-node: torchrun --nproc_per_node=N -m alae_rt.training --data ... (NCCL on GPUs, gloo on
CPU; the batch is the global one and is split over the processes; only rank 0 writes)."""

EPILOG = """\
examples:
  alae-rt train --data photos/ --preset tiny --steps 50 --out runs/tiny
  alae-rt train --out runs/tiny --resume --steps 100        # continue the same run to step 100
  alae-rt train --resume runs/tiny --refine-encoder --refine-steps 500   # then refine its encoder
  alae-rt train --data ../shared/data/faces128 --preset small-64 --steps 20000 --out runs/faces64
  alae-rt train --data photos/ --preset tiny --method introvae --introvae-margin 16 --steps 50 --out runs/intro
  alae-rt train --data photos/ --preset tiny --method lia --flow-depth 4 --lia-gan-steps 40 --steps 60 --out runs/lia"""


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"{what}: values must be >= 1, got {text!r}")
    return values


def _float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(v > 0 and math.isfinite(v) for v in values):
        raise InputError(f"{what}: values must be positive, got {text!r}")
    return values


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    """The `train` subcommand (registered in alae_rt.cli.EXTERNAL_COMMANDS)."""
    p = subparsers.add_parser(name, help=help_text, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--data", metavar="DIR", help="folder of images, any size and format (searched recursively; "
                   "centre-cropped and resized to the resolution; unreadable files are reported and skipped)")
    add_out_arg(g, "run folder for checkpoints, grids and logs", metavar="RUN_DIR", required=False)
    g.add_argument("--steps", type=int, default=10_000, metavar="N",
                   help="stop after N iterations in all, counting earlier sessions of the run (default 10000)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (this argument or --out) exactly where it stopped; configs come "
                        "from its state")
    g.add_argument("--every", type=int, default=DEFAULT_EVERY, metavar="N",
                   help=f"write checkpoint, grids, curves and held-out PSNR every N steps (default {DEFAULT_EVERY})")
    g.add_argument("--holdout", type=int, default=None, metavar="N",
                   help="hold out the last N images (path order) for the PSNR report "
                        "(default 10%%, at most 16; none under 10 images)")
    add_device_arg(g, "cpu, cuda or auto (default auto; torchrun: one GPU per rank)")
    add_threads_arg(g)

    m = p.add_argument_group("model (a preset, optionally changed field by field)")
    m.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"model preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET}; tiny: smoke tests)")
    m.add_argument("--resolution", type=int, metavar="R", help="image resolution, a power of two >= 8")
    for flag, field, text in (("--latent-size", "latent_size", "D, size of z and w"),
                              ("--startf", "startf", "channels of the highest-resolution block"),
                              ("--maxf", "maxf", "channel clamp"),
                              ("--mapping-layers", "mapping_layers", "layers of F"),
                              ("--channels", "channels", "image channels (1 or 3)")):
        m.add_argument(flag, dest=field, type=int, metavar="N", help=text)

    t = p.add_argument_group("training (defaults: the preset's training config, the official values)")
    t.add_argument("--lod-images", type=int, metavar="N", help="images shown per LOD, half of them blending in")
    t.add_argument("--lod-batch", metavar="B0,B1,..", help="global batch per LOD from 4x4 up (last one repeats)")
    t.add_argument("--lr", metavar="LR0,LR1,..", help="Adam learning rate per LOD (last one repeats)")
    t.add_argument("--r1-gamma", type=float, metavar="G", help="R1 weight (default 10)")
    t.add_argument("--ema-half-life", type=float, metavar="IMAGES", help="EMA half-life in images (default 10000)")
    t.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    t.add_argument("--mapping-lrmul", type=float, metavar="M",
                   help="F's step multiplier (default 0.1, the official MappingF; 0.01 is the ablation-only Mapping's)")
    t.add_argument("--ae-updates-mapping", action="store_true",
                   help="step III also trains F through G's input, as the official code (the paper keeps F fixed)")

    s = p.add_argument_group("small-data recipe (all off by default: the paper's ALAE)")
    s.add_argument("--augment", metavar="PARTS",
                   help=f"augment the real images: comma-separated {', '.join(AUGMENTATIONS)} or 'all' (small "
                        "shifts up to 4%% of the side, zoom +-6%%, mild brightness / contrast / saturation)")
    s.add_argument("--diffaug", metavar="POLICIES",
                   help=f"DiffAugment on every image the discriminator sees: comma-separated "
                        f"{', '.join(DIFF_AUGMENTATIONS)} or 'all'")
    s.add_argument("--pixel-recon", type=float, metavar="W",
                   help="add W * ||G(E(x)) - x||^2 on the real images to step III (default 0: off)")
    s.add_argument("--refine-encoder", action="store_true",
                   help="after training: G, F, D frozen, train E on pixel reconstruction of the training images "
                        "(LIA's second stage); needs --resume RUN_DIR of a run trained to full resolution")
    s.add_argument("--refine-steps", type=int, default=300, metavar="N",
                   help="refinement steps in all, counting earlier refinement sessions (default 300, what the "
                        "ablation measured)")
    s.add_argument("--refine-lr", type=float, default=0.0015, metavar="LR", help="refinement learning rate")
    s.add_argument("--refine-latent-weight", type=float, default=1.0, metavar="W",
                   help="weight of ||E(G(w)) - w||^2 on generated images during refinement, keeping E consistent "
                        "with the W space that edits use (default 1; 0: pixels only)")
    t.add_argument("--seed", type=int, help="seed of the weights, data order and latents (default 0)")

    d = TrainConfig()
    a = p.add_argument_group("method (ALAE by default; IntroVAE and LIA on the same blocks)")
    a.add_argument("--method", metavar="NAME",
                   help=f"training method: {', '.join(METHODS)} (default alae; --resume: the run's own)")
    a.add_argument("--introvae-alpha", type=float, metavar="A",
                   help=f"IntroVAE: weight of the adversarial KL terms (default {d.introvae_alpha})")
    a.add_argument("--introvae-beta", type=float, metavar="B",
                   help=f"IntroVAE: weight of the reconstruction term, > 0 (default {d.introvae_beta})")
    a.add_argument("--introvae-margin", type=float, metavar="M",
                   help=f"IntroVAE: margin m of the KL of G's images in E's loss, >= 0 (default {d.introvae_margin:g})")
    a.add_argument("--flow-depth", type=int, metavar="N",
                   help=f"LIA: affine coupling layers of the flow z -> y, {FLOW_DEPTH_RANGE[0]}..{FLOW_DEPTH_RANGE[1]} "
                        f"(default {LIA_FLOW_DEPTH})")
    a.add_argument("--flow-hidden", type=int, metavar="N", help="LIA: hidden units per coupling (default: D)")
    a.add_argument("--lia-gan-steps", type=int, metavar="N",
                   help="LIA: iterations of stage 1 (the GAN), the rest of --steps train the encoder "
                        "(default: 3/4 of --steps)")
    a.add_argument("--lia-feature-weight", type=float, metavar="W",
                   help="LIA stage 2: weight of the discriminator-feature reconstruction "
                        f"(default {d.lia_feature_weight})")
    a.add_argument("--lia-adversarial-weight", type=float, metavar="W",
                   help=f"LIA stage 2: weight of E's adversarial term (default {d.lia_adversarial_weight})")


def model_config(args: argparse.Namespace) -> ModelConfig:
    cfg = ModelConfig.preset(args.preset)
    changes = {f: getattr(args, f) for f in ("latent_size", "startf", "maxf", "mapping_layers", "channels")
               if getattr(args, f) is not None}
    if args.resolution is not None:
        r = args.resolution
        if r < 8 or r & (r - 1):
            raise InputError(f"--resolution {r}: must be a power of two >= 8")
        changes["layer_count"] = int(math.log2(r)) - 1
    if changes:
        cfg = cfg.replace(**changes, name=f"{cfg.name}-custom")
    return cfg


def train_config(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.preset(args.preset)
    changes = {}
    if args.lod_images is not None:
        changes["lod_images"] = args.lod_images
    if args.lod_batch:
        changes["lod_batch"] = _int_list(args.lod_batch, "--lod-batch")
    if args.lr:
        changes["lod_lr"] = _float_list(args.lr, "--lr")
    for field, value in (("r1_gamma", args.r1_gamma), ("ema_half_life_images", args.ema_half_life),
                         ("seed", args.seed)):
        if value is not None:
            changes[field] = value
    if args.no_flip:
        changes["flip"] = False
    if args.mapping_lrmul is not None:
        changes["mapping_lrmul"] = args.mapping_lrmul
    if args.ae_updates_mapping:
        changes["ae_updates_mapping"] = True
    if args.pixel_recon is not None:
        changes["pixel_recon"] = args.pixel_recon
    method = args.method or "alae"
    for field in ("introvae_alpha", "introvae_beta", "introvae_margin", "lia_gan_steps", "lia_feature_weight",
                  "lia_adversarial_weight"):
        value = getattr(args, field)
        if value is None:
            continue
        if not field.startswith(method):
            raise InputError(f"--{field.replace('_', '-')} is for --method {field.split('_')[0]}; this run trains "
                             f"{method}")
        changes[field] = value
    if method == "lia" and args.lia_gan_steps is None:
        changes["lia_gan_steps"] = max(1, args.steps * 3 // 4)
    for field, value, allowed in (("augment", args.augment, AUGMENTATIONS),
                                  ("diffaug", args.diffaug, DIFF_AUGMENTATIONS)):
        if value is not None:
            parts = allowed if value.strip() == "all" else tuple(p.strip() for p in value.split(",") if p.strip())
            changes[field] = parts
    return cfg.replace(**changes) if changes else cfg


def distributed_setup(device_arg: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job when there is one (NCCL on GPUs, gloo on CPU) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ddp = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise InputError(f"--device {device_arg}: this machine has no usable CUDA GPU")
    if not use_cuda and device_arg not in ("cpu", "auto"):
        raise InputError(f"--device {device_arg}: use cpu, cuda or auto")
    device = torch.device("cuda", ddp.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return ddp, device


def _command_line() -> str:
    if Path(sys.argv[0]).stem == "alae-rt":
        return shlex.join(["alae-rt", *sys.argv[1:]])
    return shlex.join(["alae-rt", "train", *[a for a in sys.argv[1:] if a != "train"]])


def run(args: argparse.Namespace) -> int:
    """The `train` command."""
    require("matplotlib", "train")
    if args.steps < 1 or args.every < 1 or args.refine_steps < 1:
        raise InputError("--steps, --every and --refine-steps must be >= 1")
    if not (args.refine_lr > 0 and math.isfinite(args.refine_lr)) or not args.refine_latent_weight >= 0:
        raise InputError("--refine-lr must be > 0 and --refine-latent-weight >= 0")
    if isinstance(args.resume, str):
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise InputError(f"--resume {args.resume} and --out {args.out} name two runs; give one")
        args.out = args.resume
    if args.out is None:
        raise InputError("-o/--out RUN_DIR is required (or --resume RUN_DIR)")
    if args.refine_encoder and not args.resume:
        raise InputError("--refine-encoder refines a trained run: give --resume RUN_DIR")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    state_path = out / STATE_FILE
    quiet = getattr(args, "quiet", False)
    ddp, device = distributed_setup(args.device)

    def say(message: str) -> None:
        if ddp.main and not quiet:
            print(message, file=sys.stderr)

    try:
        if args.resume:
            _, meta = read_state(state_path)
            import json

            run_meta = json.loads(meta["run"])
            mcfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
            tcfg = TrainConfig.from_json(meta["train_config"])
            method = MethodConfig.from_metadata(meta, str(state_path))
            if args.method is not None and args.method != method.name:
                raise InputError(f"{out}: the run trains {method.name}; --method {args.method} cannot resume it "
                                 f"(leave --method out, or start a new run)")
            data, holdout, command = args.data or run_meta["data"], run_meta["holdout"], run_meta["command"]
            extra = run_meta.get("extra", {})
        else:
            if args.data is None:
                raise InputError("--data DIR is required (unless --resume continues a run)")
            if state_path.exists():
                raise InputError(f"{out} already holds a run ({STATE_FILE}); continue it with --resume or choose "
                                 "another --out")
            mcfg, tcfg = model_config(args), train_config(args)
            method = MethodConfig.of(args.method or "alae", mcfg, args.flow_depth, args.flow_hidden)
            data, holdout = args.data, args.holdout
            command = _command_line()
            extra = {}
        images = load_image_folder(data, mcfg.resolution, mcfg.channels, report=say)
        holdout = default_holdout(len(images)) if holdout is None else holdout
        train_set, held = split_holdout(images, holdout)
        say(f"data: {len(train_set)} training and {len(held)} held-out image(s) from {data} at "
            f"{mcfg.resolution}x{mcfg.resolution}")
        info = RunInfo(data=str(data), command=command, holdout=holdout, extra=extra)
        trainer = Trainer(mcfg, tcfg, train_set, held, out, info, device=device, ddp=ddp, say=say, method=method)
        if args.resume:
            trainer.load_state(state_path)
            if trainer.sampler.size != len(train_set):
                raise InputError(f"--data {data}: {len(train_set)} training images, the run was started with "
                                 f"{trainer.sampler.size}; resume with the same data")
            say(f"resuming {out} at step {trainer.step} ({trainer.images_seen} images)")
        else:
            out.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        say(f"model: {method.name} {mcfg.name} {mcfg.resolution}px, D={mcfg.latent_size}, "
            f"{n_params / 1e6:.2f}M parameters; "
            f"device {device}, {ddp.world} process(es)")
        if args.refine_encoder:
            trainer.refine_encoder(args.refine_steps, args.refine_lr, args.refine_latent_weight, every=args.every,
                                   progress=not quiet, command=_command_line())
            say(f"done: encoder refined for {trainer.refine_step} steps; checkpoint {out / 'checkpoint.safetensors'}")
        else:
            trainer.train(args.steps, every=args.every, progress=not quiet)
            say(f"done: {trainer.step} steps; checkpoint {out / 'checkpoint.safetensors'}")
        return 0
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    finally:
        if ddp.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
