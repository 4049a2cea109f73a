"""The face editor in a real browser: headless Chromium (the system's package) driven by Playwright, against a real
server on 127.0.0.1 with the bundled model. The image the page shows must be what the API returns for the same edit;
the page opens on a face and its address restores the view.

Screenshots go to each test's tmp_path (pytest prints the folder of a failing test; pytest --basetemp=DIR keeps them
in DIR/<test name>0/)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import FACES128, require
from PIL import Image
from serve_helpers import ServerThread, one_torch_thread

from alae_rt import Runtime
from alae_rt.errors import AlaeError
from alae_rt.serve.config import ServeConfig
from alae_rt.serve.http_api import BUNDLED_SAMPLES, read_samples

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra has it)")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TOKEN = "editor-test-token-3e9a7c1d5b"


def browser_path() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium found ({', '.join(BROWSERS)} on PATH); .ci/run installs Debian's chromium package")


@pytest.fixture(scope="module")
def browser():
    path = browser_path()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


BUNDLED = sorted(p.name for p in BUNDLED_SAMPLES.iterdir() if p.name.endswith(".png"))


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory) -> Path:
    """--sample-faces: two of the bundled faces and a text file named like an image (skipped at start)."""
    folder = tmp_path_factory.mktemp("samples")
    for name in BUNDLED[:2]:
        (folder / name).write_bytes((BUNDLED_SAMPLES / name).read_bytes())
    (folder / "notes.png").write_text("not a picture\n")
    return folder


@pytest.fixture(scope="module")
def server(samples_dir):
    rt = Runtime.load(max_batch=4)  # the bundled 64x64 model and its directions
    with ServerThread(rt, ServeConfig(port=0, http_port=0, max_delay_ms=1, sample_faces=samples_dir)) as s:
        yield s


@pytest.fixture
def page(browser, server, tmp_path):
    # The page's CSP forbids eval, which Playwright's wait_for_function uses; the token test runs under the CSP.
    context = browser.new_context(viewport={"width": 1200, "height": 1400}, bypass_csp=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.server.http_url)
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    yield pg
    pg.screenshot(path=str(tmp_path / "editor-end.png"), full_page=True)
    context.close()
    assert errors == [], f"the page raised: {errors}"


def face_file() -> Path:
    return sorted(require(FACES128).glob("*.png"))[0]


def api(server, path: str, body: dict) -> dict:
    req = urllib.request.Request(server.server.http_url + "api/v1/" + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def png_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def shown_pixels(page, selector: str) -> np.ndarray:
    """The pixels of an <img> as the page holds them (drawn into a canvas), RGB."""
    w, h, data = page.eval_on_selector(selector, """img => {
        const c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        return [c.width, c.height, Array.from(ctx.getImageData(0, 0, c.width, c.height).data)];
    }""")
    return np.array(data, dtype=int).reshape(h, w, 4)[:, :, :3]


def api_edit_pixels(server, face: Path, shown_edit: dict) -> np.ndarray:
    """What the API returns for the edit the page says it shows: the face's w, then that edit (or w decoded)."""
    w = api(server, "reconstruct", {"images": [{"encoded": base64.b64encode(face.read_bytes()).decode()}],
                                    "output": {"return_latents": True, "skip_images": True}})["latents"]
    if shown_edit["edits"]:
        resp = api(server, "edit", {"source": {"latents": w}, **shown_edit})
    else:
        resp = api(server, "decode", {"latents": w})
    return png_pixels(resp["images"][0]["encoded"])


def open_face(page, face: Path) -> None:
    page.set_input_files("#upload", str(face))
    page.wait_for_selector(f"#result[data-face='photo:{face.name}']", timeout=30_000)


def unshown_images(page) -> list[str]:
    """The <img>s a person sees that show no picture (a broken-image icon, alt text, an empty box)."""
    return page.evaluate("""() => [...document.images].filter(i => i.getClientRects().length &&
        getComputedStyle(i).visibility !== "hidden" && !(i.complete && i.naturalWidth > 0)).map(i => i.id || i.alt)""")


def faces_shown(page) -> list[str]:
    """Which of the three views show a picture."""
    return page.evaluate("""() => ["original", "reconstruction", "result"].filter(id => {
        const i = document.getElementById(id);
        return i.getAttribute("src") && i.complete && i.naturalWidth > 0 && getComputedStyle(i).visibility !== "hidden";
    })""")


def mix_cutoff_sent(page) -> int:
    with page.expect_request(lambda r: r.url.endswith("/api/v1/mix")) as request:
        page.click("#mix")
    page.wait_for_selector("#mix-result[src]", timeout=30_000)
    return request.value.post_data_json["cutoff"]


