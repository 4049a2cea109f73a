"""The paper's MLP ALAE (its MNIST experiments) on scikit-learn's digits, with 1-NN / linear-SVM accuracy on w.

F, G, E and D are MLPs of one parameterised block; training is the same three ALAE steps as StyleALAE
(non-saturating logistic loss + R1 on reals, then F and G, then E and G on ||w - E(G(w))||^2) with
Adam (0, 0.99) and learning-rate equalisation. The representation is judged as in the paper: a 1-NN and a
linear SVM trained on the w of the training digits, scored on held-out digits (pixels as the baseline).

--method introvae and lia train the same MLPs with the other two methods (as training.introvae and training.lia
do the StyleALAE blocks): IntroVAE's E outputs the mean and log-variance of z and G takes z; LIA's F is an
invertible flow (alae_rt.flow), its first stage a GAN with an MLP image discriminator, its second E alone.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alae_rt.errors import ConfigError, InputError
from alae_rt.flow import CouplingFlow
from alae_rt.methods import FLOW_DEPTH_RANGE, METHODS
from alae_rt.network import LRELU_SLOPE
from alae_rt.training.config import check_method_weights
from alae_rt.training.losses import (
    discriminator_loss,
    generator_loss,
    introvae_encoder_loss,
    introvae_generator_loss,
    kl_to_prior,
    latent_loss,
    lia_encoder_loss,
    pixel_loss,
    sum_squared_error,
)
from alae_rt.training.optim import LREQAdam


@dataclass(frozen=True)
class MLPConfig:
    latent_size: int = 32  # w and z (the paper: 50 for 784-pixel MNIST; digits have 64 pixels)
    hidden: int = 256
    layers: int = 3  # per network (F, G, E, D)
    batch: int = 128
    steps: int = 6000
    lr: float = 0.002
    r1_gamma: float = 10.0
    ema_half_life_images: float = 10_000.0
    test_fraction: float = 0.3
    seed: int = 0
    method: str = "alae"
    # IntroVAE (see TrainConfig); digits have 64 pixels, so the reconstruction term weighs more than on images.
    introvae_alpha: float = 0.25
    introvae_beta: float = 1.0
    introvae_margin: float = 16.0
    # LIA: flow couplings, the share of the steps that train the GAN (stage 1), E's stage-2 loss weights.
    flow_depth: int = 4
    lia_gan_fraction: float = 0.75
    lia_feature_weight: float = 1.0
    lia_adversarial_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        check_method_weights(self)
        if not FLOW_DEPTH_RANGE[0] <= self.flow_depth <= FLOW_DEPTH_RANGE[1]:
            raise ConfigError(f"flow depth must lie in [{FLOW_DEPTH_RANGE[0]}, {FLOW_DEPTH_RANGE[1]}], got "
                              f"{self.flow_depth}")
        if not 0 < self.lia_gan_fraction < 1:
            raise ConfigError(f"lia_gan_fraction must lie in (0, 1), got {self.lia_gan_fraction}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ConfigError(f"--lr must be a learning rate in (0, 1], got {self.lr}")


class MLP(nn.Module):
    """Linear layers in -> hidden x (layers - 1) -> out, leaky_relu between; stored weights are effective
    (He-initialised), so `lr_multipliers` scales their steps as in StyleALAE."""

    def __init__(self, n_in: int, n_out: int, hidden: int, layers: int, pixel_norm: bool = False):
        super().__init__()
        dims = [n_in] + [hidden] * (layers - 1) + [n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.pixel_norm = pixel_norm
        for layer in self.layers:
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.pixel_norm:
            x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, LRELU_SLOPE)
        return x


class MLPALAE(nn.Module):
    """F: z -> w, G: w -> x, E: x -> w, D: w -> logit [N]."""

    def __init__(self, n_pixels: int, cfg: MLPConfig):
        super().__init__()
        d, h, n = cfg.latent_size, cfg.hidden, cfg.layers
        self.mapping = MLP(d, d, h, n, pixel_norm=True)
        self.generator = MLP(d, n_pixels, h, n)
        self.encoder = MLP(n_pixels, d, h, n)
        self.head = MLP(d, 1, h, n)

    def encode(self, x: Tensor) -> Tensor:
        """The latent that represents x [N, P] -> [N, D]."""
        return self.encoder(x)


class MLPIntroVAE(nn.Module):
    """G: z -> x, E: x -> (mean, log-variance) of z [N, 2D]; no mapping, no head."""

    def __init__(self, n_pixels: int, cfg: MLPConfig):
        super().__init__()
        d, h, n = cfg.latent_size, cfg.hidden, cfg.layers
        self.latent_size = d
        self.generator = MLP(d, n_pixels, h, n)
        self.encoder = MLP(n_pixels, 2 * d, h, n)
        with torch.no_grad():  # log-variance 0 at the start
            self.encoder.layers[-1].weight[d:].zero_()

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)  # [N, 2D]
        return h[:, :self.latent_size], h[:, self.latent_size:]

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]


class MLPLIA(nn.Module):
    """F: the flow z -> y, G: y -> x, E: x -> y, and the image discriminator head(critic(x)) -> logit [N]."""

    def __init__(self, n_pixels: int, cfg: MLPConfig):
        super().__init__()
        d, h, n = cfg.latent_size, cfg.hidden, cfg.layers
        self.mapping = CouplingFlow(d, cfg.flow_depth, h)
        self.generator = MLP(d, n_pixels, h, n)
        self.encoder = MLP(n_pixels, d, h, n)
        self.critic = MLP(n_pixels, d, h, n)
        self.head = MLP(d, 1, h, n)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def mlp_multipliers(model: nn.Module) -> dict[str, float]:
    """sqrt(2 / fan_in) for weights, 1 for biases: the equalisation constants of the He-initialised layers."""
    return {name: math.sqrt(2.0 / p.shape[1]) if p.ndim == 2 else 1.0 for name, p in model.named_parameters()}


def load_digits_split(cfg: MLPConfig) -> tuple[Tensor, np.ndarray, Tensor, np.ndarray]:
    """scikit-learn's 8x8 digits as float [N, 64] in [-1, 1]: (x_train, y_train, x_test, y_test), stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32) / 8.0 - 1.0  # pixel values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=cfg.test_fraction,
                                              random_state=cfg.seed, stratify=digits.target)
    return torch.from_numpy(x_tr), y_tr, torch.from_numpy(x_te), y_te


