"""`alae-rt bench`: time encode / decode / reconstruct / map per backend, dtype and batch size, against the
official code's way of running the network on the same machine, in the same run."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alae_rt.backends import available_backends
from alae_rt.config import ModelConfig
from alae_rt.errors import AlaeError, InputError
from alae_rt.flops import count_flops
from alae_rt.runtime import Runtime, parse_dtype

OPS = ("encode", "decode", "reconstruct", "map")
BASELINE = "official"


@dataclass
class Row:
    """One measured case."""

    op: str
    backend: str
    dtype: str
    batch: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    gflops_per_s: float
    peak_mem_mb: float | None  # peak memory over the case's start: CUDA allocator, or process RSS on CPU
    max_abs_err: float  # against eager fp32 on the same inputs
    vs_official: float | None  # official-order median / this median, same op and batch
    reps: int


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device, CPU/GPU model, threads, library versions, date and commit, to tag every result."""
    cpu = cpu_model()
    versions = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "onnxruntime", "onnxruntime-gpu", "triton", "tensorrt", "alae-rt"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "versions": versions,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": git_commit(),
    }
    return info


def git_commit() -> str:
    """The checkout's commit, with "-dirty" when tracked files other than recorded results (benchmarks/results,
    which a run of several benchmarks writes as it goes) have changed; "unknown" outside git. ALAE_RT_COMMIT, when
    set, is taken as is: a copy of a checkout on another machine may carry stale git metadata."""
    if os.environ.get("ALAE_RT_COMMIT"):
        return os.environ["ALAE_RT_COMMIT"]
    root = str(Path(__file__).resolve().parents[1])
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def unused_stem(folder: str | Path, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ...: the first that names no file (of any extension) in `folder`. Benchmarks
    name their results by date (and commit): a rerun on the same day adds a file instead of overwriting a recorded
    one. (A name the caller gave, e.g. --tag, is used as given.)"""
    folder = Path(folder)
    names = [p.name for p in folder.glob(f"{glob.escape(stem)}*")] if folder.is_dir() else []
    candidate, k = stem, 1
    while any(name.startswith(candidate + ".") for name in names):
        k += 1
        candidate = f"{stem}-{k}"
    return candidate


def save_record(folder: str | Path, stem: str, report: dict, text: str, tag: str | None = None) -> Path:
    """A benchmark's record: `report` as <name>.json and `text` (its markdown) as <name>.md in `folder`, the name
    `tag` as given or else the first unused one from `stem` (unused_stem); prints the text and says what it wrote.
    Returns the path without its extension."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / (tag or unused_stem(folder, stem))
    base.with_name(base.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    base.with_name(base.name + ".md").write_text(text)
    print(text)
    print(f"wrote {base}.json and .md", file=sys.stderr)
    return base


def _track_cpu_memory() -> None:
    """Make freed tensor memory go back to the OS at once (glibc), so that RSS follows the live tensors.

    glibc raises its mmap threshold as large blocks are freed, after which they come from the heap and stay
    there; RSS then stops moving and a case's peak would read as ~0. Setting the threshold pins it.
    """
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: blocks of 1 MiB and up are mmap'ed, unmapped on free
        libc.malloc_trim(0)


def _trim_heap() -> None:
    """Hand free heap pages back to the OS (glibc malloc_trim), in every arena; a no-op elsewhere."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class _PeakMemory:
    """Peak memory while a block runs, in MB above its start: the CUDA allocator's, or on CPU the process's resident
    set: its high-water mark (VmHWM, reset through /proc/self/clear_refs) where Linux has one, else RSS sampled every
    millisecond. Free heap pages are handed back first (malloc_trim), so that memory an earlier case freed but
    kept does not hide this case's use (it read as ~0 MB for the cases after the first)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb: float | None = None
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _hwm() -> int | None:
        """The resident set's high-water mark in bytes (Linux), None where there is none."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        except OSError:
            return False
        return True

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _trim_heap()
            self._start = self._rss()
            self._max = self._start
            self._use_hwm = self._start is not None and self._reset_hwm() and self._hwm() is not None
            if self._start is not None and not self._use_hwm:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            rss = self._rss()
            if rss is not None and rss > self._max:
                self._max = rss

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._start is not None:
            if self._use_hwm:
                self._max = max(self._max, self._hwm() or 0)
            else:
                self._stop.set()
                self._thread.join()
                self._max = max(self._max, self._rss() or 0)
            self.peak_mb = (self._max - self._start) / 2**20


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 1, min_reps: int = 5,
              max_reps: int = 50, min_time_s: float = 1.0) -> list[float]:
    """Seconds per call: `warmup` untimed calls (compilation happens there), then at least `min_reps` timed
    calls and more until `min_time_s` have passed (at most `max_reps`)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        times: list[float] = []
        while len(times) < min_reps or (sum(times) < min_time_s and len(times) < max_reps):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Seconds per call, the median of `reps` after `warmup` untimed calls: CUDA events on a GPU (no host sync
    between the calls' launches and their timing), the wall clock elsewhere. For the kernel and device benchmarks
    (benchmarks/gpu_check.py, benchmarks/conv_window.py); time_call is the whole-call timing of run_bench."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


@dataclass
class _Inputs:
    x: Tensor  # images [B, C, R, R]
    styles: Tensor  # [B, 2L, D]
    z: Tensor  # [B, D]


def _case_calls(rt: Runtime, backend, inputs: _Inputs, noise: list[Tensor | None]) -> dict[str, Callable[[], Tensor]]:
    """The four ops as zero-argument calls on one backend (inputs already on the device, in its dtype)."""
    x, styles, z = (t.to(rt.device, rt.dtype) for t in (inputs.x, inputs.styles, inputs.z))
    maps = [None if m is None else m.to(rt.dtype) for m in noise]

    def reconstruct() -> Tensor:
        w = backend.encode(x)
        return backend.decode(w[:, None].expand(-1, styles.shape[1], -1), maps)

    return {
        "encode": lambda: backend.encode(x),
        "decode": lambda: backend.decode(styles, maps),
        "reconstruct": reconstruct,
        "map": lambda: rt.model.mapping(z),
    }


def run_bench(config: ModelConfig | str | None = None, checkpoint: str | Path | None = None,
              backends: Sequence[str] | None = None, dtypes: Sequence[str] | None = None,
              batches: Sequence[int] = (1, 4, 16), ops: Sequence[str] = OPS, device: str = "auto",
              seed: int = 0, min_reps: int = 5, min_time_s: float = 1.0, max_reps: int = 50,
              progress: Callable[[int, str], Any] | None = None, log: Callable[[str], None] = print,
              variants: Mapping[str, tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Sequence[str]]]
              | None = None, deadline: float | None = None,
              on_row: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Measure every (backend, dtype, batch, op); returns {"machine", "model", "rows", "skipped"}.

    The official-order baseline (fp32) runs first for every batch; each other row carries its speed-up over
    it and its max abs error against eager fp32 on the same inputs (images in [-1, 1], latents). Backends
    implement encode and decode; `map` (the small mapping MLP) runs as torch in each case's dtype.
    `variants` adds backends with options under a label of their own, measured after `backends`:
    {"triton-nograph": ("triton", {"cuda_graphs": False})}, in `dtypes` or in its own, a third item:
    {"triton-tf32": ("triton", {"allow_tf32": True}, ["fp32"])}. Cases not begun by `deadline` (a time.monotonic()
    value) are skipped with a note; `on_row` receives each row as it is measured (to keep partial results).
    """
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise InputError(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if not batches or min(batches) < 1:
        raise InputError(f"batch sizes must be >= 1, got {list(batches)}")
    known = available_backends()
    named = [*(backends or ()), *(v[0] for v in (variants or {}).values())]
    if unknown := [b for b in named if b != BASELINE and b not in known]:
        raise InputError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    ref = (Runtime.load(checkpoint, config=config, device=device) if checkpoint is not None
           else Runtime.from_config(config or "ffhq-1024", seed=seed, device=device))
    dev = ref.device
    if dev.type == "cpu":
        _track_cpu_memory()
    backends = list(backends) if backends else available_backends()
    backends = [BASELINE] + [b for b in backends if b != BASELINE]
    if dtypes is None:
        dtypes = ["fp32", "bf16"] if dev.type == "cpu" else ["fp32", "fp16", "bf16"]
    flops = count_flops(ref.config, ref.method)
    flops["reconstruct"] = flops["encode"] + flops["decode"]
    cfg = ref.config

    # One set of inputs, repeated to each batch size: real-looking images, their styles, fresh z.
    base_n = max(batches)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(base_n, cfg.latent_size, generator=gen)
    noise = ref.noise(base_n, "const")
    with exact_fp32(dev):
        styles_all = ref.truncate(ref.map(z.to(dev)))
        x_all = ref.decode(styles_all, noise=noise).clamp(-1, 1)
    rows: list[Row] = []
    skipped: list[str] = []
    baseline_ms: dict[tuple[str, int], float] = {}
    reference: dict[tuple[str, int], Tensor] = {}
    # (row label, backend, options, dtypes): the backends by name, then the labelled variants
    named = [(b, b, {}, ["fp32"] if b == BASELINE else dtypes) for b in backends] + [
        (label, v[0], dict(v[1]), list(v[2]) if len(v) > 2 else dtypes) for label, v in (variants or {}).items()]
    cases = [(label, b, o, d) for label, b, o, ds in named for d in ds]
    total = len(cases) * len(batches) * len(ops)
    bar = progress(total, "bench") if progress else None
    for backend_name, factory_name, options, dtype_name in cases:
        dtype = parse_dtype(dtype_name)
        if deadline is not None and time.monotonic() > deadline:
            skipped.append(f"{backend_name} {dtype_name}: time budget spent")
            log(f"skipped {skipped[-1]}")
            if bar:
                bar.update(len(batches) * len(ops))
            continue
        try:
            rt = Runtime(copy.deepcopy(ref.model), device=dev, dtype=dtype, backend=factory_name,
                         backend_options=options)
            backend = rt.backend
        except AlaeError as exc:  # e.g. a backend's missing package or export folder: the others still run
            skipped.append(f"{backend_name} {dtype_name}: {exc}")
            log(f"skipped {backend_name} {dtype_name}: {exc}")
            if bar:
                bar.update(len(batches) * len(ops))
            continue
        for batch in batches:
            inputs = _Inputs(x_all[:batch], styles_all[:batch], z[:batch])
            maps = [m if m.shape[0] == 1 else m[:batch] for m in noise]
            calls = _case_calls(rt, backend, inputs, maps)
            for op in ops:
                key = (op, batch)
                if deadline is not None and time.monotonic() > deadline:
                    skipped.append(f"{backend_name} {dtype_name} batch {batch} {op}: time budget spent")
                    log(f"skipped {skipped[-1]}")
                    if bar:
                        bar.update(1)
                    continue
                if key not in reference:
                    with exact_fp32(dev), torch.inference_mode():
                        reference[key] = _case_calls(ref, ref.backend, inputs, maps)[op]().float()
                try:
                    with _PeakMemory(dev) as mem:
                        times = time_call(calls[op], dev, min_reps=min_reps, max_reps=max_reps,
                                          min_time_s=min_time_s)
                    with torch.inference_mode():
                        out = calls[op]().float()
                except (RuntimeError, MemoryError) as exc:  # e.g. out of memory at a large batch
                    skipped.append(f"{backend_name} {dtype_name} batch {batch} {op}: {str(exc).splitlines()[0]}")
                    log(f"skipped {skipped[-1]}")
                    if bar:
                        bar.update(1)
                    continue
                med = statistics.median(times)
                if backend_name == BASELINE:
                    baseline_ms[key] = med * 1e3
                rows.append(Row(
                    op=op, backend=backend_name, dtype=dtype_name, batch=batch,
                    median_ms=med * 1e3, p90_ms=_p90(times) * 1e3, images_per_s=batch / med,
                    gflops_per_s=flops[op] * batch / med / 1e9,
                    peak_mem_mb=None if mem.peak_mb is None else round(mem.peak_mb, 1),
                    max_abs_err=float((out - reference[key]).abs().max()),
                    vs_official=(baseline_ms[key] / (med * 1e3)) if key in baseline_ms else None,
                    reps=len(times),
                ))
                if on_row:
                    on_row(asdict(rows[-1]))
                if bar:
                    bar.update(1)
        del rt, backend
    if bar:
        bar.close()
    return {
        "machine": machine_info(dev),
        "model": {"name": cfg.name, "resolution": cfg.resolution, "config": cfg.to_dict(),
                  "weights": ref.source, "gflops_per_image": {k: v / 1e9 for k, v in flops.items()}},
        "settings": {"min_reps": min_reps, "min_time_s": min_time_s, "max_reps": max_reps, "seed": seed,
                     "noise": "const"},
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
    }


def profile_case(rt: Runtime, op: str, batch: int, reps: int = 5, top: int = 12, seed: int = 0) -> dict[str, Any]:
    """Where one op's time goes on `rt` (its backend, dtype and device) at `batch`: the call's wall time (timed
    without the profiler), then torch.profiler over `reps` calls: on CUDA the kernels (launches and time per call:
    the `top` by time, and how busy they keep the GPU: a low share is a launch-bound call), on a CPU the aten ops.
    Inputs are made as run_bench makes them (random images, mapped styles, constant noise)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if op not in ("encode", "decode"):
        raise InputError(f"profile_case: op must be encode or decode, got {op!r}")
    cfg, cuda = rt.config, rt.device.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.latent_size, generator=gen)
    x = torch.rand(batch, cfg.channels, cfg.resolution, cfg.resolution, generator=gen) * 2 - 1
    with torch.no_grad():
        styles = rt.truncate(rt.map(z.to(rt.device)))
    call = _case_calls(rt, rt.backend, _Inputs(x, styles, z), rt.noise(batch, "const"))[op]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(rt.device)

    with torch.no_grad():
        for _ in range(2):  # builds, autotuning and graph capture happen here
            call()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        sync()
        wall_ms = 1e3 * (time.perf_counter() - t0) / reps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(reps):
                call()
            sync()
    events = prof.key_averages()
    if cuda:
        rows = [(e.key, e.count, getattr(e, "self_device_time_total", 0.0)) for e in events
                if e.device_type == DeviceType.CUDA]
    else:
        rows = [(e.key, e.count, e.self_cpu_time_total) for e in events if e.key.startswith("aten::")]
    total_us = sum(us for _, _, us in rows)
    rows.sort(key=lambda r: -r[2])
    return {"backend": rt.backend.name, "dtype": _dtype_name(rt.dtype), "op": op, "batch": batch, "reps": reps,
            "device": rt.device.type, "ms_per_call": round(wall_ms, 3),
            "measured": "CUDA kernels" if cuda else "aten ops (self CPU time)",
            "events_per_call": round(sum(n for _, n, _ in rows) / reps, 1),
            "busy_ms_per_call": round(total_us / 1e3 / reps, 3),
            "busy_share": round(total_us / 1e3 / reps / wall_ms, 3) if cuda and wall_ms > 0 else None,
            "top": [{"name": name[:120], "calls_per_call": round(n / reps, 1), "ms_per_call": round(us / 1e3 / reps, 4),
                     "share": round(us / total_us, 3) if total_us else 0.0} for name, n, us in rows[:top]]}


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """True fp32 on GPUs for the block (no TF32 in convolutions or matmuls): references to measure against."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---- reports -----------------------------------------------------------------------------------------------

_COLUMNS = [("op", "op"), ("backend", "backend"), ("dtype", "dtype"), ("batch", "batch"),
            ("median_ms", "median ms"), ("p90_ms", "p90 ms"), ("images_per_s", "img/s"),
            ("gflops_per_s", "GFLOP/s"), ("peak_mem_mb", "peak MB"), ("max_abs_err", "max err"),
            ("vs_official", "x official")]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "max_abs_err":
        return f"{value:.1e}"
    if key == "vs_official":
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def format_table(report: dict[str, Any], markdown: bool = False) -> str:
    """The rows as an aligned text table, or as a markdown table with a header naming the machine."""
    rows = [[_cell(k, r[k]) for k, _ in _COLUMNS] for r in report["rows"]]
    head = [h for _, h in _COLUMNS]
    if markdown:
        m, mod = report["machine"], report["model"]
        lines = [
            f"# alae-rt bench: {mod['name']} ({mod['resolution']}x{mod['resolution']})", "",
            f"- device: {m['device_name']} ({m['device']}), {m['threads']} threads, CPU {m['cpu']}",
            f"- date: {m['date']}, commit: {m['commit']}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
            f"- weights: {mod['weights']}",
            "- x official: speed-up over the official code's way (fp32, separate ops, NCHW) in the same run;"
            " max err: max abs difference from eager fp32 on the same inputs", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if report["skipped"]:
            lines += ["", "Skipped:"] + [f"- {s}" for s in report["skipped"]]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def write_report(report: dict[str, Any], out_dir: str | Path, stem: str | None = None) -> list[Path]:
    """JSON + markdown (+ a PNG plot when matplotlib is installed) under out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = report["machine"]
    if stem is None:
        device = "cpu" if m["device"] == "cpu" else "".join(ch for ch in m["device_name"] if ch.isalnum())
        stamp = m["date"].replace(":", "").replace("-", "")[:15]
        stem = unused_stem(out, f"bench_{report['model']['name']}_{device}_{stamp}")
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(format_table(report, markdown=True))
    png = _plot(report, out / f"{stem}.png")
    if png:
        paths.append(png)
    return paths


def _plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import EngFormatter, MaxNLocator, NullLocator, ScalarFormatter
    except ImportError:
        return None
    rows = report["rows"]
    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    if not ops:
        return None
    fig, axes = plt.subplots(1, len(ops), figsize=(4.5 * len(ops), 3.8), squeeze=False)
    one_batch = len({r["batch"] for r in rows}) == 1
    for ax, op in zip(axes[0], ops):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["op"] == op:
                series.setdefault(f"{r['backend']} {r['dtype']}", []).append((r["batch"], r["images_per_s"]))
        if one_batch:  # bars: one per backend and dtype
            labels = list(series)
            ax.barh(labels, [series[k][0][1] for k in labels], color=[f"C{i}" for i in range(len(labels))])
            ax.invert_yaxis()
            ax.set_xlabel(f"images/s (batch {rows[0]['batch']})")
            ax.tick_params(axis="y", labelsize=7)
            # A few short ticks (the map runs at 1e5 images/s and more: full numbers ran into each other).
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        else:
            for label, points in series.items():
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sorted({p[0] for points in series.values() for p in points}))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
            ax.yaxis.set_minor_formatter(EngFormatter(sep=""))  # within a decade only minor ticks are labelled
            ax.set_xlabel("batch")
            ax.set_ylabel("images/s")
        ax.set_title(op)
        ax.grid(True, alpha=0.3)
    if not one_batch:
        axes[0][-1].legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"{report['model']['name']} on {m['device_name']} ({m['date'][:10]}, {m['commit']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
