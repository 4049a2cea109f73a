"""`alae-rt info` and `alae-rt convert`: describe a model, convert official weights to ours."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alae_rt.cli.options import (
    DTYPES,
    add_checkpoint_args,
    add_command,
    add_out_arg,
    add_trust_pickle_arg,
    out_file,
    say,
)
from alae_rt.errors import InputError


def add_parsers(sub) -> None:
    p = add_command(sub, "info", "show a model's config, parameter counts and GFLOPs per encode/decode", cmd_info,
                    model=False)
    add_checkpoint_args(p, checkpoint_help="a checkpoint to describe (default: the bundled model)",
                        config_help="preset name or official YAML for the checkpoint", trust_pickle=False)
    p.add_argument("--preset", help="describe a preset instead of a checkpoint")
    add_trust_pickle_arg(p, argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add_command(sub, "convert", "convert an official ALAE .pth (EMA weights) to an alae-rt .safetensors",
                    cmd_convert, model=False)
    p.add_argument("src", help="official .pth (or an alae-rt .safetensors to re-save)")
    add_out_arg(p, "output .safetensors file")
    p.add_argument("--config", metavar="CFG", help="preset name or official YAML (default: inferred from shapes)")
    p.add_argument("--dtype", choices=DTYPES, help="store the weights in this dtype")
    add_trust_pickle_arg(p)


def cmd_info(args: argparse.Namespace) -> int:
    from alae_rt.cli.ops import truncated_styles
    from alae_rt.config import resolve_config
    from alae_rt.flops import count_flops, count_params

    if args.preset and args.checkpoint:
        raise InputError("give either --preset or --checkpoint, not both")
    method = None
    if args.preset:
        cfg, source = resolve_config(args.preset), f"preset {args.preset} (no weights)"
    else:
        from alae_rt.checkpoint import load_checkpoint
        from alae_rt.runtime import default_checkpoint

        path = args.checkpoint or default_checkpoint()
        if path is None:
            raise InputError("no --checkpoint or --preset given, and this install has no bundled default model")
        ckpt = load_checkpoint(path, args.config, trust_pickle=args.trust_pickle)
        cfg, source, method = ckpt.config, ckpt.source, ckpt.method
    params, flops = count_params(cfg, method), count_flops(cfg, method)
    info: dict[str, Any] = {
        "weights": source,
        **({"method": method.to_dict()} if method is not None else {}),
        "config": cfg.to_dict(),
        "resolution": cfg.resolution,
        "style_inputs": cfg.num_styles,
        "generator_channels": list(cfg.generator_channels),
        "encoder_channels": [list(c) for c in cfg.encoder_channels],
        "parameters": params,
        "gflops_per_image": {k: round(v / 1e9, 3) for k, v in flops.items()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = cfg
    print(f"weights:        {source}")
    if method is not None:
        flow = f" (flow: {method.flow_depth} couplings, {method.flow_hidden} hidden)" if method.flow_depth else ""
        print(f"method:         {method.name}{flow}")
    print(f"config:         {c.name}: L={c.layer_count} startf={c.startf} maxf={c.maxf} D={c.latent_size} "
          f"M={c.mapping_layers} C={c.channels}")
    print(f"resolution:     {c.resolution}x{c.resolution}, {c.num_styles} style inputs")
    # A cutoff past the model's style inputs truncates them all (the presets' 8 on a 6-input model): said so.
    print(f"truncation:     psi={c.truncation_psi} on {truncated_styles(c.truncation_cutoff, c.num_styles)}")
    print(f"generator ch.:  {' '.join(map(str, c.generator_channels))}")
    print(f"encoder ch.:    {' '.join(f'{a}->{b}' for a, b in c.encoder_channels)}")
    print("parameters:     " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()))
    print("GFLOPs/image:   " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in flops.items()))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from alae_rt.checkpoint import convert
    from alae_rt.runtime import parse_dtype

    out = out_file(args.out, ".safetensors")
    ckpt = convert(args.src, out, config=args.config, dtype=parse_dtype(args.dtype) if args.dtype else None,
                   trust_pickle=args.trust_pickle)
    say(args, f"read {ckpt.source}")
    print(f"wrote {out} ({ckpt.config.name}, {len(ckpt.state)} tensors)")
    return 0