def train_mlp(x: Tensor, cfg: MLPConfig, progress: bool = False) -> tuple[nn.Module, list[list[float]]]:
    """Train the MLP model of `cfg.method` on x [N, P]; returns (the EMA model, [step, 3 losses] rows:
    LOSS_COLUMNS[method] names them)."""
    train = {"alae": train_mlp_alae, "introvae": train_mlp_introvae, "lia": train_mlp_lia}[cfg.method]
    return train(x, cfg, progress)


LOSS_COLUMNS = {"alae": ("d", "g", "ae"), "introvae": ("loss_E", "loss_G", "L_AE"),
                "lia": ("d", "g / E adversarial", "E pixel")}


def _ema_step(ema: nn.Module, model: nn.Module, beta: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1.0 - beta)


def _start(model: nn.Module, cfg: MLPConfig, *groups: tuple[str, ...]
           ) -> tuple[nn.Module, list[LREQAdam], torch.Generator]:
    """(EMA copy, one optimiser per group of parameter-name prefixes, the latent generator) of a fresh model."""
    ema = copy.deepcopy(model).requires_grad_(False)
    mult = mlp_multipliers(model)
    named = dict(model.named_parameters())
    opts = [LREQAdam([(n, p) for n, p in named.items() if n.startswith(g)], mult, cfg.lr) for g in groups]
    return ema, opts, torch.Generator().manual_seed(cfg.seed + 1)


def _check_row(row: list[float]) -> None:
    if not all(math.isfinite(v) for v in row):
        raise FloatingPointError(f"step {row[0]}: non-finite loss {row[1:]}")


