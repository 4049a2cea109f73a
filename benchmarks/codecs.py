"""Image codecs for serving at 1024x1024: milliseconds per face per core, bytes, exactness, and thread scaling.

Every candidate encodes and decodes the same real faces (../shared/data/faces1024 by default) on one thread;
lossless formats must round-trip exactly, JPEG is reported with its PSNR against the source. Then the winners
run in 1..N threads on a codec-only loop: a codec that releases the GIL scales with the threads (the server's
--workers pool relies on that). PNG's fast codecs (fpng, pyspng) do not, so the server runs them in processes:
"fpng+pyspng in processes" is that path (alae_rt.serve.codec_processes, a process per core), called from the same
threads. Candidates whose package is not installed are listed as missing, not failed.

    python benchmarks/codecs.py                       # all candidates, results to benchmarks/results/
    python benchmarks/codecs.py --faces DIR --repeats 5 --threads 1,2
"""

from __future__ import annotations

import argparse
import atexit
import functools
import io
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from alae_rt.bench import git_commit, unused_stem

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACES = ROOT.parent / "shared" / "data" / "faces1024"
JPEG_QUALITY = 90
PNG_LEVEL = 1  # the server's PNG compression level: fast, still lossless

Encoder = Callable[[np.ndarray], bytes]
Decoder = Callable[[bytes], np.ndarray]


# ---- candidates: name -> (format, encode, decode); each built only if its package imports -------------------------


def _pillow_png() -> tuple[Encoder, Decoder]:
    def enc(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=PNG_LEVEL)
        return buf.getvalue()

    return enc, _pillow_decode