def move(page, name: str, values: list[float], gap_ms: float = 0) -> None:
    """Drag a slider through `values` as input events, gap_ms apart (0: as fast as the page takes them)."""
    page.eval_on_selector(f"#sliders input[data-name='{name}']", """async (s, [values, gap]) => {
        for (const v of values) {
            s.value = v;
            s.dispatchEvent(new Event("input", {bubbles: true}));
            if (gap) await new Promise(r => setTimeout(r, gap));
        }
    }""", [values, gap_ms])


def shown_edit(page) -> dict:
    return json.loads(page.get_attribute("#result", "data-edit"))


def settled_edit(page, name: str, value: float) -> dict:
    """Wait until the page shows the edit with `name` at the slider's value nearest `value`."""
    page.wait_for_function("""([name, value]) => {
        const s = document.querySelector(`#sliders input[data-name='${name}']`);
        const shown = JSON.parse(document.querySelector("#result").dataset.edit || "{}");
        const e = (shown.edits || []).find(e => e.name === name);
        return e && e.strength === Number(s.value) && Math.abs(e.strength - value) <= Number(s.step);
    }""", arg=[name, value], timeout=30_000)
    return shown_edit(page)


def test_upload_reconstruct_and_a_slider_show_what_the_api_returns(page, server, tmp_path):
    face = face_file()
    open_face(page, face)
    assert page.inner_text("#psnr").endswith("dB")
    assert "128x128: the server resized it to 64x64" in page.inner_text("#resize-note")
    assert page.input_value("#sample") == "" and page.inner_text("#sample option:first-child") == \
        f"your photo: {face.name}" and "seed=" not in page.url
    assert "small-64" in page.inner_text("#facts") and page.inner_text("#latency").endswith("ms")
    page.screenshot(path=str(tmp_path / "editor-reconstructed.png"), full_page=True)
    # unedited: the face decoded from its w
    assert np.abs(shown_pixels(page, "#result") - api_edit_pixels(server, face, shown_edit(page))).max() <= 1
    page.select_option("#layers", "coarse")
    move(page, "pc00", [3.0])
    edit = settled_edit(page, "pc00", 3.0)
    assert edit["layers"] == [0, 1, 2, 3]
    page.screenshot(path=str(tmp_path / "editor-edited.png"), full_page=True)
    assert np.abs(shown_pixels(page, "#result") - api_edit_pixels(server, face, edit)).max() <= 1
    # mixing and interpolation with the second face (seed 1)
    page.click("#mix")
    page.wait_for_function("document.querySelector('#mix-result').naturalWidth > 0", timeout=30_000)
    page.click("#interpolate")
    page.wait_for_function("document.querySelectorAll('#strip img').length === 8", timeout=30_000)
    page.screenshot(path=str(tmp_path / "editor-mix-interpolate.png"), full_page=True)


def test_rapid_slider_moves_end_on_the_latest_value(page, server, tmp_path):
    face = face_file()
    open_face(page, face)
    values = [round(v, 2) for v in np.linspace(-4, 4, 25)] + [1.5]
    move(page, "pc01", values, gap_ms=8)  # faster than a call: newer requests abort older ones
    edit = settled_edit(page, "pc01", 1.5)
    page.wait_for_timeout(400)  # nothing older arrives afterwards
    assert shown_edit(page) == edit
    assert np.abs(shown_pixels(page, "#result") - api_edit_pixels(server, face, edit)).max() <= 1
    page.screenshot(path=str(tmp_path / "editor-rapid.png"), full_page=True)