def train_mlp_introvae(x: Tensor, cfg: MLPConfig, progress: bool = False) -> tuple[MLPIntroVAE, list[list[float]]]:
    """IntroVAE training of the MLP model (E's update, then G's; see training.introvae.IntroVAESteps)."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model = MLPIntroVAE(x.shape[1], cfg)
    ema, (opt_enc, opt_dec), gen = _start(model, cfg, ("encoder.",), ("generator.",))
    beta = 0.5 ** (cfg.batch / cfg.ema_half_life_images)
    a, b, m = cfg.introvae_alpha, cfg.introvae_beta, cfg.introvae_margin
    history = []
    for step in tqdm(range(cfg.steps), desc="digits introvae", disable=not progress, file=sys.stderr):
        reals = x[torch.randint(0, x.shape[0], (cfg.batch,), generator=gen)]
        losses = []
        for phase in ("e", "g"):
            model.encoder.requires_grad_(phase == "e")
            model.generator.requires_grad_(phase == "g")
            with torch.set_grad_enabled(phase == "e"):
                mean, logvar = model.posterior(reals)
                z_rec = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
            rec = model.generator(z_rec)
            with torch.set_grad_enabled(phase == "g"):
                fake = model.generator(torch.randn(cfg.batch, cfg.latent_size, generator=gen))
            ae = sum_squared_error(rec, reals)
            if phase == "e":
                loss = introvae_encoder_loss(kl_to_prior(mean, logvar), kl_to_prior(*model.posterior(rec.detach())),
                                             kl_to_prior(*model.posterior(fake)), ae, a, b, m)
                opt = opt_enc
            else:
                loss = introvae_generator_loss(kl_to_prior(*model.posterior(rec)), kl_to_prior(*model.posterior(fake)),
                                               ae, a, b)
                opt = opt_dec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.requires_grad_(True)
        _ema_step(ema, model, beta)
        history.append([step + 1, *losses, ae.item()])
        _check_row(history[-1])
    return ema, history


def train_mlp_lia(x: Tensor, cfg: MLPConfig, progress: bool = False) -> tuple[MLPLIA, list[list[float]]]:
    """LIA training of the MLP model: a GAN with the flow as F for lia_gan_fraction of the steps, then E alone
    against the frozen (EMA) G and flow (see training.lia.LIASteps)."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    model = MLPLIA(x.shape[1], cfg)
    ema, (opt_d, opt_g, opt_e), gen = _start(model, cfg, ("critic.", "head."), ("generator.", "mapping."),
                                             ("encoder.",))
    beta = 0.5 ** (cfg.batch / cfg.ema_half_life_images)
    gan_steps = max(1, int(cfg.steps * cfg.lia_gan_fraction))

    def logits(images: Tensor) -> Tensor:
        return model.head(model.critic(images))[:, 0]

    history = []
    for step in tqdm(range(cfg.steps), desc="digits lia", disable=not progress, file=sys.stderr):
        reals = x[torch.randint(0, x.shape[0], (cfg.batch,), generator=gen)]
        if step == gan_steps:  # stage 2: G and the flow become the served (EMA) weights and stay so
            model.generator.load_state_dict(ema.generator.state_dict())
            model.mapping.load_state_dict(ema.mapping.state_dict())
            model.generator.requires_grad_(False)
            model.mapping.requires_grad_(False)
            opt_d.reset_state()
        with torch.no_grad():
            fakes = (model.generator(model.mapping(torch.randn(cfg.batch, cfg.latent_size, generator=gen)))
                     if step < gan_steps else model.generator(model.encoder(reals)))
        r = reals.clone().requires_grad_(True)
        out = logits(torch.cat([r, fakes]))  # [2 * batch]: reals, then fakes or reconstructions
        loss_d = discriminator_loss(out[:cfg.batch], out[cfg.batch:], r, cfg.r1_gamma)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        model.critic.requires_grad_(False)
        model.head.requires_grad_(False)
        if step < gan_steps:
            loss_g = generator_loss(logits(model.generator(model.mapping(
                torch.randn(cfg.batch, cfg.latent_size, generator=gen)))))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            row = [step + 1, loss_d.item(), loss_g.item(), 0.0]
        else:
            rec = model.generator(model.encoder(reals))
            feats = model.critic(torch.cat([rec, reals]))
            fake_logits = model.head(feats[:cfg.batch])[:, 0]
            loss_e = lia_encoder_loss(rec, reals, feats[:cfg.batch], feats[cfg.batch:], fake_logits,
                                      cfg.lia_feature_weight, cfg.lia_adversarial_weight)
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            opt_e.step()
            row = [step + 1, loss_d.item(), generator_loss(fake_logits).item(), pixel_loss(rec, reals).item()]
        model.critic.requires_grad_(True)
        model.head.requires_grad_(True)
        _ema_step(ema, model, beta)
        history.append(row)
        _check_row(row)
    return ema, history


