"""The exported-model contract shared by the exporters and the onnxruntime / TensorRT backends: names, metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alae_rt.config import ModelConfig
from alae_rt.errors import CheckpointError, InputError

FORMAT = "alae-rt-onnx/1"
ROLES = ("encoder", "generator", "mapping")
ONNX_FILES = {role: f"{role}.onnx" for role in ROLES}
ENGINE_FILES = {role: f"{role}.plan" for role in ROLES}
TRITON_MODELS = {role: f"alae_{role}" for role in ROLES}  # Triton repository: alae_<role>/1/model.onnx
ENGINE_METADATA = "engines.json"  # TensorRT engines: version, GPU, profiles, beside the .plan files
BATCH_AXIS = "batch"
# Keys of the ONNX metadata_props (and of engines.json) written by the exporter.
META_FORMAT = "alae_rt.format"
META_ROLE = "alae_rt.role"
META_CONFIG = "alae_rt.config"
META_DTYPE = "alae_rt.dtype"
META_WEIGHTS = "alae_rt.weights_signature"
META_SOURCE = "alae_rt.source"
META_VERSION = "alae_rt.version"
NUMPY_DTYPES = {"fp32": "float32", "fp16": "float16"}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Architecture fields that fix the graphs; the name and the truncation defaults do not change them.
_GRAPH_FIELDS = ("layer_count", "startf", "maxf", "latent_size", "mapping_layers", "channels")


def noise_names(cfg: ModelConfig) -> list[str]:
    """The generator's 2L noise inputs in the order it consumes them: noise_4x4_1, noise_4x4_2, noise_8x8_1, ..."""
    return [f"noise_{r}x{r}_{j}" for r in cfg.block_resolutions for j in (1, 2)]


def find_onnx(folder: Path, role: str) -> Path:
    """A role's ONNX file in an `alae-rt export onnx` folder (encoder.onnx) or in a Triton model repository
    written by `alae-rt export triton-repo` (alae_encoder/1/model.onnx)."""
    plain = folder / ONNX_FILES[role]
    triton = folder / TRITON_MODELS[role] / "1" / "model.onnx"
    return triton if not plain.is_file() and triton.is_file() else plain


def io_shapes(cfg: ModelConfig, role: str) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    """(inputs, outputs) of one exported graph: name -> shape, the batch axis written as "batch", in graph order."""
    c, r, d, s = cfg.channels, cfg.resolution, cfg.latent_size, cfg.num_styles
    n = BATCH_AXIS
    if role == "encoder":
        return {"images": [n, c, r, r]}, {"w": [n, d]}
    if role == "generator":
        inputs: dict[str, list[int | str]] = {"styles": [n, s, d]}
        for name, res in zip(noise_names(cfg), (res for res in cfg.block_resolutions for _ in (1, 2))):
            inputs[name] = [n, 1, res, res]
        return inputs, {"images": [n, c, r, r]}
    if role == "mapping":
        return {"z": [n, d]}, {"w": [n, d]}
    raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


def weights_signature(module: nn.Module) -> dict[str, list[float]]:
    """Per tensor of the module's state: sum, sum of |x| and a ramp-weighted sum (float64).

    Cheap to compute, independent of the dtype the weights are held in (fp32, fp16, bf16 round the sums far less
    than the checking tolerance), and different for any two checkpoints that are not near copies.
    """
    sig = {}
    for name, tensor in module.state_dict().items():
        x = tensor.detach().to("cpu", torch.float64).flatten()
        ramp = torch.linspace(-1.0, 1.0, x.numel(), dtype=torch.float64)
        sig[name] = [float(x.sum()), float(x.abs().sum()), float((x * ramp).sum())]
    return sig


def check_weights(stored: Mapping[str, Sequence[float]], module: nn.Module, where: str, rtol: float = 1e-2) -> None:
    """Refuse exported files made from other weights than the module's; the error names a tensor that differs."""
    ours = weights_signature(module)
    if set(stored) != set(ours):
        missing = sorted(set(ours) - set(stored))[:3] or sorted(set(stored) - set(ours))[:3]
        raise CheckpointError(f"{where}: made from another architecture than the loaded model ({', '.join(missing)})")
    for name, mine in ours.items():
        scale = mine[1] + 1e-12
        if any(abs(a - b) > rtol * scale for a, b in zip(stored[name], mine)):
            raise CheckpointError(
                f"{where}: exported from other weights than the loaded checkpoint (tensor '{name}' differs); "
                "export again from this checkpoint or load the checkpoint the files came from"
            )


def check_config(meta: Mapping[str, str], cfg: ModelConfig, where: str) -> dict[str, Any]:
    """The exported file's config (from its metadata) must have the loaded model's architecture -> that config."""
    if meta.get(META_FORMAT) != FORMAT:
        raise CheckpointError(f"{where}: not an alae-rt export (metadata {META_FORMAT!r} is {meta.get(META_FORMAT)!r}, "
                              f"expected {FORMAT!r}); write it with `alae-rt export onnx`")
    try:
        theirs = json.loads(meta[META_CONFIG])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{where}: metadata {META_CONFIG!r} is missing or not JSON") from None
    ours = cfg.to_dict()
    diff = [f"{k}={theirs.get(k)} (model: {ours[k]})" for k in _GRAPH_FIELDS if theirs.get(k) != ours[k]]
    if diff:
        raise CheckpointError(f"{where}: exported for another architecture: {', '.join(diff)}")
    return theirs


def check_graph(meta: Mapping[str, str], input_names: Sequence[str], cfg: ModelConfig, role: str, module: nn.Module,
                where: str, check_weights_match: bool = True) -> None:
    """What every ONNX-file backend checks of a graph it opened: its role, the loaded model's architecture, the
    inputs by name and in order, and (unless told not to) that it was exported from the loaded weights."""
    if meta.get(META_ROLE) != role:
        raise CheckpointError(f"{where}: holds the {meta.get(META_ROLE) or 'unknown'} graph, expected the {role}")
    check_config(meta, cfg, where)
    expected = list(io_shapes(cfg, role)[0])
    if list(input_names) != expected:
        raise CheckpointError(f"{where}: inputs {list(input_names)}, expected {expected}")
    if check_weights_match:
        check_weights(json.loads(meta.get(META_WEIGHTS, "{}")), module, where)


def batch_noise(noise: Sequence[Tensor | None], n: int, cfg: ModelConfig, dtype: torch.dtype,
                device: torch.device) -> list[Tensor]:
    """The Runtime's 2L noise maps ([1 or N, 1, h, w] or None) as the exported graphs take them: [N, 1, h, w] each.

    Every noise input of an exported generator carries the batch axis (Triton's batcher and TensorRT's profiles
    need one batch dimension on every input). A map of batch 1 - block 0's first map always is, as in the official
    code - is repeated over the batch, which gives the same numbers as broadcasting it; None becomes zeros.
    """
    resolutions = [r for r in cfg.block_resolutions for _ in (1, 2)]
    if len(noise) != len(resolutions):
        raise InputError(f"noise: expected {len(resolutions)} maps, got {len(noise)}")
    out = []
    for i, (t, r) in enumerate(zip(noise, resolutions)):
        if t is None:
            out.append(torch.zeros(n, 1, r, r, dtype=dtype, device=device))
            continue
        if t.ndim != 4 or t.shape[0] not in (1, n) or tuple(t.shape[1:]) != (1, r, r):
            raise InputError(f"noise[{i}]: expected [1 or {n}, 1, {r}, {r}], got {list(t.shape)}")
        out.append(t.to(device, dtype).expand(n, 1, r, r).contiguous())  # [N, 1, r, r]
    return out