def test_a_latent_then_a_corrupt_upload(page, server, tmp_path):
    # a latent file: no photo to show, and the menu names the file instead of the face before
    w = api(server, "generate", {"seeds": [3], "output": {"return_latents": True, "skip_images": True}})["latents"]
    latent = tmp_path / "face3.npy"
    np.save(latent, np.frombuffer(base64.b64decode(w["data"]), "<f4").reshape([int(n) for n in w["shape"]]))
    page.set_input_files("#open-latent", str(latent))
    page.wait_for_selector("#result[data-face='latent:face3.npy']", timeout=30_000)
    assert faces_shown(page) == ["reconstruction", "result"] and unshown_images(page) == []
    assert "none" in page.inner_text("#original-caption")
    assert page.input_value("#sample") == "" and page.inner_text("#sample option:first-child") == "a latent: face3.npy"
    # a corrupt upload: the error, and no face left from before beside it
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a picture" * 20)
    page.set_input_files("#upload", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    text = page.inner_text("#error")
    assert text.startswith("400: images[0].encoded:") and "not a readable image" in text
    page.wait_for_function("!document.querySelector('#result').hasAttribute('data-face')", timeout=30_000)
    assert faces_shown(page) == [] and unshown_images(page) == []
    assert page.inner_text("#psnr") == "" and page.input_value("#sample") == ""
    page.screenshot(path=str(tmp_path / "editor-error.png"), full_page=True)


def test_the_page_asks_for_the_token_when_the_server_needs_one(browser, tmp_path):
    rt = Runtime.load(max_batch=2)
    with ServerThread(rt, ServeConfig(port=0, http_port=0, auth_tokens=(TOKEN,), warmup=False)) as s:
        pg = browser.new_page()
        pg.goto(s.server.http_url)
        pg.wait_for_selector("#auth:not([hidden])", timeout=30_000)
        assert "401" in pg.inner_text("#error")
        pg.fill("#token", TOKEN)
        pg.click("#auth button")
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert pg.is_hidden("#auth") and "small-64" in pg.inner_text("#facts")
        # without --sample-faces the menu offers the faces bundled with the package
        menu = pg.eval_on_selector_all("#sample option", "os => os.map(o => o.value)")
        assert BUNDLED and set(BUNDLED) <= set(menu)
        pg.screenshot(path=str(tmp_path / "editor-token.png"), full_page=True)
        pg.close()


def test_the_page_opens_on_a_face_and_its_address_restores_the_view(page, server, samples_dir, tmp_path):
    # the first view: seed 0's generated face (constant noise), its reconstruction and the edited view, a hint
    assert page.get_attribute("#result", "data-face") == "seed:0" and page.url.endswith("/?seed=0")
    assert faces_shown(page) == ["original", "reconstruction", "result"] and unshown_images(page) == []
    generated = api(server, "generate", {"seeds": [0], "noise": {"mode": "NOISE_MODE_CONST"}})["images"][0]["encoded"]
    assert np.array_equal(shown_pixels(page, "#original"), png_pixels(generated))
    assert page.input_value("#sample") == "seed:0" and page.is_visible("#hint")
    assert "64x64" in page.inner_text("#resize-note") and page.inner_text("#psnr").endswith("dB")
    # --sample-faces: the images are offered, the text file named .png is not
    menu = page.eval_on_selector_all("#sample option", "os => os.map(o => o.value)")
    assert [m for m in menu if m.endswith(".png")] == BUNDLED[:2]
    # the Mix cutoff sent is the one the label shows: the model's style count bounds the slider
    assert page.get_attribute("#cutoff", "max") == "10"
    assert mix_cutoff_sent(page) == int(page.inner_text("#cutoff-value")) == 4
    page.eval_on_selector("#cutoff", "s => { s.value = 7; s.dispatchEvent(new Event('input', {bubbles: true})); }")
    assert mix_cutoff_sent(page) == int(page.inner_text("#cutoff-value")) == 7
    # a slider move changes the edited view and the address
    before = shown_pixels(page, "#result")
    page.select_option("#layers", "middle")
    move(page, "pc01", [2.0])
    edit = settled_edit(page, "pc01", 2.0)
    edited = shown_pixels(page, "#result")
    assert np.abs(edited - before).max() > 8
    assert re.search(r"/\?seed=0&edit=pc01:1\.99&layers=middle&cutoff=7$", page.url), page.url
    # a reload of the address shows the same view
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert settled_edit(page, "pc01", 2.0) == edit and page.input_value("#layers") == "middle"
    assert np.array_equal(shown_pixels(page, "#result"), edited) and page.inner_text("#cutoff-value") == "7"
    page.screenshot(path=str(tmp_path / "editor-reloaded.png"), full_page=True)
    # a sample face from the menu, by its name in the address
    page.select_option("#sample", BUNDLED[1])
    page.wait_for_selector(f"#result[data-face='sample:{BUNDLED[1]}']", timeout=30_000)
    assert f"sample={BUNDLED[1]}" in page.url and "seed=" not in page.url
    sample = (samples_dir / BUNDLED[1]).read_bytes()
    assert np.array_equal(shown_pixels(page, "#original"), png_pixels(base64.b64encode(sample).decode()))


def test_sample_faces_that_are_not_images_are_skipped_and_named(tmp_path, caplog):
    png = (BUNDLED_SAMPLES / BUNDLED[0]).read_bytes()
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "notes.png").write_text("a text file\n")
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])  # its header is whole, its pixels are not
    (tmp_path / "photo.webp").write_bytes(_jpeg(png))  # served as what it is
    logger = logging.getLogger("alae_rt.serve")
    logger.addHandler(caplog.handler)  # the server's logger may not propagate to the root, where caplog listens
    try:
        samples = read_samples(tmp_path, 1 << 20)
    finally:
        logger.removeHandler(caplog.handler)
    assert {name: kind for name, (_, kind) in samples.items()} == {"a.png": "image/png", "photo.webp": "image/jpeg"}
    skipped = sorted({r.getMessage() for r in caplog.records if r.levelno == logging.WARNING})
    assert len(skipped) == 2 and "cut.png: corrupt or truncated image" in skipped[0]
    assert "notes.png: not a PNG, JPEG or WebP image" in skipped[1]
    (tmp_path / "a.png").unlink()
    (tmp_path / "photo.webp").unlink()
    with pytest.raises(AlaeError, match="holds no readable .png, .jpg or .webp image"):
        read_samples(tmp_path, 1 << 20)


def _jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, "JPEG")
    return out.getvalue()