def train_mlp_alae(x: Tensor, cfg: MLPConfig, progress: bool = False) -> tuple[MLPALAE, list[list[float]]]:
    """ALAE training of the MLP model on x [N, P]; returns (the EMA model, [step, loss_d, loss_g, loss_ae] rows)."""
    torch.manual_seed(cfg.seed)
    model = MLPALAE(x.shape[1], cfg)
    ema, (opt_enc, opt_dec), gen = _start(model, cfg, ("encoder.", "head."), ("generator.", "mapping."))
    beta = 0.5 ** (cfg.batch / cfg.ema_half_life_images)
    history = []
    from tqdm import tqdm

    for step in tqdm(range(cfg.steps), desc="digits", disable=not progress, file=sys.stderr):
        reals = x[torch.randint(0, x.shape[0], (cfg.batch,), generator=gen)]

        def z() -> Tensor:
            return torch.randn(cfg.batch, cfg.latent_size, generator=gen)

        # (I) E and D: real vs generated, R1 on the reals.
        opt_enc.zero_grad(set_to_none=True)
        with torch.no_grad():
            fakes = model.generator(model.mapping(z()))
        r = reals.clone().requires_grad_(True)
        logits = model.head(model.encoder(torch.cat([r, fakes])))[:, 0]  # [2 * batch]: reals, then fakes
        loss_d = discriminator_loss(logits[:cfg.batch], logits[cfg.batch:], r, cfg.r1_gamma)
        loss_d.backward()
        opt_enc.step()
        # (II) F and G against the fixed E and D.
        opt_dec.zero_grad(set_to_none=True)
        model.encoder.requires_grad_(False)
        model.head.requires_grad_(False)
        loss_g = generator_loss(model.head(model.encoder(model.generator(model.mapping(z()))))[:, 0])
        loss_g.backward()
        opt_dec.step()
        model.encoder.requires_grad_(True)
        model.head.requires_grad_(True)
        # (III) E and G: the latent reconstruction of w = F(z), F fixed.
        opt_enc.zero_grad(set_to_none=True)
        opt_dec.zero_grad(set_to_none=True)
        with torch.no_grad():
            w = model.mapping(z())
        loss_ae = latent_loss(model.encoder(model.generator(w)), w)
        loss_ae.backward()
        opt_enc.step()
        opt_dec.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1.0 - beta)
        history.append([step + 1, loss_d.item(), loss_g.item(), loss_ae.item()])
        if not all(math.isfinite(v) for v in history[-1]):
            raise FloatingPointError(f"step {step + 1}: non-finite loss {history[-1][1:]}")
    return ema, history


