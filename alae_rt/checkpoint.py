"""Checkpoint I/O: our safetensors format, and the reader/converter for official ALAE `.pth` files."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alae_rt.config import PRESETS, ModelConfig, resolve_config
from alae_rt.errors import CheckpointError, ConfigError
from alae_rt.methods import MethodConfig, build_model, check_method
from alae_rt.network import HEAD_LAYERS, StyleALAE, blur_weight

FORMAT_NAME = "alae-rt"
FORMAT_VERSION = "1"
# The EMA copies (and the truncation average) are the inference weights of an official checkpoint.
OFFICIAL_MODELS = ("discriminator_s", "generator_s", "mapping_tl_s", "mapping_fl_s", "dlatent_avg")


@dataclass
class Checkpoint:
    """Weights in our naming, their config, and where they came from."""

    state: dict[str, Tensor]
    config: ModelConfig
    source: str  # a one-line description of the weights, for logs and the demo
    metadata: dict[str, Any] = field(default_factory=dict)  # provenance stored with the weights
    method: MethodConfig = field(default_factory=MethodConfig)  # the training method, and the parts it adds


def model_shapes(cfg: ModelConfig, method: MethodConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of our state dict (of the method's network; default ALAE) and its shape, without allocating
    the weights."""
    with torch.device("meta"):
        model = StyleALAE(cfg) if method is None else build_model(cfg, method)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_state(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse a state with a missing, extra or mis-shaped tensor; the error names the tensor and both shapes."""
    missing = [k for k in expected if k not in state]
    if missing:
        listed = "; ".join(f"'{k}' {_fmt(expected[k])}" for k in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{where}: missing tensor(s) {listed}{more}")
    extra = [k for k in state if k not in expected]
    if extra:
        listed = "; ".join(f"'{k}' {_fmt(state[k].shape)}" for k in extra[:3])
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise CheckpointError(f"{where}: unexpected tensor(s) {listed}{more} (not part of this model)")
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got != tuple(shape):
            raise CheckpointError(f"{where}: tensor '{key}' has shape {_fmt(got)}, the model expects {_fmt(shape)}")


# ---- config inference ---------------------------------------------------------------------------------
_NAMES = {  # where the shapes that fix the architecture live, in each naming
    "ours": {
        "block": r"generator\.blocks\.(\d+)\.",
        "mapping": r"mapping\.layers\.(\d+)\.weight",
        "channels": r"(?:generator\.const|encoder\.blocks\.\d+\.conv_2)",
        "from_rgb": "encoder.from_rgb.0.weight",
    },
    "official": {
        "block": r"generator_s\.decode_block\.(\d+)\.",
        "mapping": r"mapping_fl_s\.map_blocks\.(\d+)\.fc\.weight",
        "channels": r"(?:generator_s\.const|discriminator_s\.encode_block\.\d+\.conv_2\.weight)",
        "from_rgb": "discriminator_s.from_rgb.0.from_rgb.weight",
    },
}


def infer_config(shapes: Mapping[str, tuple[int, ...]], naming: str, name: str = "inferred") -> ModelConfig:
    """A ModelConfig from tensor shapes alone (`naming`: "ours" or "official" key names)."""
    keys = _NAMES[naming]

    def indices(pattern: str) -> dict[int, str]:
        found = {}
        for key in shapes:
            m = re.match(pattern, key)
            if m:
                found[int(m.group(1))] = key
        return found

    blocks, mapping = indices(keys["block"]), indices(keys["mapping"])
    from_rgb = shapes.get(keys["from_rgb"])  # [startf, C, 1, 1]
    chans = [shapes[k][1 if k.endswith("const") else 0] for k in shapes if re.fullmatch(keys["channels"], k)]
    if not blocks or not mapping or from_rgb is None or len(from_rgb) != 4 or not chans:
        raise CheckpointError("cannot infer the model config from the tensor names and shapes; "
                              "pass a config (preset name or YAML)")
    try:
        cfg = ModelConfig(
            layer_count=max(blocks) + 1,
            startf=from_rgb[0],
            maxf=max(chans),
            latent_size=shapes[mapping[max(mapping)]][0],
            mapping_layers=max(mapping) + 1,
            channels=from_rgb[1],
            name=name,
        )
    except ConfigError as exc:
        raise CheckpointError(f"the tensor shapes give an invalid config ({exc}); pass a config") from None
    # A known architecture keeps its preset's name (an official FFHQ file reads as ffhq-1024).
    for preset in PRESETS.values():
        if preset.replace(name=name) == cfg:
            return preset
    return cfg


# ---- official ALAE checkpoints ----------------------------------------------------------------------
def official_layout(cfg: ModelConfig) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    """Official key ('<model>.<tensor>') -> (our key or None for the fixed blur kernel, official shape)."""
    ours = model_shapes(cfg)
    layout: dict[str, tuple[str | None, tuple[int, ...]]] = {}

    def add(official: str, our: str, squeeze: bool = False) -> None:
        # Per-channel vectors are [1, C, 1, 1] in the official files, [C] here.
        shape = ours[our]
        layout[official] = (our, (1, *shape, 1, 1) if squeeze else shape)

    def add_linear(official: str, our: str) -> None:
        for p in ("weight", "bias"):
            add(f"{official}.{p}", f"{our}.{p}")

    for i in range(cfg.mapping_layers):
        add_linear(f"mapping_fl_s.map_blocks.{i}.fc", f"mapping.layers.{i}")
    for i in range(HEAD_LAYERS):
        add_linear(f"mapping_tl_s.map_blocks.{i}", f"head.layers.{i}")
    add("generator_s.const", "generator.const")
    for i, c in enumerate(cfg.generator_channels):
        off, our = f"generator_s.decode_block.{i}", f"generator.blocks.{i}"
        if i > 0:
            add(f"{off}.conv_1.weight", f"{our}.conv_1")
        add(f"{off}.conv_2.weight", f"{our}.conv_2")
        for j in (1, 2):
            add(f"{off}.noise_weight_{j}", f"{our}.noise_weight_{j}", squeeze=True)
            add(f"{off}.bias_{j}", f"{our}.bias_{j}", squeeze=True)
            add_linear(f"{off}.style_{j}", f"{our}.style_{j}")
        layout[f"{off}.blur.weight"] = (None, (c, 1, 3, 3))
        add_linear(f"generator_s.to_rgb.{i}.to_rgb", f"generator.to_rgb.{i}")
    for i, (c_in, _) in enumerate(cfg.encoder_channels):
        off, our = f"discriminator_s.encode_block.{i}", f"encoder.blocks.{i}"
        add_linear(f"discriminator_s.from_rgb.{i}.from_rgb", f"encoder.from_rgb.{i}")
        for j in (1, 2):
            add(f"{off}.conv_{j}.weight", f"{our}.conv_{j}")
            add(f"{off}.bias_{j}", f"{our}.bias_{j}", squeeze=True)
            add_linear(f"{off}.style_{j}", f"{our}.style_{j}")
        layout[f"{off}.blur.weight"] = (None, (c_in, 1, 3, 3))
    add("dlatent_avg.buff", "dlatent_avg")
    return layout


def convert_official(models: Mapping[str, Mapping[str, Tensor]], cfg: ModelConfig | None = None,
                     where: str = "checkpoint") -> tuple[dict[str, Tensor], ModelConfig]:
    """Official `models` dict (EMA copies + dlatent_avg) -> (our state dict, config)."""
    absent = [name for name in OFFICIAL_MODELS if name not in models]
    if absent:
        raise CheckpointError(f"{where}: no {', '.join(absent)} in 'models' (an official ALAE checkpoint has them)")
    flat = {f"{name}.{k}": v for name in OFFICIAL_MODELS for k, v in models[name].items()}
    if cfg is None:
        cfg = infer_config({k: tuple(v.shape) for k, v in flat.items()}, "official")
    layout = official_layout(cfg)
    check_state(flat, {k: shape for k, (_, shape) in layout.items()}, where)
    ours = model_shapes(cfg)
    state: dict[str, Tensor] = {}
    for key, (our, shape) in layout.items():
        tensor = flat[key]
        if our is not None:
            state[our] = tensor.reshape(ours[our])
        elif tensor.device.type != "meta" and not torch.allclose(tensor.float(), blur_weight(shape[0])):
            raise CheckpointError(f"{where}: '{key}' is not the [1, 2, 1] blur kernel this network uses")
    return state, cfg


def _read_official(path: Path, trust_pickle: bool) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects other than tensors ({reason[:160]}). "
            "It was read with weights_only=True; pass trust_pickle=True (CLI: --trust-pickle) only for a file "
            "from a source you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise CheckpointError(f"{path}: not an official ALAE checkpoint (no 'models' dict at the top level)")
    return data["models"]


# ---- our safetensors format -------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: Mapping[str, Tensor], config: ModelConfig,
                    provenance: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None,
                    method: MethodConfig | None = None) -> Path:
    """Write one .safetensors file (config, provenance and the training method as metadata); write, then rename."""
    method = method or MethodConfig()
    check_state(state, model_shapes(config, method), "state to save")
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        **method.to_metadata(),
    }
    return write_safetensors(path, tensors, metadata)


def write_safetensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> Path:
    """Write a .safetensors file under a temporary name, then rename: an interrupted write leaves no half file.
    The file gets the permissions of any new file (0666 less the umask); safetensors alone makes it 0600, which
    a server running as another user could not read."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it while it reads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def read_safetensors(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a .safetensors file; a file that does not read is a CheckpointError naming it
    as `what`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable {what} ({str(exc).splitlines()[0][:160]})") from None
    return state, metadata


def _sniff(path: Path) -> str:
    """'safetensors' or 'torch', from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its file starts with the header's length (u64, little-endian), whose first byte may
    # be anything, 0x80 included, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip archive, or a legacy pickle stream
        return "torch"
    return "unknown"


def load_checkpoint(path: str | Path, config: ModelConfig | str | Path | None = None,
                    trust_pickle: bool = False, method: str | None = None) -> Checkpoint:
    """Read our .safetensors or an official ALAE .pth; validate every tensor against the config.

    config: a ModelConfig, preset name or official YAML; by default the file's own (ours) or one inferred
    from the tensor shapes (official). The training method is the file's own (metadata "method"; official
    files and ours without it: alae); `method`, when given, must be that one.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the checkpoint file (.safetensors or .pth)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    cfg = resolve_config(config)
    kind = _sniff(path)
    if kind == "torch":
        check_method(MethodConfig(), method, str(path))
        state, cfg = convert_official(_read_official(path, trust_pickle), cfg, where=str(path))
        how = "given config" if config is not None else "config inferred from tensor shapes"
        return Checkpoint(state, cfg, f"official ALAE checkpoint {path} (EMA weights; {how})",
                          {"converted_from": path.name})
    if kind != "safetensors":
        raise CheckpointError(f"{path}: neither a safetensors file nor a PyTorch .pth checkpoint")
    state, meta = read_safetensors(path)
    provenance = _json_field(meta, "provenance", path) or {}
    found = MethodConfig.from_metadata(meta, str(path))
    check_method(found, method, str(path))
    if cfg is None and "config" in meta:
        cfg = ModelConfig.from_dict(_json_field(meta, "config", path))
    if cfg is None:
        cfg = infer_config({k: tuple(v.shape) for k, v in state.items()}, "ours")
    check_state(state, model_shapes(cfg, found), str(path) if found.name == "alae" else f"{path} ({found.name})")
    described = provenance.get("description") or f"config {cfg.name}"
    return Checkpoint(state, cfg, f"alae-rt checkpoint {path} ({described})", provenance, found)


def _json_field(meta: Mapping[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metadata field '{key}' is not valid JSON") from None


def convert(src: str | Path, dst: str | Path, config: ModelConfig | str | Path | None = None,
            dtype: torch.dtype | None = None, trust_pickle: bool = False) -> Checkpoint:
    """Convert an official .pth (or re-save one of ours, e.g. as fp16) to our .safetensors format."""
    ckpt = load_checkpoint(src, config, trust_pickle=trust_pickle)
    provenance = dict(ckpt.metadata)
    provenance.setdefault("description", ckpt.source)
    save_checkpoint(dst, ckpt.state, ckpt.config, provenance, dtype=dtype, method=ckpt.method)
    return ckpt
