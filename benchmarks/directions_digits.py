"""Edit directions on the MLP ALAE of scikit-learn digits (`alae-rt digits`): does a direction fitted from class a
against class b (alae_rt.directions.fit_direction on the encoder's w) move held-out images of class a towards b?

For each pair (a, b): train the MLP ALAE once, fit the direction a -> b on the training digits' w, move the w of
every held-out digit of class a by `strength` along it, decode, and ask a logistic regression trained on the
training digits' pixels. "Moved towards b": its probability of b is higher for the edited image than for the
unedited decode. Strengths are stated in units of the direction's `separation` (the distance between the two class
means along it), so 1.0 moves the mean a to the mean b's coordinate. The opposite direction is the control. Also
the principal components of the training digits' w (alae_rt.directions.principal_directions): explained variance.

    .venv/bin/python benchmarks/directions_digits.py --results benchmarks/results/directions_digits.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from alae_rt.directions import fit_direction, principal_directions
from alae_rt.training.mlp import MLPConfig, load_digits_split, train_mlp_alae

MULTIPLES = (0.5, 1.0, 2.0)  # strengths, in separations
STATED = 1.0  # the strength the summary states
PAIRS = "all"


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """'all' (every ordered pair of different digits) or 'a-b,c-d'."""
    if text == "all":
        return [(a, b) for a in range(10) for b in range(10) if a != b]
    pairs = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        pairs.append((int(a), int(b)))
    return pairs


def digits_directions(cfg: MLPConfig, pairs: list[tuple[int, int]], multiples=MULTIPLES, pca_count: int = 8,
                      folds: int = 5) -> dict:
    """Train the MLP ALAE, then for each pair the fractions of held-out class-a digits moved towards b (and the
    control's), classified as b, and the direction's held-out accuracy; and the PCA of the training w."""
    x_tr, y_tr, x_te, y_te = load_digits_split(cfg)
    t0 = time.perf_counter()
    model, _ = train_mlp_alae(x_tr, cfg)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        return _evaluate(model, cfg, x_tr, y_tr, x_te, y_te, pairs, multiples, pca_count, folds, train_s)


def _evaluate(model, cfg, x_tr, y_tr, x_te, y_te, pairs, multiples, pca_count, folds, train_s) -> dict:
    from sklearn.linear_model import LogisticRegression

    pixels = LogisticRegression(max_iter=5_000).fit(x_tr.numpy(), y_tr)
    w_tr, w_te = model.encoder(x_tr).numpy(), model.encoder(x_te).numpy()  # [N, D]

    def probs(w: np.ndarray) -> np.ndarray:  # [N, 10]
        return pixels.predict_proba(model.generator(torch.from_numpy(w.astype(np.float32))).numpy())

    rows = []
    for a, b in pairs:
        d = fit_direction(w_tr[y_tr == b], w_tr[y_tr == a], f"{a}to{b}", folds=folds, classes=(str(b), str(a)))
        w_a = w_te[y_te == a]  # held-out digits of class a
        before = probs(w_a)[:, b]
        row = {"a": a, "b": b, "held_out": len(w_a), "accuracy": d.stats["accuracy"],
               "separation": d.stats["separation"], "strengths": []}
        for m in multiples:
            s = m * abs(d.stats["separation"])  # a positive step along the direction, whichever way it points
            toward, away = probs(w_a + s * d.vector), probs(w_a - s * d.vector)
            row["strengths"].append({
                "separations": m, "strength": round(s, 4),
                "moved_towards_b": round(float((toward[:, b] > before).mean()), 4),
                "classified_as_b": round(float((toward.argmax(1) == b).mean()), 4),
                "control_moved_towards_b": round(float((away[:, b] > before).mean()), 4),
            })
        rows.append(row)
    pcs = principal_directions(w_tr, min(pca_count, w_tr.shape[1]))
    summary = {}
    for i, m in enumerate(multiples):
        at = [r["strengths"][i] for r in rows]
        summary[f"{m:g}"] = {k: round(float(np.mean([s[k] for s in at])), 4)
                             for k in ("moved_towards_b", "classified_as_b", "control_moved_towards_b")}
        summary[f"{m:g}"]["min_moved_towards_b"] = round(float(min(s["moved_towards_b"] for s in at)), 4)
    return {"config": asdict(cfg), "pairs": rows, "summary": summary, "stated_separations": STATED,
            "pixel_classifier_test_accuracy": round(float(pixels.score(x_te.numpy(), y_te)), 4),
            "reconstruction_test_accuracy": round(float(pixels.score(model.generator(model.encoder(x_te)).numpy(),
                                                                     y_te)), 4),
            "pca_variance": [d.stats["variance"] for d in pcs], "train_s": round(train_s, 1)}


def to_json(r: dict) -> str:
    """The record as JSON, one line per pair (90 pairs indented in full would be most of the file)."""
    head = json.dumps({k: v for k, v in r.items() if k != "pairs"}, indent=1)
    pairs = ",\n".join("  " + json.dumps(p) for p in r["pairs"])
    return f'{head[:-2]},\n "pairs": [\n{pairs}\n ]\n}}\n'


def markdown(r: dict, command: str) -> str:
    c = r["config"]
    lines = ["# Edit directions on the MLP ALAE of scikit-learn digits", "",
             f"`{command}` - MLP ALAE (w of {c['latent_size']} dims, hidden {c['hidden']}, {c['steps']} steps, seed "
             f"{c['seed']}; trained in {r['train_s']} s on the CPU), {len(r['pairs'])} ordered digit pairs (a, b), "
             f"{r['date']}.", "",
             "A direction fitted (linear SVM on the training digits' w, alae_rt.directions.fit_direction) from class "
             "a against class b moves the w of each held-out digit of class a; a logistic regression on pixels "
             f"(test accuracy {r['pixel_classifier_test_accuracy']:.1%}; on the model's reconstructions "
             f"{r['reconstruction_test_accuracy']:.1%}) judges the decoded result. Strength in separations: 1 moves "
             "by the distance between the class means along the direction.", "",
             "| strength (separations) | moved towards b | worst pair | classified as b | control (-direction) "
             "moved towards b |", "|---:|---:|---:|---:|---:|"]
    for m, s in r["summary"].items():
        lines.append(f"| {m} | {s['moved_towards_b']:.1%} | {s['min_moved_towards_b']:.1%} | "
                     f"{s['classified_as_b']:.1%} | {s['control_moved_towards_b']:.1%} |")
    var, stated = r["pca_variance"], r["summary"][f"{r['stated_separations']:g}"]
    lines += ["", f"At the stated strength ({r['stated_separations']:g} separation), {stated['moved_towards_b']:.1%} "
              f"of held-out digits of class a move towards b (mean over pairs; the worst pair "
              f"{stated['min_moved_towards_b']:.1%}).", "",
              f"PCA of the training digits' w: explained variance of the first {len(var)} components "
              f"{', '.join(f'{v:.1%}' for v in var)} (sum {sum(var):.1%}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = MLPConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="ALAE iterations (default 3000)")
    p.add_argument("--latent-size", type=int, default=16, help="size of z and w (default 16)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units per layer (default 64)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split and the weights (default 0)")
    p.add_argument("--pairs", default=PAIRS, help="'all' or a-b pairs, e.g. 4-9,1-7 (default all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--results", metavar="PATH.json", help="write the figures as JSON, and markdown beside it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = MLPConfig(latent_size=args.latent_size, hidden=args.hidden, batch=args.batch, steps=args.steps,
                    seed=args.seed)
    r = digits_directions(cfg, parse_pairs(args.pairs))
    r["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    r.update(torch=torch.__version__, python=platform.python_version())
    command = " ".join(["python benchmarks/directions_digits.py", *(sys.argv[1:] if argv is None else argv)])
    r["command"] = command
    for m, s in r["summary"].items():
        print(f"strength {m} separations: moved towards b {s['moved_towards_b']:.1%} (worst pair "
              f"{s['min_moved_towards_b']:.1%}), classified as b {s['classified_as_b']:.1%}, control "
              f"{s['control_moved_towards_b']:.1%}")
    print(f"PCA explained variance: {', '.join(f'{v:.1%}' for v in r['pca_variance'])}")
    if args.results:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(r))
        path.with_suffix(".md").write_text(markdown(r, command))
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
