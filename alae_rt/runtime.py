"""The Runtime: the one API for encode / decode / generate / reconstruct / mix / edit / interpolate."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alae_rt.backends import Backend, create_backend
from alae_rt.checkpoint import Checkpoint, load_checkpoint
from alae_rt.config import PRESETS, ModelConfig, resolve_config
from alae_rt.directions import INFO_FILE, read_info
from alae_rt.errors import CheckpointError, InputError
from alae_rt.images import images_to_tensor, list_images, read_image, to_uint8, to_uint8_tensor
from alae_rt.latents import LATENT_LIMIT, check_latents, check_psi, check_seed, check_steps
from alae_rt.methods import MethodConfig, build_model, method_of
from alae_rt.network import StyleALAE

NoiseArg = str | Sequence[Tensor]
DirectionArg = str | Path | np.ndarray | Tensor
Progress = Callable[[int], object] | None  # called with the rows each chunk just finished

CONST_NOISE_SEED = 0  # the "const" noise maps are drawn once, from this seed, on the CPU
DEFAULT_MAX_BATCH = 8
# Labels of the principal directions published with the official FFHQ model (its demo's attribute names).
OFFICIAL_FFHQ_DIRECTION_LABELS = {
    0: "gender", 1: "smile", 2: "attractive", 3: "wavy_hair", 4: "young",
    10: "big_lips", 11: "big_nose", 17: "chubby", 19: "glasses",
}
_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float32 / "fp32" / "fp16" / "bf16" ... -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InputError(f"dtype {dtype} is not supported; use fp32, fp16 or bf16", field="dtype")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16", field="dtype") from None


def parse_device(device: torch.device | str) -> torch.device:
    """"cpu", "cuda", "cuda:1" or "auto" (CUDA when present) -> torch.device, checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto", field="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but this machine has no usable CUDA GPU", field="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA GPU(s)",
                             field="device")
    elif dev.type != "cpu":
        raise InputError(f"device type {dev.type!r} is not supported; use cpu or cuda", field="device")
    return dev


def default_checkpoint() -> Path | None:
    """The bundled default model, when this install has one."""
    path = Path(__file__).with_name("models") / "default.safetensors"
    return path if path.is_file() else None


def default_directions() -> Path | None:
    """The directions folder shipped beside the bundled default model (its principal components pc00, ...)."""
    path = Path(__file__).with_name("models") / "directions"
    return path if (path / INFO_FILE).is_file() else None