@torch.no_grad()
def evaluate(model: MLPALAE, x_tr: Tensor, y_tr: np.ndarray, x_te: Tensor, y_te: np.ndarray) -> dict[str, float]:
    """Test accuracy of a 1-NN and a linear SVM trained on the training digits' w, and on their pixels."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    def scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        knn = KNeighborsClassifier(n_neighbors=1).fit(a, y_tr)
        svm = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=20_000)).fit(a, y_tr)
        return float(knn.score(b, y_te)), float(svm.score(b, y_te))

    w_tr, w_te = model.encode(x_tr).numpy(), model.encode(x_te).numpy()
    knn_w, svm_w = scores(w_tr, w_te)
    knn_px, svm_px = scores(x_tr.numpy(), x_te.numpy())
    return {"w_1nn": knn_w, "w_linear_svm": svm_w, "pixels_1nn": knn_px, "pixels_linear_svm": svm_px}


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    """The `digits` subcommand (registered in alae_rt.cli.EXTERNAL_COMMANDS)."""
    p = subparsers.add_parser(name, help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    d = MLPConfig()
    p.add_argument("--steps", type=int, default=d.steps, help=f"ALAE iterations (default {d.steps})")
    p.add_argument("--latent-size", type=int, default=d.latent_size, help=f"size of z and w (default {d.latent_size})")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"hidden units per layer (default {d.hidden})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, weights and latents (default 0)")
    p.add_argument("--method", default=d.method, metavar="NAME",
                   help=f"training method: {', '.join(METHODS)} (default {d.method})")
    p.add_argument("--introvae-alpha", type=float, default=d.introvae_alpha, metavar="A",
                   help=f"IntroVAE: weight of the adversarial KL terms (default {d.introvae_alpha})")
    p.add_argument("--introvae-beta", type=float, default=d.introvae_beta, metavar="B",
                   help=f"IntroVAE: weight of the reconstruction term (default {d.introvae_beta})")
    p.add_argument("--introvae-margin", type=float, default=d.introvae_margin, metavar="M",
                   help=f"IntroVAE: KL margin of G's images (default {d.introvae_margin:g})")
    p.add_argument("--flow-depth", type=int, default=d.flow_depth, metavar="N",
                   help=f"LIA: coupling layers of the flow (default {d.flow_depth})")
    p.add_argument("--lia-gan-fraction", type=float, default=d.lia_gan_fraction, metavar="F",
                   help=f"LIA: share of --steps for stage 1, the GAN (default {d.lia_gan_fraction})")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: layers this small gain nothing from more)")
    p.add_argument("--results", metavar="PATH.json",
                   help="also write the figures as JSON, and a markdown table beside it (PATH.md)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """The `digits` command: train, evaluate, print (and record) the accuracies."""
    from alae_rt.training.cli import require

    require("sklearn", "digits")
    for flag in ("steps", "latent_size", "hidden", "batch"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.results:  # a folder no file can be made in is refused now, not after the training
        from alae_rt.cli.options import out_file

        out_file(args.results, ".json")
    torch.set_num_threads(max(1, args.threads))
    try:
        cfg = MLPConfig(latent_size=args.latent_size, hidden=args.hidden, batch=args.batch, steps=args.steps,
                        lr=args.lr, seed=args.seed, method=args.method, introvae_alpha=args.introvae_alpha,
                        introvae_beta=args.introvae_beta, introvae_margin=args.introvae_margin,
                        flow_depth=args.flow_depth, lia_gan_fraction=args.lia_gan_fraction)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    label = {"alae": "ALAE", "introvae": "IntroVAE", "lia": "LIA"}[cfg.method]
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg)
    t0 = time.perf_counter()
    model, history = train_mlp(x_tr, cfg, progress=not getattr(args, "quiet", False))
    wall = time.perf_counter() - t0
    acc = evaluate(model, x_tr, y_tr, x_te, y_te)
    last = np.mean(np.asarray(history)[-100:, 1:], axis=0)
    names = LOSS_COLUMNS[cfg.method]
    print(f"MLP {label} on scikit-learn digits: {len(x_tr)} training / {len(x_te)} test images, latent of "
          f"{cfg.latent_size} dims, {cfg.steps} steps in {wall:.0f} s")
    print("final losses (mean of the last 100 steps): " + "  ".join(f"{n} {v:.4g}" for n, v in zip(names, last)))
    print(f"{'features':<22}{'1-NN':>8}{'linear SVM':>12}")
    print(f"{f'latent ({label} encoder)':<22}{acc['w_1nn']:>8.2%}{acc['w_linear_svm']:>12.2%}")
    print(f"{'pixels (64)':<22}{acc['pixels_1nn']:>8.2%}{acc['pixels_linear_svm']:>12.2%}")
    if args.results:
        from alae_rt import __version__

        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": f"digits_mlp_{cfg.method}", "config": asdict(cfg), "train_images": len(x_tr),
                  "test_images": len(x_te), "accuracy": acc, "final_losses": dict(zip(names, last.tolist())),
                  "wall_s": round(wall, 1), "torch": torch.__version__, "alae_rt": __version__,
                  "python": platform.python_version(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(["alae-rt", *sys.argv[1:]])}
        path.write_text(json.dumps(record, indent=2) + "\n")
        md = [f"# MLP {label} on scikit-learn digits", "",
              f"`{record['command']}` - {len(x_tr)} training / {len(x_te)} test digits (stratified, seed "
              f"{cfg.seed}), w of {cfg.latent_size} dims, {cfg.steps} steps, {wall:.0f} s on the CPU, "
              f"{record['date']}.", "",
              "Test accuracy of classifiers fitted on the training digits' features (the paper's protocol):", "",
              "| features | 1-NN | linear SVM |", "|---|---:|---:|",
              f"| latent ({label} encoder, EMA) | {acc['w_1nn']:.2%} | {acc['w_linear_svm']:.2%} |",
              f"| pixels (64) | {acc['pixels_1nn']:.2%} | {acc['pixels_linear_svm']:.2%} |"]
        path.with_suffix(".md").write_text("\n".join(md) + "\n")
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0
