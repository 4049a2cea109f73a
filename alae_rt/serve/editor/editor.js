// The face editor: calls the HTTP API of `alae-rt serve` (/api/v1, the RPCs in the proto3 JSON mapping) and shows
// the results. The page keeps the face's latent w (from Reconstruct) and every edit starts from it, so that the
// image shown is always decode(edit(w, sliders)); the latent of the image shown can be downloaded and opened again.
"use strict";

const API = "api/v1/";
const DEBOUNCE_MS = 15; // slider events closer than this are one request; a newer request aborts the older one
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("alae-rt-token") || "",
  info: null,
  base: null, // the face's latent (w [1, D], or styles [1, 2L, D] opened from a file): {shape, data (base64)}
  current: null, // what #result shows: {png (base64), latents}
  second: { seeds: ["1"] }, // the second face, a LatentSource
  seq: 0, // the newest edit request; a response for an older one is never shown
  controller: null, // aborts the edit request in flight
  timer: 0,
  frames: [],
};

class ApiError extends Error {}

// ---- the API -------------------------------------------------------------------------------------------------
async function api(path, body, signal) {
  const headers = { "Content-Type": "application/json", "X-Timeout-Ms": "60000" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const resp = await fetch(API + path, {
    method: body === undefined ? "GET" : "POST", headers, signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    $("auth").hidden = false;
    $("token").focus();
  }
  const kind = resp.headers.get("Content-Type") || "";
  const data = kind.startsWith("application/json") ? await resp.json() : await resp.blob();
  if (!resp.ok) throw new ApiError(`${resp.status}: ${data.message || resp.statusText}`);
  return data;
}

function showError(err) {
  if (err.name === "AbortError") return; // a newer request took its place
  $("error").textContent = err instanceof ApiError ? err.message : `${err.name}: ${err.message}`;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// Run fn; its errors are shown to the person, and the busy mark is cleared.
async function guarded(fn) {
  document.body.classList.add("busy");
  try {
    clearError();
    return await fn();
  } catch (err) {
    showError(err);
  } finally {
    document.body.classList.remove("busy");
  }
}

// ---- images and files ------------------------------------------------------------------------------------
const pngUrl = (b64) => "data:image/png;base64," + b64;

function fileBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// Show a base64 PNG in img and wait until it is decoded (what a person sees).
async function show(img, b64) {
  img.src = pngUrl(b64);
  await img.decode();
}

function download(name, href) {
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  a.click();
}

// A latent {shape, data} as a .npy file (format 1.0, little-endian float32).
function npyBlob(latents) {
  const shape = latents.shape.map(Number);
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n"; // the data starts 64-byte aligned
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, header.length & 255, header.length >> 8]);
  head.set(new TextEncoder().encode(header), 10);
  return new Blob([head, Uint8Array.from(atob(latents.data), (c) => c.charCodeAt(0))]);
}

// A .npy file (float32, little-endian, C order) -> {shape, data (base64)}.
async function npyLatents(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const major = bytes[6];
  const size = major === 1 ? bytes[8] | (bytes[9] << 8) : new DataView(bytes.buffer).getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + size));
  if (bytes[0] !== 0x93 || !header.includes("'<f4'") || header.includes("'fortran_order': True"))
    throw new Error(`${file.name}: expected a .npy of little-endian float32 in C order`);
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(",").filter((s) => s.trim()).map(Number);
  let binary = "";
  for (const b of bytes.subarray(start + size)) binary += String.fromCharCode(b);
  return { shape, data: btoa(binary) };
}

// ---- the face ------------------------------------------------------------------------------------------
// An image file (a photo, a sample, a generated face) -> original, reconstruction, PSNR and the face's w.
async function openFace(blob) {
  const b64 = await fileBase64(blob);
  const original = $("original");
  original.src = URL.createObjectURL(blob);
  original.decode().then(() => {
    const r = state.info.resolution, w = original.naturalWidth, h = original.naturalHeight;
    $("resize-note").textContent = w === r && h === r ? `${w}x${h}, as it is.` :
      `${w}x${h} -> ${r}x${r}${w !== h ? " (centre-cropped to a square first)" : ""}.`;
  }, () => { $("resize-note").textContent = "your browser cannot show this file; the server will say whether it can read it."; });
  const started = performance.now();
  const resp = await api("reconstruct", { images: [{ encoded: b64 }], return_psnr: true, output: { return_latents: true } });
  await show($("reconstruction"), resp.images[0].encoded);
  $("psnr").textContent = `${resp.psnr[0].toFixed(2)} dB`;
  state.base = resp.latents;
  setLatency(performance.now() - started);
  await render(started);
}

