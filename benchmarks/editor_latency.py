"""The face editor's latency in a real browser: page opened -> first face shown, and slider move -> new image shown,
on `alae-rt serve --http-port`.

Starts the server (the bundled model unless --checkpoint), opens the editor in headless Chromium (the system's,
through Playwright) --opens times, each in a fresh browser context (no cache): the page's own figure from navigation
start to its first face (generated, seed 0) shown in all three views, and the same seen from here (page.goto to the
page saying it is ready). Then it uploads a face and moves one slider --moves times, each time waiting until the
page shows the image for that value. Two figures per move: to the next painted frame after the page has the image
(measured here, from the input event: what a person sees, rounded up to a 60 Hz frame), and the page's own "last
call" figure (input event to image decoded, what the page displays; it includes the editor's 15 ms debounce). Both
end to end: the request's JSON, the server's decode stage, batcher and model, PNG encoding, the browser's image
decoding.

    python benchmarks/editor_latency.py                      # bundled 64x64 model, CPU
    python benchmarks/editor_latency.py --checkpoint model.pth --device cuda --moves 50

Writes benchmarks/results/editor_latency_<model>_<machine>_<date>.{json,md} and, with --screenshot, the page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from alae_rt.bench import machine_info, unused_stem

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FACES = ROOT.parent / "shared" / "data" / "faces128"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# One slider move, timed in the page: set the value, send the input event, wait for the frame after the page shows
# the image for that value.
MOVE_JS = """async ([name, value]) => {
    const slider = document.querySelector(`#sliders input[data-name='${name}']`);
    const result = document.querySelector("#result");
    const frame = () => new Promise(r => requestAnimationFrame(r));
    await frame();
    const t0 = performance.now();
    slider.value = value;
    slider.dispatchEvent(new Event("input", {bubbles: true}));
    const want = Number(slider.value);
    for (;;) {
        await frame();
        const e = (JSON.parse(result.dataset.edit || "{}").edits || []).find(e => e.name === name);
        if (e && e.strength === want) break;
        if (performance.now() - t0 > 60000) throw new Error("no image for " + want + " after 60 s");
    }
    return [performance.now() - t0, Number(document.querySelector("#latency").dataset.ms)];
}"""


def start_server(args, workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "http_port"
    cmd = [sys.executable, "-m", "alae_rt.cli", "serve", "--port", "0", "--http-port", "0", "--http-port-file",
           str(port_file), "--device", args.device, "--log-level", "warning"]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 600
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start (exit status {proc.poll()})")
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port_file.read_text().strip()}/"
    while True:  # the warm-up
        try:
            with urllib.request.urlopen(url + "api/v1/health", timeout=5):
                return proc, url
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready") from None
            time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="weights (default: the bundled 64x64 model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="the server's torch threads (default: alae-rt's)")
    p.add_argument("--opens", type=int, default=10, help="page loads timed (first face shown)")
    p.add_argument("--moves", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="moves not counted")
    p.add_argument("--face", type=Path, help=f"the face to upload (default: the first of {FACES})")
    p.add_argument("--browser", help=f"Chromium's path (default: the first of {', '.join(BROWSERS)} on PATH)")
    p.add_argument("--screenshot", type=Path, help="save the page after the last move here (PNG)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    browser_path = args.browser or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not browser_path:
        raise SystemExit(f"no Chromium found ({', '.join(BROWSERS)}); apt-get install chromium")
    face = args.face or sorted(FACES.glob("*.png"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args, Path(tmp))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
                opens = []
                for _ in range(args.opens):
                    context = browser.new_context(viewport={"width": 1200, "height": 1000})
                    page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(url)
                    page.wait_for_selector("body[data-ready='1']", timeout=60_000, state="attached")
                    seen_ms = (time.perf_counter() - t0) * 1000
                    opens.append((float(page.get_attribute("body", "data-first-face-ms")), seen_ms))
                    context.close()
                page = browser.new_page(viewport={"width": 1200, "height": 1000}, bypass_csp=True)
                page.goto(url)
                page.wait_for_selector("body[data-ready='1']", timeout=60_000, state="attached")
                facts = page.inner_text("#facts")
                page.set_input_files("#upload", str(face))
                page.wait_for_selector(f"#result[data-face='photo:{face.name}']", timeout=120_000)
                slider = page.locator("#sliders input").first
                name = slider.get_attribute("data-name")
                low, high = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
                times = []
                for i in range(args.warmup + args.moves):
                    value = low + (high - low) * ((i * 7) % 20 + 0.5) / 20  # a different value each move
                    shown_ms, page_ms = page.evaluate(MOVE_JS, [name, value])
                    if i >= args.warmup:
                        times.append((shown_ms, page_ms))
                if args.screenshot:
                    page.screenshot(path=str(args.screenshot))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(60)
    shown, own = [t[0] for t in times], [t[1] for t in times]
    first_face, first_seen = [t[0] for t in opens], [t[1] for t in opens]
    info = machine_info(torch.device(args.device))
    model = facts.split(" · ")[0]
    def summary(values):
        return {"median": statistics.median(values), "p90": sorted(values)[int(0.9 * (len(values) - 1))],
                "min": min(values), "max": max(values)}

    result = {
        "meta": {**info, "model": facts, "browser": browser_path, "face": face.name, "moves": args.moves,
                 "opens": args.opens, "slider": name, "load_average_after": os.getloadavg()},
        "first_face_ms": summary(first_face), "first_face_seen_ms": summary(first_seen), "opens": opens,
        "shown_ms": {"median": statistics.median(shown), "p90": sorted(shown)[int(0.9 * (len(shown) - 1))],
                     "min": min(shown), "max": max(shown)},
        "page_ms": {"median": statistics.median(own), "p90": sorted(own)[int(0.9 * (len(own) - 1))],
                    "min": min(own), "max": max(own)},
        "samples": times,
    }
    machine = re.sub(r"[^a-z0-9]+", "-", info["device_name"].lower()).strip("-")[:32]
    stem = unused_stem(args.out, f"editor_latency_{model}_{machine}_{time.strftime('%Y%m%d')}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    s, o = result["shown_ms"], result["page_ms"]
    f, fs = result["first_face_ms"], result["first_face_seen_ms"]
    (args.out / f"{stem}.md").write_text("\n".join([
        f"# Face editor latency: page opened -> first face, slider move -> new image shown, {model}, "
        f"{info['device_name']} "
        f"({info['cpu_count']} cores), {info['date'][:10]}, commit {info['commit']}", "",
        f"{args.opens} page loads (each in a fresh browser context) and {args.moves} moves of slider `{name}` in "
        f"headless Chromium against `alae-rt serve --http-port` on the same machine ({facts}); each move waits for its "
        "image. Goals: the first face within 2 s of opening, a slider move within 100 ms. Load average (1, 5, 15 "
        f"min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs on the cores).", "",
        "| measure | median ms | p90 ms | min | max |", "|---|---|---|---|---|",
        f"| page opened (navigation start) -> first face shown in original, reconstruction and edited view (the "
        f"page's figure) | {f['median']:.1f} | {f['p90']:.1f} | {f['min']:.1f} | {f['max']:.1f} |",
        f"| the same from outside (page.goto -> the page says ready) | {fs['median']:.1f} | {fs['p90']:.1f} | "
        f"{fs['min']:.1f} | {fs['max']:.1f} |",
        f"| input event -> frame painted with the new image | {s['median']:.1f} | {s['p90']:.1f} | {s['min']:.1f} | "
        f"{s['max']:.1f} |",
        f"| the page's own figure (input -> image decoded, 15 ms debounce included) | {o['median']:.1f} | "
        f"{o['p90']:.1f} | {o['min']:.1f} | {o['max']:.1f} |", ""]))
    print(f"page opened -> first face shown: median {f['median']:.1f} ms (max {f['max']:.1f}); "
          f"slider move -> image shown: median {s['median']:.1f} ms (p90 {s['p90']:.1f}); the page says "
          f"{o['median']:.1f} ms; wrote {args.out / stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