def _pillow_jpeg() -> tuple[Encoder, Decoder]:
    def enc(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    return enc, _pillow_decode


def _pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _simplejpeg() -> tuple[Encoder, Decoder]:
    import simplejpeg

    return (lambda a: simplejpeg.encode_jpeg(a, quality=JPEG_QUALITY, colorspace="RGB"),
            lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB"))


def _turbojpeg() -> tuple[Encoder, Decoder]:
    from turbojpeg import TJPF_RGB, TurboJPEG

    tj = TurboJPEG()
    return (lambda a: tj.encode(a, quality=JPEG_QUALITY, pixel_format=TJPF_RGB),
            lambda d: tj.decode(d, pixel_format=TJPF_RGB))


def _imagecodecs_jpeg() -> tuple[Encoder, Decoder]:
    import imagecodecs

    return (lambda a: imagecodecs.jpeg8_encode(a, level=JPEG_QUALITY), imagecodecs.jpeg8_decode)


def _imagecodecs_png() -> tuple[Encoder, Decoder]:
    import imagecodecs

    return (lambda a: imagecodecs.png_encode(a, level=PNG_LEVEL), imagecodecs.png_decode)


def _imagecodecs_spng() -> tuple[Encoder, Decoder]:
    import imagecodecs

    if not imagecodecs.SPNG.available:
        raise ImportError("imagecodecs was built without spng")
    return (lambda a: imagecodecs.spng_encode(a, level=PNG_LEVEL), imagecodecs.spng_decode)


def _fpng() -> tuple[Encoder, Decoder]:
    import fpng

    return (lambda a: fpng.from_ndarray(np.ascontiguousarray(a)), _pillow_decode)


def _fpng_pyspng() -> tuple[Encoder, Decoder]:
    import pyspng

    return _fpng()[0], pyspng.load


def _pyspng() -> tuple[Encoder, Decoder]:
    import pyspng

    return _pillow_png()[0], pyspng.load


@functools.cache
def _png_processes() -> tuple[Encoder, Decoder]:
    """The server's PNG path: fpng and pyspng in alae_rt.serve.codec_processes, a process per core (the calling
    threads copy pixels to and from the processes' shared memory and wait, the GIL released)."""
    from alae_rt.serve.codec_processes import AVAILABLE, CodecProcesses

    if not AVAILABLE:
        raise ImportError("codec processes need Linux (memfd)")
    max_pixels = 4096 * 4096  # the server's default --max-pixels
    codec = CodecProcesses(os.cpu_count() or 1, max_pixels)
    codec.start()
    atexit.register(codec.close)
    return codec.encode_png, lambda data: codec.decode(data, max_pixels)


CANDIDATES: dict[str, tuple[str, Callable[[], tuple[Encoder, Decoder]]]] = {
    "pillow-png": ("png", _pillow_png),
    "imagecodecs-png": ("png", _imagecodecs_png),
    "imagecodecs-spng": ("png", _imagecodecs_spng),
    "fpng+pillow-decode": ("png", _fpng),
    "fpng+pyspng": ("png", _fpng_pyspng),
    "pillow-encode+pyspng": ("png", _pyspng),
    "fpng+pyspng in processes": ("png", _png_processes),
    "pillow-jpeg": ("jpeg", _pillow_jpeg),
    "simplejpeg": ("jpeg", _simplejpeg),
    "pyturbojpeg": ("jpeg", _turbojpeg),
    "imagecodecs-jpeg": ("jpeg", _imagecodecs_jpeg),
}


@dataclass
class Row:
    name: str
    format: str
    encode_ms: float = math.nan  # per 1024x1024 face, one thread
    decode_ms: float = math.nan
    bytes: int = 0
    exact: bool | None = None  # lossless round trip (None for JPEG)
    psnr_db: float | None = None  # JPEG decode vs the source
    scaling: dict[str, float] = field(default_factory=dict)  # threads -> encode+decode images/s
    gil_free: dict[str, float] = field(default_factory=dict)  # encode/decode -> share of a Python thread's speed kept
    error: str = ""


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median of `repeats` timed calls, after one untimed call (first-use costs are not the codec's speed)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(name: str, faces: list[np.ndarray], repeats: int) -> Row:
    fmt, build = CANDIDATES[name]
    row = Row(name, fmt)
    try:
        enc, dec = build()
        encoded = [enc(f) for f in faces]
        decoded = [dec(d) for d in encoded]
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
        row.error = f"{type(exc).__name__}: {exc}"
        return row
    row.bytes = int(np.mean([len(d) for d in encoded]))
    if fmt == "png":
        row.exact = all(np.array_equal(f, d) for f, d in zip(faces, decoded))
    else:
        row.psnr_db = round(float(np.mean([_psnr(f, d) for f, d in zip(faces, decoded)])), 2)
    row.encode_ms = round(np.mean([_best_ms(lambda f=f: enc(f), repeats) for f in faces]), 2)
    row.decode_ms = round(np.mean([_best_ms(lambda d=d: dec(d), repeats) for d in encoded]), 2)
    return row


def scaling(name: str, faces: list[np.ndarray], threads: list[int], seconds: float) -> dict[str, float]:
    """Encode+decode round trips per second in T threads, each thread looping over the faces for `seconds`."""
    enc, dec = CANDIDATES[name][1]()
    encoded = [enc(f) for f in faces]
    out = {}
    for t in threads:
        counts = [0] * t
        stop = time.perf_counter() + seconds

        def work(i: int, counts: list[int] = counts, stop: float = stop) -> None:
            k = i
            while time.perf_counter() < stop:
                enc(faces[k % len(faces)])
                dec(encoded[k % len(encoded)])
                k += 1
                counts[i] += 1

        started = time.perf_counter()
        pool = [threading.Thread(target=work, args=(i,)) for i in range(t)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        out[str(t)] = round(sum(counts) / (time.perf_counter() - started), 2)
    return out


def gil_release(name: str, faces: list[np.ndarray], calls: int = 8) -> dict[str, float]:
    """Whether the codec lets other Python threads run while it works: one thread makes `calls` codec calls while
    another counts loop turns in Python. Returns the loop's rate during the calls over its rate alone: ~1 when the
    codec releases the GIL (a free core given), ~0 when it holds it - the loop cannot turn inside a call then."""
    enc, dec = CANDIDATES[name][1]()
    data = enc(faces[0])
    out = {}
    for label, fn in (("encode", lambda: enc(faces[0])), ("decode", lambda: dec(data))):
        spans: list[tuple[float, float]] = []
        ticks: list[float] = []
        done = threading.Event()

        def codec(fn=fn, spans=spans, done=done) -> None:
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                spans.append((t0, time.perf_counter()))
            done.set()

        def python(ticks=ticks, done=done) -> None:
            while not done.is_set():
                ticks.append(time.perf_counter())

        alone = []
        python_alone = threading.Thread(target=python, args=(alone, _after(0.3)))
        python_alone.start()
        python_alone.join()
        threads = [threading.Thread(target=python), threading.Thread(target=codec)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        ticks_arr = np.array(ticks)
        inside = sum(int(((ticks_arr > t0) & (ticks_arr < t1)).sum()) for t0, t1 in spans)
        rate_inside = inside / sum(t1 - t0 for t0, t1 in spans)
        rate_alone = len(alone) / (alone[-1] - alone[0])
        out[label] = round(min(1.0, rate_inside / rate_alone), 2)
    return out


def _after(seconds: float) -> threading.Event:
    """An event that is set `seconds` from now."""
    event = threading.Event()
    threading.Timer(seconds, event.set).start()
    return event


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("pillow", "simplejpeg", "PyTurboJPEG", "imagecodecs", "pyspng", "fpng"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def to_markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# Image codecs, one 1024x1024 face ({m['faces']} faces), {m['machine']}, {m['date']}, "
             f"commit {m['commit']}", "",
             f"ms per face on one thread (median of {m['repeats']}); JPEG quality {JPEG_QUALITY}, PNG level "
             f"{PNG_LEVEL}. Round trips/s in T threads: encode + decode of one face, a codec-only loop. GIL free: the "
             "share of its speed a Python thread keeps while the codec runs in another (~1: the codec releases the "
             "GIL).", "",
             "| codec | format | encode ms | decode ms | KB | lossless exact / JPEG PSNR | " +
             " | ".join(f"{t} thr/s" for t in m["threads"]) + " | GIL free enc / dec |",
             "|---|---|---|---|---|---|" + "---|" * len(m["threads"]) + "---|"]
    for r in report["rows"]:
        if r["error"]:
            lines.append(f"| {r['name']} | {r['format']} | - | - | - | unavailable: {r['error'][:60]} |" +
                         " |" * (len(m["threads"]) + 1))
            continue
        quality = ("exact" if r["exact"] else "NOT EXACT") if r["format"] == "png" else f"{r['psnr_db']} dB"
        lines.append(f"| {r['name']} | {r['format']} | {r['encode_ms']} | {r['decode_ms']} | "
                     f"{r['bytes'] / 1024:.0f} | {quality} | " +
                     " | ".join(str(r["scaling"].get(str(t), "")) for t in m["threads"]) +
                     f" | {r['gil_free'].get('encode', '')} / {r['gil_free'].get('decode', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="folder of 1024x1024 PNG faces")
    p.add_argument("--count", type=int, default=4, help="faces to use (default 4)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per face and codec (default 7)")
    p.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="thread counts for the scaling run")
    p.add_argument("--scaling-s", type=float, default=3.0, help="seconds per thread count (default 3)")
    p.add_argument("--only", help="comma-separated candidate names (default: all)")
    p.add_argument("-o", "--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    paths = sorted(args.faces.glob("*.png"))[: args.count]
    if not paths:
        p.error(f"{args.faces}: no PNG faces")
    faces = [np.asarray(Image.open(f).convert("RGB")) for f in paths]
    threads = sorted({int(t) for t in args.threads.split(",")})
    names = args.only.split(",") if args.only else list(CANDIDATES)
    rows = []
    for name in names:
        row = measure(name, faces, args.repeats)
        if not row.error and (row.exact or row.format == "jpeg"):
            row.scaling = scaling(name, faces, threads, args.scaling_s)
            row.gil_free = gil_release(name, faces)
        rows.append(row)
        print(f"{name:24s} {row.error or f'enc {row.encode_ms} ms  dec {row.decode_ms} ms  {row.bytes} B'}",
              file=sys.stderr)
    report = {"meta": {"machine": f"{platform.machine()} {os.cpu_count()} cores ({platform.processor() or 'cpu'})",
                       "date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "faces": len(faces),
                       "size": list(faces[0].shape), "repeats": args.repeats, "threads": threads,
                       "versions": _versions()},
              "rows": [asdict(r) for r in rows]}
    text = to_markdown(report)
    print(text)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / unused_stem(args.out, f"codecs_1024_{time.strftime('%Y%m%d')}")
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