async function openLatent(file) {
  const latents = await npyLatents(file);
  const started = performance.now();
  const resp = await api("decode", { latents, output: { return_latents: true } });
  $("original").removeAttribute("src");
  $("resize-note").textContent = "a latent: no photo.";
  $("psnr").textContent = "–";
  await show($("reconstruction"), resp.images[0].encoded);
  state.base = resp.latents;
  await render(started);
}

async function openSample(name) {
  if (name.startsWith("seed:")) {
    const resp = await api("generate", { seeds: [name.slice(5)] });
    return openFace(new Blob([Uint8Array.from(atob(resp.images[0].encoded), (c) => c.charCodeAt(0))],
      { type: "image/png" }));
  }
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const resp = await fetch(API + "samples/" + encodeURIComponent(name), { headers });
  if (!resp.ok) throw new ApiError(`${resp.status}: ${(await resp.json()).message}`);
  return openFace(await resp.blob());
}

// ---- edits -------------------------------------------------------------------------------------------------
function edits() {
  return [...document.querySelectorAll("#sliders input")]
    // a slider at rest may sit a rounding error off 0 (its steps count from min): that is no edit
    .filter((s) => Math.abs(Number(s.value)) >= Number(s.step) / 2)
    .map((s) => ({ name: s.dataset.name, strength: Number(s.value) }));
}

function layers() {
  const range = state.info.style_ranges.find((r) => r.name === $("layers").value);
  return range ? range.layers : [];
}

// The request for what the sliders say now: a pure function of (the face's w, sliders, layers).
function editRequest() {
  return { source: { latents: state.base }, edits: edits(), layers: layers(), output: { return_latents: true } };
}

// Show decode(edit(w, sliders)). Each call aborts the one before; a response is shown only if it is the newest.
async function render(started) {
  if (!state.base) return;
  const seq = ++state.seq;
  if (state.controller) state.controller.abort();
  const controller = (state.controller = new AbortController());
  const req = editRequest();
  try {
    clearError();
    let png, latents;
    if (req.edits.length) {
      const resp = await api("edit", req, controller.signal);
      [png, latents] = [resp.images[0].encoded, resp.latents];
    } else {
      const resp = await api("decode", { latents: state.base, output: { return_latents: true } }, controller.signal);
      [png, latents] = [resp.images[0].encoded, resp.latents];
    }
    if (seq !== state.seq) return; // a newer request was sent meanwhile
    const result = $("result");
    await show(result, png);
    if (seq !== state.seq) return;
    state.current = { png, latents };
    result.dataset.edit = JSON.stringify({ edits: req.edits, layers: req.layers });
    setLatency(performance.now() - started);
  } catch (err) {
    if (seq === state.seq) showError(err);
  } finally {
    if (seq === state.seq) state.controller = null;
  }
}

function setLatency(ms) {
  $("latency").textContent = `${ms.toFixed(0)} ms`;
  $("latency").dataset.ms = ms.toFixed(1);
}

function scheduleRender(event) {
  const started = event ? event.timeStamp : performance.now(); // the move, on performance.now()'s clock
  clearTimeout(state.timer);
  state.timer = setTimeout(() => render(started), DEBOUNCE_MS);
}

function buildSliders(info) {
  const box = $("sliders");
  box.replaceChildren();
  for (const d of info.direction_info || []) {
    const label = document.createElement("label");
    label.textContent = d.label === d.name ? d.name : `${d.label} (${d.name})`;
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", min: d.min, max: d.max, step: (d.max - d.min) / 200, value: 0 });
    slider.dataset.name = d.name;
    slider.setAttribute("aria-label", d.name);
    const out = document.createElement("output");
    out.textContent = "0";
    slider.addEventListener("input", (event) => {
      out.textContent = Number(slider.value).toFixed(2);
      scheduleRender(event);
    });
    box.append(label, slider, out);
  }
  for (const r of info.style_ranges || []) {
    const option = new Option(`${r.name} (styles ${r.layers[0]}-${r.layers[r.layers.length - 1]})`, r.name);
    $("layers").append(option);
  }
}