class Runtime:
    """A StyleALAE model on one device, in one dtype, run by one backend.

    Images are float [N, C, R, R] in [-1, 1] (or uint8 HWC arrays on input); latents are w [N, D] or per-layer
    styles [N, 2L, D]. Results stay on the Runtime's device, in its dtype. Large batches run in chunks of
    `max_batch` so memory stays bounded.
    """

    def __init__(self, model: StyleALAE, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype | str = torch.float32, backend: str = "eager", source: str = "",
                 max_batch: int = DEFAULT_MAX_BATCH, backend_options: Mapping[str, Any] | None = None):
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}", field="max_batch")
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.method: MethodConfig = method_of(model)
        # IntroVAE's encoder outputs (mean, log-variance); every backend runs it whole and the mean is served.
        self._posterior_mean = model.encoder.latent_size != model.config.latent_size
        self.backend: Backend = create_backend(backend, self.model, self.device, **dict(backend_options or {}))
        self.source = source or "weights given in memory"
        self.max_batch = max_batch
        self.directions: dict[str, Tensor] = {}
        # name -> {"label": str, "range": [low, high]}: from a directions folder's directions.json, where it has one
        self.direction_info: dict[str, dict[str, Any]] = {}
        gen = torch.Generator().manual_seed(CONST_NOISE_SEED)
        self._const_noise = [
            torch.randn(1, 1, r, r, generator=gen).to(self.device, self.dtype) for r in self._noise_resolutions()
        ]

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, config: ModelConfig | str | Path | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32, backend: str = "eager",
             *, max_batch: int = DEFAULT_MAX_BATCH, trust_pickle: bool = False,
             backend_options: Mapping[str, Any] | None = None, method: str | None = None) -> Runtime:
        """Load our .safetensors or an official ALAE .pth (EMA weights); no path: the bundled default model.

        config: preset name, ModelConfig or official YAML; by default the checkpoint's own or inferred.
        method: the training method the checkpoint must come from (alae, introvae, lia); by default its own.
        backend: "eager" (the reference) or "auto" (the fastest available); backend_options go to it.
        The bundled model (no path, or its file) comes with its directions (`default_directions`: pc00, ...).
        """
        if path is None:
            path = default_checkpoint()
            if path is None:
                raise CheckpointError(
                    "no checkpoint given and this install has no bundled default model; pass the path of a "
                    ".safetensors or official ALAE .pth file"
                )
        rt = cls.from_checkpoint(load_checkpoint(path, config, trust_pickle=trust_pickle, method=method),
                                 device=device, dtype=dtype, backend=backend, max_batch=max_batch,
                                 backend_options=backend_options)
        bundled, bundled_directions = default_checkpoint(), default_directions()
        if bundled is not None and bundled_directions is not None and Path(path).resolve() == bundled.resolve():
            rt.load_directions(bundled_directions)
        return rt

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, **kwargs: Any) -> Runtime:
        with torch.device("meta"):
            model = build_model(ckpt.config, ckpt.method)
        model.load_state_dict({k: v.float() for k, v in ckpt.state.items()}, assign=True)
        return cls(model, source=ckpt.source, **kwargs)

    @classmethod
    def from_config(cls, config: ModelConfig | str, seed: int = 0, method: MethodConfig | None = None,
                    **kwargs: Any) -> Runtime:
        """Random weights (official-style initialisation) for a config (and a method's network; default ALAE):
        tests, benchmarks, smoke runs."""
        cfg = resolve_config(config)
        torch_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = build_model(cfg, method)
            if model.method != "introvae":  # IntroVAE's latent is z itself: its average stays the prior's mean 0
                with torch.no_grad():
                    # dlatent_avg as training would track it: the mean of F(z).
                    model.dlatent_avg.copy_(model.mapping(torch.randn(1024, cfg.latent_size)).mean(0).expand_as(
                        model.dlatent_avg))
        finally:
            torch.random.set_rng_state(torch_state)
        return cls(model, source=f"random weights (preset {cfg.name}, seed {seed}): not a trained model", **kwargs)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def __repr__(self) -> str:
        c = self.config
        method = "" if self.method.name == "alae" else f"{self.method.name}, "
        return (f"Runtime({method}{c.name}: {c.resolution}x{c.resolution}x{c.channels}, D={c.latent_size}, "
                f"backend={self.backend.name}, device={self.device}, dtype={str(self.dtype).replace('torch.', '')})")

    # ---- inputs -------------------------------------------------------------------------------------
    def prepare_images(self, x: Any) -> Tensor:
        """Model input float [N, C, R, R] on the device from: that tensor; uint8 [N, H, W, C] / [H, W, C]
        arrays or tensors; a list of uint8 HWC arrays; image file paths."""
        c, r = self.config.channels, self.config.resolution
        if isinstance(x, (str, Path)):
            x = [x]
        if isinstance(x, (list, tuple)):
            if len(x) == 0:
                raise InputError("x: empty batch", field="x")
            if all(isinstance(item, (str, Path)) for item in x):
                paths = list_images(x)
                x = images_to_tensor([read_image(p) for p in paths], r, c, [str(p) for p in paths], self.device)
            else:
                x = images_to_tensor(x, r, c, device=self.device)
        elif isinstance(x, np.ndarray):
            x = _from_numpy(x)
        if not isinstance(x, Tensor):
            raise InputError(f"x: expected images (tensor, array, list or paths), got {type(x).__name__}", field="x")
        if x.dtype == torch.uint8:
            x = images_to_tensor(x[None] if x.ndim == 3 else x, r, c, device=self.device)
        elif not x.is_floating_point():
            raise InputError(f"x: expected float images in [-1, 1] or uint8 images, got {x.dtype}", field="x")
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r) or x.shape[0] == 0:
            raise InputError(f"x: expected float images [N, {c}, {r}, {r}] in [-1, 1], got {list(x.shape)}", field="x")
        return x.to(self.device, self.dtype)

    def _latent(self, w: Any, name: str, allow_styles: bool = True) -> Tensor:
        """w [N, D] (or [N, 2L, D] when allowed) on the device; errors name the argument and the shape."""
        check_latents(w, self.config.latent_size, self.config.num_styles, name, allow_styles)
        if isinstance(w, np.ndarray):
            w = _from_numpy(w)
        return w.to(self.device, self.dtype)

    def styles(self, w: Any, name: str = "w") -> Tensor:
        """w [N, D] broadcast to all 2L style inputs, or [N, 2L, D] as given -> [N, 2L, D]."""
        w = self._latent(w, name)
        return w[:, None].expand(-1, self.config.num_styles, -1) if w.ndim == 2 else w

    # ---- noise ----------------------------------------------------------------------------------------
    def _noise_resolutions(self) -> list[int]:
        return [r for r in self.config.block_resolutions for _ in (1, 2)]

    def noise(self, n: int, mode: NoiseArg = "random", seed: int | None = None) -> list[Tensor | None]:
        """The 2L noise inputs for a batch of n, in the generator's order (block 0 noise 1, block 0 noise 2, ...).

        "random": fresh maps (reproducible with `seed`); "const": fixed maps made at load; "none": no noise;
        or a list of 2L tensors [1 or n, 1, h, w].
        """
        if isinstance(mode, str):
            if mode == "none":
                return [None] * self.config.num_styles
            if mode == "const":
                return list(self._const_noise)
            if mode == "random":
                gen = torch.Generator(device=self.device)
                gen.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1 if seed is None
                                else check_seed(seed, "seed"))
                # Block 0's first map has batch 1, as in the official code: it is added to `const`.
                return [torch.randn(1 if i == 0 else n, 1, r, r, generator=gen, device=self.device).to(self.dtype)
                        for i, r in enumerate(self._noise_resolutions())]
            raise InputError(f"noise: unknown mode {mode!r}; use random, const, none or a list of tensors",
                             field="noise")
        maps = list(mode)
        resolutions = self._noise_resolutions()
        if len(maps) != len(resolutions):
            raise InputError(f"noise: expected {len(resolutions)} tensors, got {len(maps)}", field="noise")
        out = []
        for i, (t, r) in enumerate(zip(maps, resolutions)):
            if t is None:
                out.append(None)
                continue
            t = torch.as_tensor(t)
            if t.ndim != 4 or t.shape[0] not in (1, n) or tuple(t.shape[1:]) != (1, r, r):
                raise InputError(f"noise[{i}]: expected [1 or {n}, 1, {r}, {r}], got {list(t.shape)}", field="noise")
            out.append(t.to(self.device, self.dtype))
        return out

    def seed_noise(self, seeds: Sequence[int]) -> list[Tensor]:
        """Random noise for a batch, one stream per seed: a seed gives the same maps alone or in any batch."""
        per_seed = [self.noise(1, "random", seed=check_seed(s, "seeds")) for s in seeds]
        return [torch.cat(maps) for maps in zip(*per_seed)]

    def generation_noise(self, n: int, noise: NoiseArg = "random", seed: int | None = None,
                         seeds: Sequence[int] | None = None) -> list[Tensor | None]:
        """The noise of a generated batch of n: random noise with no `seed` but with `seeds` draws each image's
        maps from its own seed (so a seed gives the same image alone or in any batch); otherwise `noise(n, ...)`."""
        if seeds is not None and isinstance(noise, str) and noise == "random" and seed is None:
            if len(seeds) != n:
                raise InputError(f"seeds: {len(seeds)} seeds for a batch of {n}", field="seeds")
            return self.seed_noise(seeds)
        return self.noise(n, noise, seed)

    # ---- chunking ------------------------------------------------------------------------------------
    def _chunks(self, n: int) -> Iterable[slice]:
        for start in range(0, n, self.max_batch):
            yield slice(start, min(start + self.max_batch, n))

    def _run_chunked(self, fn: Callable[[slice], Tensor], n: int, progress: Progress = None) -> Tensor:
        parts = []
        with torch.inference_mode():
            for sl in self._chunks(n):
                parts.append(fn(sl))
                if progress is not None:
                    progress(sl.stop - sl.start)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # ---- the operations -------------------------------------------------------------------------------
    def encode(self, x: Any, progress: Progress = None) -> Tensor:
        """Images -> w [N, D]. `progress(k)` is called after each chunk with the k images it encoded."""
        n, inputs = self._image_chunks(x)
        return self._run_chunked(lambda sl: self._encode_rows(inputs(sl)), n, progress)

    def _encode_rows(self, x: Tensor) -> Tensor:
        """The backend's encoder on one chunk -> [n, D] (IntroVAE: the posterior mean, the first D outputs)."""
        w = self.backend.encode(x)
        return w[:, :self.config.latent_size] if self._posterior_mean else w

    def _image_chunks(self, x: Any) -> tuple[int, Callable[[slice], Tensor]]:
        """(N, rows -> model input) for images; image files are read a chunk at a time, so that a long list of
        large photos never sits in memory as one float tensor."""
        if isinstance(x, (str, Path)) or (isinstance(x, (list, tuple)) and x
                                           and all(isinstance(item, (str, Path)) for item in x)):
            paths = list_images([x] if isinstance(x, (str, Path)) else x)
            return len(paths), lambda sl: self.prepare_images(paths[sl])
        x = self.prepare_images(x)
        return x.shape[0], lambda sl: x[sl]

    def discriminate(self, w: Any) -> Tensor:
        """w [N, D] -> the discriminator's real/fake logits [N] (ALAE models: the others have no latent head)."""
        self.method.require("latent_head", "discriminate")
        w = self._latent(w, "w", allow_styles=False)
        return self._run_chunked(lambda sl: self.model.head(w[sl]), w.shape[0])

    def map(self, z: Any) -> Tensor:
        """z [N, D] -> w [N, D] through the mapping network F (LIA: the flow, y = phi(z); IntroVAE: w is z)."""
        z = self._latent(z, "z", allow_styles=False)
        return self._run_chunked(lambda sl: self.model.mapping(z[sl]), z.shape[0])

    def unmap(self, w: Any) -> Tensor:
        """The inverse of `map`: w [N, D] -> z [N, D] (LIA: z = phi^-1(y), exact up to float rounding; IntroVAE:
        z itself). ALAE's F is not invertible: an InputError."""
        self.method.require("invertible_mapping", "unmap")
        w = self._latent(w, "w", allow_styles=False)
        inverse = getattr(self.model.mapping, "inverse", None)
        return w if inverse is None else self._run_chunked(lambda sl: inverse(w[sl]), w.shape[0])

    def decode_uint8(self, w: Any, noise: NoiseArg = "random", seed: int | None = None,
                     progress: Progress = None) -> Tensor:
        """`decode` -> uint8 [N, R, R, C] on the Runtime's device, converted a chunk at a time: what a server sends
        on (a quarter of the bytes of float32 to the host, or to an on-device image encoder) and a CLI saves."""
        styles = self.styles(w)
        maps = self.noise(styles.shape[0], noise, seed)
        return self._decode(styles, maps, progress, to_uint8_tensor)

    def decode(self, w: Any, noise: NoiseArg = "random", seed: int | None = None, progress: Progress = None) -> Tensor:
        """w [N, D] (broadcast to all 2L style inputs) or styles [N, 2L, D] -> images [N, C, R, R]."""
        styles = self.styles(w)
        maps = self.noise(styles.shape[0], noise, seed)
        return self._decode(styles, maps, progress)

    def _decode(self, styles: Tensor, maps: list[Tensor | None], progress: Progress = None,
                post: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        def chunk(sl: slice) -> Tensor:
            images = self.backend.decode(styles[sl], _rows(maps, sl))
            return images if post is None else post(images)

        return self._run_chunked(chunk, styles.shape[0], progress)

    # ---- generation ---------------------------------------------------------------------------------------
    def seeds_to_z(self, seeds: Sequence[int]) -> Tensor:
        """One z [D] per seed, from a CPU generator seeded with it (the same on every device) -> [N, D].
        Seeds are integers in [0, 2**64 - 1]."""
        if len(seeds) == 0:
            raise InputError("seeds: empty list", field="seeds")
        seeds = [check_seed(s, "seeds") for s in seeds]
        d = self.config.latent_size
        z = torch.stack([torch.randn(d, generator=torch.Generator().manual_seed(s)) for s in seeds])
        return z.to(self.device, self.dtype)

    def check_psi(self, truncation_psi: float | None) -> float:
        """truncation_psi (None: the config's) checked to be finite and in PSI_RANGE."""
        return self.config.truncation_psi if truncation_psi is None else check_psi(truncation_psi)

    def check_cutoff(self, cutoff: int | None, field: str = "cutoff") -> int:
        """A style-input cutoff (mix, truncation) checked to be in [0, 2L]; None: the config's truncation cutoff
        (a model with one latent for every style input, IntroVAE's: 2L, all of them; it takes no other)."""
        s = self.config.num_styles
        if cutoff is None:
            return self.config.truncation_cutoff if self.method.per_layer_styles else s
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)) or not 0 <= cutoff <= s:
            raise InputError(f"{field}: {cutoff!r} is out of range 0..{s}", field=field)
        if cutoff < s:
            self.method.require("per_layer_styles", field, field=field)
        return int(cutoff)

    def truncate(self, w: Any, truncation_psi: float | None = None, truncation_cutoff: int | None = None) -> Tensor:
        """Styles [N, 2L, D] pulled towards dlatent_avg by psi on style inputs < cutoff (config defaults).
        psi must be in PSI_RANGE, cutoff in [0, 2L]."""
        psi = self.check_psi(truncation_psi)
        cutoff = self.check_cutoff(truncation_cutoff, "truncation_cutoff")
        with torch.inference_mode():
            return self.model.truncate(self.styles(w), psi, cutoff)

    def z_styles(self, z: Any, truncation_psi: float | None = None, truncation_cutoff: int | None = None) -> Tensor:
        """z [N, D] -> F -> truncation -> styles [N, 2L, D] (psi/cutoff default to the config's)."""
        self.check_psi(truncation_psi)  # before any work: a bad request costs nothing
        self.check_cutoff(truncation_cutoff, "truncation_cutoff")
        return self.truncate(self.map(z), truncation_psi, truncation_cutoff)

    def seed_styles(self, seeds: Sequence[int], truncation_psi: float | None = None,
                    truncation_cutoff: int | None = None) -> Tensor:
        """A z from each seed -> F -> truncation -> styles [N, 2L, D] (generate's styles)."""
        self.check_psi(truncation_psi)  # before any work: a bad request costs nothing
        self.check_cutoff(truncation_cutoff, "truncation_cutoff")
        return self.truncate(self.map(self.seeds_to_z(seeds)), truncation_psi, truncation_cutoff)

    def generate(self, z: Any = None, seeds: Sequence[int] | None = None, truncation_psi: float | None = None,
                 truncation_cutoff: int | None = None, noise: NoiseArg = "random", seed: int | None = None,
                 progress: Progress = None) -> Tensor:
        """Images from z [N, D] or from seeds, through F and truncation (psi/cutoff default to the config's).

        With seeds and random noise but no `seed`, each image's noise comes from its own seed too
        (`generation_noise`).
        """
        if (z is None) == (seeds is None):
            raise InputError("generate: give exactly one of z and seeds", field="seeds")
        if seeds is not None:
            styles = self.seed_styles(seeds, truncation_psi, truncation_cutoff)
        else:
            styles = self.z_styles(self._latent(z, "z", allow_styles=False), truncation_psi, truncation_cutoff)
        maps = self.generation_noise(styles.shape[0], noise, seed, seeds)
        return self._decode(styles, maps, progress)

    def reconstruct(self, x: Any, noise: NoiseArg = "random", seed: int | None = None,
                    progress: Progress = None) -> Tensor:
        """Images -> E -> G -> images (w broadcast to every style input), one chunk at a time."""
        n, inputs = self._image_chunks(x)
        maps = self.noise(n, noise, seed)

        def chunk(sl: slice) -> Tensor:
            w = self._encode_rows(inputs(sl))  # [n, D]
            return self.backend.decode(w[:, None].expand(-1, self.config.num_styles, -1), _rows(maps, sl))

        return self._run_chunked(chunk, n, progress)

    # ---- mixing ------------------------------------------------------------------------------------------
    def mix(self, w_a: Any, w_b: Any, cutoff: int, noise: NoiseArg = "random", seed: int | None = None) -> Tensor:
        """Style mixing: style inputs < cutoff from w_a (coarse), the rest from w_b -> images [N, C, R, R]."""
        return self.decode(self.mix_styles(w_a, w_b, cutoff), noise=noise, seed=seed)

    def mix_styles(self, w_a: Any, w_b: Any, cutoff: int) -> Tensor:
        """The mixed styles [N, 2L, D] of `mix`; a batch of 1 broadcasts against the other side."""
        self.method.require("per_layer_styles", "mix", field="cutoff")
        cutoff = self.check_cutoff(cutoff)
        a, b = self.styles(w_a, "w_a"), self.styles(w_b, "w_b")
        _batch_of_pair(a, b)
        layer = torch.arange(self.config.num_styles, device=self.device)[None, :, None]
        return torch.where(layer < cutoff, a, b)

    # ---- latent-space edits ----------------------------------------------------------------------------
    def load_directions(self, source: str | Path | Mapping[str, DirectionArg]) -> list[str]:
        """Register named W-space directions: a folder of .npy files (named by file stem; the official FFHQ
        `direction_<k>.npy` also by attribute, e.g. `smile`), or a mapping name -> array / .npy path.

        A folder's directions.json (alae_rt.directions: `alae-rt directions pca | fit`) gives its directions labels
        and strength ranges, kept in `direction_info`."""
        info: dict[str, dict[str, Any]] = {}
        if isinstance(source, Mapping):
            items = dict(source)
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise InputError(f"{folder}: no such directions folder", field="directions")
            items = {}
            for f in sorted(folder.glob("*.npy")):
                items[f.stem] = f
                m = re.fullmatch(r"direction_(\d+)", f.stem)
                if m and int(m.group(1)) in OFFICIAL_FFHQ_DIRECTION_LABELS:
                    items[OFFICIAL_FFHQ_DIRECTION_LABELS[int(m.group(1))]] = f
            if not items:
                raise InputError(f"{folder}: holds no .npy direction files", field="directions")
            for name, entry in read_info(folder)["directions"].items():
                if name not in items:
                    raise InputError(f"{folder / INFO_FILE}: names {name!r}, but {name}.npy is not there",
                                     field="directions")
                info[name] = {"label": entry.get("label", name), "range": entry.get("range")}
        loaded = {name: self._direction(value, name) for name, value in items.items()}  # all checked, then kept
        self.directions.update(loaded)
        for name in loaded:
            self.direction_info.pop(name, None)
        self.direction_info.update(info)
        return list(items)

    def _direction(self, value: DirectionArg, name: str, field: str = "directions") -> Tensor:
        """A direction [D] or [2L, D] from a registered name, a .npy path, an array or a tensor."""
        if isinstance(value, str) and value in self.directions:
            return self.directions[value]
        path = None
        if isinstance(value, (str, Path)):
            path = Path(value)
            if path.suffix != ".npy" or not path.is_file():
                known = ", ".join(sorted(self.directions)) or "none loaded"
                raise InputError(f"direction {name!r}: neither a loaded direction ({known}) nor a .npy file",
                                 field=field)
            try:
                value = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise InputError(f"{path}: not a readable .npy array ({exc})", field=field) from None
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
        d, s = self.config.latent_size, self.config.num_styles
        if t.is_floating_point() and t.ndim in (1, 2) and t.shape[-1] != d and t.shape[-1] in _PRESET_LATENT_SIZES:
            # Directions are made for one latent size: say whose they are, not only the shapes.
            whose = " (the official FFHQ)" if t.shape[-1] == 512 else ""
            raise InputError(f"direction {name!r}{f' ({path.name})' if path else ''}: these directions are for a "
                             f"model with D={t.shape[-1]}{whose}; this model has D={d}", field=field)
        if not t.is_floating_point() or tuple(t.shape) not in ((d,), (s, d)):
            raise InputError(f"direction {name!r}: expected float [{d}] or [{s}, {d}], got {t.dtype} {list(t.shape)}",
                             field=field)
        if not torch.isfinite(t).all():
            raise InputError(f"direction {name!r}: holds NaN or Inf", field=field)
        peak = float(t.abs().max())
        if peak > LATENT_LIMIT:  # a direction lives where latents do (alae_rt.latents.LATENT_LIMIT)
            raise InputError(f"{field}: direction {name!r} holds values up to {peak:.3g}; directions lie within "
                             f"+-{LATENT_LIMIT:g}", field=field)
        return t.to(self.device, self.dtype)

    def edit(self, w: Any, edits: Mapping[Any, float] | Iterable[tuple[Any, float]], mode: str = "add",
             layers: Iterable[int] | slice | None = None) -> Tensor:
        """Move w along W-space directions, relative to dlatent_avg. Returns latents of w's shape ([N, 2L, D]
        when a direction is per-layer or `layers` limits the edit).

        edits: {direction: strength} or (direction, strength) pairs (arrays are not hashable); a direction is
        a name from `load_directions`, a .npy path, an array or tensor [D] or [2L, D].
        mode "add": w + strength * d. mode "set": the coordinate of (w - dlatent_avg) along d,
        (w - avg) . d / |d|^2, becomes `strength` (the official demo's attribute sliders).
        layers: style indices (or a slice) the edit applies to; the others keep w.
        Strengths lie within +-LATENT_LIMIT, directions' values too, and the results are clamped to +-LATENT_LIMIT
        (alae_rt.latents), so an edit's result is finite and is a latent that decode takes.
        """
        if mode not in ("add", "set"):
            raise InputError(f"mode: edit mode must be 'add' or 'set', got {mode!r}", field="mode")
        keep = self.check_layers(layers)
        w = self._latent(w, "w")
        dirs = []
        for i, (key, strength) in enumerate(edits.items() if isinstance(edits, Mapping) else edits):
            name = key if isinstance(key, (str, Path)) else f"#{i}"
            if not (np.isfinite(float(strength)) and abs(float(strength)) <= LATENT_LIMIT):
                raise InputError(f"direction {name!r}: strength must be finite and within +-{LATENT_LIMIT:g}, got "
                                 f"{strength}", field=f"edits[{i}]")
            d = self._direction(key, str(name), field=f"edits[{i}]")
            # A zero direction has no coordinate to set; checked on the host: directions are small.
            if mode == "set" and not bool(((d * d).sum(-1) > 0).all()):
                raise InputError(f"edits[{i}]: direction {name!r} is zero; edit mode 'set' needs a non-zero "
                                 "direction", field=f"edits[{i}]")
            dirs.append((d, float(strength)))
        per_layer = keep is not None or w.ndim == 3 or any(d.ndim == 2 for d, _ in dirs)
        if per_layer:
            self.method.require("per_layer_styles", "edit (per-layer latents, directions or layers)", field="layers")
        out = self.styles(w) if per_layer else w  # [N, 2L, D] or [N, D]
        avg = self.model.dlatent_avg if per_layer else self.model.dlatent_avg[0]
        edited = out
        for d, strength in dirs:
            if mode == "add":
                edited = edited + strength * d
            else:
                norm2 = (d * d).sum(-1, keepdim=True)
                coord = ((edited - avg) * d).sum(-1, keepdim=True) / norm2
                edited = edited + (strength - coord) * d
        if keep is not None:
            edited = torch.where(keep.to(self.device)[None, :, None], edited, out)
        # Bounded steps keep the sum finite; the clamp keeps it a latent (on the device: no read-back to check it).
        return edited.clamp(-LATENT_LIMIT, LATENT_LIMIT)

    def check_layers(self, layers: Iterable[int] | slice | None) -> Tensor | None:
        """Style indices (or a slice) an edit applies to -> a mask [2L] (None: all); each index in [0, 2L)."""
        if layers is None:
            return None
        s = self.config.num_styles
        keep = torch.zeros(s, dtype=torch.bool)
        if isinstance(layers, slice):
            keep[layers] = True
            return keep
        try:
            items = list(layers)
        except TypeError:
            raise InputError(f"layers: expected style indices or a slice, got {layers!r}", field="layers") from None
        for i, layer in enumerate(items):
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < s:
                raise InputError(f"layers[{i}]: {layer!r} is out of range 0..{s - 1}", field="layers")
            keep[int(layer)] = True
        return keep

    def interpolate(self, w_a: Any, w_b: Any, steps: int) -> Tensor:
        """Linear interpolation in W from w_a to w_b (both ends included) -> [steps, *w.shape].

        Ends of different shapes (w against styles, or a batch of 1 against n) both become styles [n, 2L, D].
        """
        steps = check_steps(steps)
        a, b = self._latent(w_a, "w_a"), self._latent(w_b, "w_b")
        if a.shape != b.shape:
            n = _batch_of_pair(a, b)
            a, b = (self.styles(t).expand(n, -1, -1) for t in (a, b))  # [n, 2L, D]
        t = torch.linspace(0, 1, int(steps), device=self.device, dtype=self.dtype).view(-1, *([1] * a.ndim))
        return torch.lerp(a[None], b[None], t)

    # ---- outputs -------------------------------------------------------------------------------------
    @staticmethod
    def to_uint8(images: Tensor) -> np.ndarray:
        """float [N, C, R, R] in [-1, 1] -> uint8 [N, R, R, C]."""
        return to_uint8(images)


_PRESET_LATENT_SIZES = {cfg.latent_size for cfg in PRESETS.values()}


def _from_numpy(arr: np.ndarray) -> Tensor:
    """An array as a tensor sharing its memory, or a copy when it is read-only (np.asarray of a PIL image, a
    memory-mapped file): torch warns about, and must not write into, memory it may not change."""
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _rows(maps: list[Tensor | None], sl: slice) -> list[Tensor | None]:
    """The noise maps of a chunk of rows (a map of batch 1 is shared by every row)."""
    return [m if m is None or m.shape[0] == 1 else m[sl] for m in maps]


def _batch_of_pair(a: Tensor, b: Tensor) -> int:
    """The batch of two sides that pair row by row: equal, or one of them 1 (it broadcasts)."""
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise InputError(f"w_b: batch size {b.shape[0]} differs from w_a's {a.shape[0]} (and neither is 1)",
                         field="w_b")
    return max(a.shape[0], b.shape[0])
