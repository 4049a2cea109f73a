"""The paper's MLP ALAE (its MNIST experiments) on scikit-learn's digits, with 1-NN / linear-SVM accuracy on w.

F, G, E and D are MLPs of one parameterised block; training is the same three ALAE steps as StyleALAE
(non-saturating logistic loss + R1 on reals, then F and G, then E and G on ||w - E(G(w))||^2) with
Adam (0, 0.99) and learning-rate equalisation. The representation is judged as in the paper: a 1-NN and a
linear SVM trained on the w of the training digits, scored on held-out digits (pixels as the baseline).
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

from alae_rt.errors import InputError
from alae_rt.network import LRELU_SLOPE
from alae_rt.training.losses import discriminator_loss, generator_loss, latent_loss
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


def train_mlp_alae(x: Tensor, cfg: MLPConfig, progress: bool = False) -> tuple[MLPALAE, list[list[float]]]:
    """ALAE training of the MLP model on x [N, P]; returns (the EMA model, [step, loss_d, loss_g, loss_ae] rows)."""
    torch.manual_seed(cfg.seed)
    model = MLPALAE(x.shape[1], cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    mult = mlp_multipliers(model)
    named = dict(model.named_parameters())
    opt_enc = LREQAdam([(n, p) for n, p in named.items() if n.startswith(("encoder.", "head."))], mult, cfg.lr)
    opt_dec = LREQAdam([(n, p) for n, p in named.items() if n.startswith(("generator.", "mapping."))], mult, cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
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

    w_tr, w_te = model.encoder(x_tr).numpy(), model.encoder(x_te).numpy()
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
    torch.set_num_threads(max(1, args.threads))
    cfg = MLPConfig(latent_size=args.latent_size, hidden=args.hidden, batch=args.batch, steps=args.steps,
                    lr=args.lr, seed=args.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg)
    t0 = time.perf_counter()
    model, history = train_mlp_alae(x_tr, cfg, progress=not getattr(args, "quiet", False))
    wall = time.perf_counter() - t0
    acc = evaluate(model, x_tr, y_tr, x_te, y_te)
    last = np.mean(np.asarray(history)[-100:, 1:], axis=0)
    print(f"MLP ALAE on scikit-learn digits: {len(x_tr)} training / {len(x_te)} test images, w of "
          f"{cfg.latent_size} dims, {cfg.steps} steps in {wall:.0f} s")
    print(f"final losses (mean of the last 100 steps): d {last[0]:.3f}  g {last[1]:.3f}  ae {last[2]:.4f}")
    print(f"{'features':<18}{'1-NN':>8}{'linear SVM':>12}")
    print(f"{'w (ALAE encoder)':<18}{acc['w_1nn']:>8.2%}{acc['w_linear_svm']:>12.2%}")
    print(f"{'pixels (64)':<18}{acc['pixels_1nn']:>8.2%}{acc['pixels_linear_svm']:>12.2%}")
    if args.results:
        from alae_rt import __version__

        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": "digits_mlp_alae", "config": asdict(cfg), "train_images": len(x_tr),
                  "test_images": len(x_te), "accuracy": acc, "final_losses": dict(zip(("d", "g", "ae"), last.tolist())),
                  "wall_s": round(wall, 1), "torch": torch.__version__, "alae_rt": __version__,
                  "python": platform.python_version(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(["alae-rt", *sys.argv[1:]])}
        path.write_text(json.dumps(record, indent=2) + "\n")
        md = ["# MLP ALAE on scikit-learn digits", "",
              f"`{record['command']}` - {len(x_tr)} training / {len(x_te)} test digits (stratified, seed "
              f"{cfg.seed}), w of {cfg.latent_size} dims, {cfg.steps} steps, {wall:.0f} s on the CPU, "
              f"{record['date']}.", "",
              "Test accuracy of classifiers fitted on the training digits' features (the paper's protocol):", "",
              "| features | 1-NN | linear SVM |", "|---|---:|---:|",
              f"| w (ALAE encoder, EMA) | {acc['w_1nn']:.2%} | {acc['w_linear_svm']:.2%} |",
              f"| pixels (64) | {acc['pixels_1nn']:.2%} | {acc['pixels_linear_svm']:.2%} |"]
        path.with_suffix(".md").write_text("\n".join(md) + "\n")
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0