function reset() {
  for (const s of document.querySelectorAll("#sliders input")) {
    s.value = 0;
    s.nextElementSibling.textContent = "0";
  }
  $("layers").value = "all";
  scheduleRender();
}

// ---- the second face: mixing and interpolation ----------------------------------------------------------------
async function mix() {
  const started = performance.now();
  const resp = await api("mix", { a: { latents: currentLatents() }, b: state.second, cutoff: Number($("cutoff").value) });
  await show($("mix-result"), resp.images[0].encoded);
  setLatency(performance.now() - started);
}

async function interpolate() {
  const started = performance.now();
  const resp = await api("interpolate", { a: { latents: currentLatents() }, b: state.second, steps: Number($("steps").value) });
  state.frames = resp.frames.map((f) => pngUrl(f.images[0].encoded));
  $("strip").replaceChildren(...state.frames.map((src, i) => Object.assign(new Image(), { src, alt: `frame ${i}` })));
  $("animation").src = state.frames[0];
  setLatency(performance.now() - started);
}

function play() {
  if (!state.frames.length) return;
  const n = state.frames.length, path = [...Array(n).keys(), ...[...Array(n).keys()].reverse().slice(1, -1)];
  let i = 0;
  clearInterval(state.playing);
  state.playing = setInterval(() => {
    $("animation").src = state.frames[path[i++ % path.length]];
    if (i >= 3 * path.length) clearInterval(state.playing);
  }, 120);
}

function currentLatents() {
  if (!state.current) throw new Error("open a face first");
  return state.current.latents;
}

// ---- start -------------------------------------------------------------------------------------------------
async function start() {
  const info = (state.info = await api("info"));
  $("auth").hidden = true;
  $("facts").textContent = `${info.config_name} · ${info.resolution}x${info.resolution} · ${info.backend} · ` +
    `${info.device} · ${info.dtype} · ${info.weights}`;
  $("cutoff").max = info.num_styles;
  buildSliders(info);
  const select = $("sample");
  const { samples } = await api("samples");
  for (const name of samples) select.append(new Option(name, name));
  for (let seed = 0; seed < 8; seed++) select.append(new Option(`generated face, seed ${seed}`, `seed:${seed}`));
  document.body.dataset.ready = "1";
}

function wire() {
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("alae-rt-token", state.token);
    guarded(start);
  });
  $("sample").addEventListener("change", (e) => e.target.value && guarded(() => openSample(e.target.value)));
  $("upload").addEventListener("change", (e) => e.target.files[0] && guarded(() => openFace(e.target.files[0])));
  $("open-latent").addEventListener("change", (e) => e.target.files[0] && guarded(() => openLatent(e.target.files[0])));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    if (e.dataTransfer.files[0]) guarded(() => openFace(e.dataTransfer.files[0]));
  });
  $("layers").addEventListener("change", scheduleRender);
  $("reset").addEventListener("click", reset);
  $("download-png").addEventListener("click", () => state.current && download("face.png", pngUrl(state.current.png)));
  $("download-npy").addEventListener("click", () => state.current &&
    download("face_latent.npy", URL.createObjectURL(npyBlob(state.current.latents))));
  $("second-seed").addEventListener("input", (e) => {
    state.second = { seeds: [String(Math.max(0, Math.floor(Number(e.target.value) || 0)))] };
    $("second-name").textContent = `second face: seed ${state.second.seeds[0]}`;
  });
  $("second-upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) guarded(async () => {
      state.second = { images: [{ encoded: await fileBase64(file) }] };
      $("second-name").textContent = `second face: ${file.name}`;
    });
  });
  $("cutoff").addEventListener("input", (e) => { $("cutoff-value").textContent = e.target.value; });
  $("mix").addEventListener("click", () => guarded(mix));
  $("interpolate").addEventListener("click", () => guarded(interpolate));
  $("play").addEventListener("click", play);
  guarded(start);
}

wire();
