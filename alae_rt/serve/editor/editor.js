// The face editor: calls the HTTP API of `alae-rt serve` (/api/v1, the RPCs in the proto3 JSON mapping) and shows
// the results. The page keeps the face's latent w (from Reconstruct) and every edit starts from it, so that the
// image shown is always decode(edit(w, sliders)); the latent of the image shown can be downloaded and opened again.
// The page opens on a face (the one its address names, else the generated face of seed 0) and keeps what it shows
// in its address (?seed=0 or ?sample=NAME, the sliders, layers, cutoff, second seed): a view can be reloaded, shared.
"use strict";

const API = "api/v1/";
const DEBOUNCE_MS = 15; // slider events closer than this are one request; a newer request aborts the older one
const FIRST_SEED = "0"; // the face the page opens on when its address names none
const SEEDS_LISTED = 8; // the menu's generated faces: seeds 0..7
const DEFAULT_CUTOFF = 4; // the Mix cutoff the page starts with (at most the model's style count)
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("alae-rt-token") || "",
  info: null,
  base: null, // the face's latent (w [1, D], or styles [1, 2L, D] opened from a file): {shape, data (base64)}
  face: null, // what the face is: {key: "seed:0" | "sample:NAME" | "photo:NAME" | "latent:NAME", query}
  opening: 0, // the newest face opened; an older one still loading is dropped
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
// face: {key, query} for the menu, the address and data-face; query is [name, value] for the address, or null (a
// photo or a latent file cannot be named there).

// Nothing of the face before: a failed open shows no face rather than the previous one beside the error.
function clearFace() {
  state.base = state.current = state.face = null;
  for (const id of ["original", "reconstruction", "result"]) $(id).removeAttribute("src");
  delete $("result").dataset.edit;
  delete $("result").dataset.face;
  $("psnr").textContent = "";
  $("original-caption").textContent = "original";
  showFaceChoice(null);
}

// The menu shows the face open now: its entry, or for a photo or a latent its name in the first entry.
function showFaceChoice(face) {
  const select = $("sample"), key = face ? face.key : ":";
  const kind = key.slice(0, key.indexOf(":")), name = key.slice(key.indexOf(":") + 1);
  if (kind === "seed" && ![...select.options].some((o) => o.value === key))
    select.append(new Option(`generated face, seed ${name}`, key)); // a seed the menu does not list (from the address)
  select.options[0].textContent = kind === "photo" ? `your photo: ${name}` : kind === "latent" ? `a latent: ${name}` :
    "(none)";
  select.value = kind === "seed" ? key : kind === "sample" ? name : "";
  writeAddress();
}

async function originalShown(img) {
  try {
    await img.decode();
    return true;
  } catch {
    img.removeAttribute("src"); // no broken-image icon: the note says why
    return false;
  }
}

// An image file (a photo, a sample, a generated face) -> original, reconstruction, PSNR and the face's w; all three
// views change together once the server has answered.
async function openFace(blob, face) {
  const opening = ++state.opening;
  const started = performance.now();
  const b64 = await fileBase64(blob);
  let resp;
  try {
    resp = await api("reconstruct",
      { images: [{ encoded: b64 }], return_psnr: true, output: { return_latents: true } });
  } catch (err) {
    if (opening === state.opening) clearFace();
    throw err;
  }
  if (opening !== state.opening) return;
  const original = $("original");
  if (original.src.startsWith("blob:")) URL.revokeObjectURL(original.src);
  original.src = URL.createObjectURL(blob);
  const [readable] = await Promise.all([originalShown(original), show($("reconstruction"), resp.images[0].encoded)]);
  if (opening !== state.opening) return;
  const r = state.info.resolution, w = original.naturalWidth, h = original.naturalHeight;
  const crop = w !== h ? " (centre-cropped to a square first)" : "";
  $("resize-note").textContent = !readable ? "Your browser cannot show this file; the server could read it." :
    w === r && h === r ? `This face is ${w}x${h}, the model's resolution: used as it is.` :
    `This face is ${w}x${h}: the server resized it to ${r}x${r}${crop}.`;
  $("original-caption").textContent = "original";
  $("psnr").textContent = `, PSNR ${resp.psnr[0].toFixed(2)} dB`;
  state.base = resp.latents;
  state.face = face;
  showFaceChoice(face);
  setLatency(performance.now() - started);
  await render(started);
}

async function openLatent(file) {
  const latents = await npyLatents(file);
  const opening = ++state.opening;
  const started = performance.now();
  let resp;
  try {
    resp = await api("decode", { latents, output: { return_latents: true } });
  } catch (err) {
    if (opening === state.opening) clearFace();
    throw err;
  }
  if (opening !== state.opening) return;
  $("original").removeAttribute("src");
  $("original-caption").textContent = "original: none (a latent has no photo)";
  $("resize-note").textContent = "";
  $("psnr").textContent = ": the latent decoded";
  await show($("reconstruction"), resp.images[0].encoded);
  if (opening !== state.opening) return;
  state.base = resp.latents;
  state.face = { key: `latent:${file.name}`, query: null };
  showFaceChoice(state.face);
  await render(started);
}

// A menu entry: "seed:N" (the generated face of seed N, constant noise) or a sample face's file name.
async function openSample(value) {
  if (value.startsWith("seed:")) {
    const seed = value.slice(5);
    const resp = await api("generate", { seeds: [seed], noise: { mode: "NOISE_MODE_CONST" } });
    return openFace(new Blob([Uint8Array.from(atob(resp.images[0].encoded), (c) => c.charCodeAt(0))],
      { type: "image/png" }), { key: value, query: ["seed", seed] });
  }
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const resp = await fetch(API + "samples/" + encodeURIComponent(value), { headers });
  if (!resp.ok) throw new ApiError(`${resp.status}: ${(await resp.json()).message}`);
  return openFace(await resp.blob(), { key: `sample:${value}`, query: ["sample", value] });
}

// ---- the page's state in its address -----------------------------------------------------------------------------
function writeAddress() {
  const parts = [];
  // ":" and "," need no escaping in a query: the address stays readable (?seed=0&edit=pc00:1.5,pc01:-2)
  const add = (key, value) =>
    parts.push(`${key}=${encodeURIComponent(value).replace(/%3A/g, ":").replace(/%2C/g, ",")}`);
  if (state.face && state.face.query) add(...state.face.query);
  // a slider's value to the digits that set it again (its steps count from min: 1.9866885 is written 1.99)
  const short = (s) => Number(Number(s.value).toFixed(Math.max(0, Math.ceil(-Math.log10(Number(s.step) / 4)))));
  const moved = new Set(edits().map((e) => e.name));
  const sliders = [...document.querySelectorAll("#sliders input")].filter((s) => moved.has(s.dataset.name));
  if (sliders.length) add("edit", sliders.map((s) => `${s.dataset.name}:${short(s)}`).join(","));
  if ($("layers").value !== "all") add("layers", $("layers").value);
  if (state.info && Number($("cutoff").value) !== Math.min(DEFAULT_CUTOFF, state.info.num_styles))
    add("cutoff", $("cutoff").value);
  if (state.second.seeds && state.second.seeds[0] !== "1") add("second", state.second.seeds[0]);
  history.replaceState(null, "", parts.length ? `?${parts.join("&")}` : location.pathname);
}

// The controls as the address says (what it does not say stays at the default); returns the face to open.
function readAddress(samples) {
  const q = new URLSearchParams(location.search);
  for (const item of (q.get("edit") || "").split(",").filter(Boolean)) {
    const [name, value] = item.split(":");
    const slider = document.querySelector(`#sliders input[data-name="${CSS.escape(name)}"]`);
    if (slider && Number.isFinite(Number(value))) {
      slider.value = value;
      slider.nextElementSibling.textContent = Number(slider.value).toFixed(2);
    }
  }
  if ([...$("layers").options].some((o) => o.value === q.get("layers"))) $("layers").value = q.get("layers");
  if (q.has("cutoff") && Number.isInteger(Number(q.get("cutoff")))) $("cutoff").value = q.get("cutoff");
  if (/^\d+$/.test(q.get("second") || "")) {
    $("second-seed").value = q.get("second");
    setSecondSeed(q.get("second"));
  }
  if (q.has("sample") && samples.includes(q.get("sample"))) return q.get("sample");
  return /^\d+$/.test(q.get("seed") || "") ? `seed:${q.get("seed")}` : `seed:${FIRST_SEED}`;
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
    result.dataset.face = state.face ? state.face.key : "";
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
  writeAddress();
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

function setSecondSeed(seed) {
  state.second = { seeds: [seed] };
  $("second-name").textContent = `second face: seed ${seed}`;
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
  $("resize-note").textContent = `The model's resolution is ${info.resolution}x${info.resolution}: ` +
    "the server resizes a photo of another size.";
  // max before value: a value over the old max would be clamped to it (and sent so) while the label said otherwise
  $("cutoff").max = info.num_styles;
  $("cutoff").value = Math.min(DEFAULT_CUTOFF, info.num_styles);
  buildSliders(info);
  const select = $("sample");
  const { samples } = await api("samples");
  for (const name of samples) select.append(new Option(name, name));
  for (let seed = 0; seed < SEEDS_LISTED; seed++)
    select.append(new Option(`generated face, seed ${seed}`, `seed:${seed}`));
  const face = readAddress(samples);
  $("cutoff-value").textContent = $("cutoff").value;
  await openSample(face);
  document.body.dataset.firstFaceMs = performance.now().toFixed(0); // since navigation began
  document.body.dataset.ready = "1";
}

function wire() {
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("alae-rt-token", state.token);
    guarded(start);
  });
  $("sample").addEventListener("change", (e) => e.target.value && guarded(async () => {
    try {
      await openSample(e.target.value);
    } catch (err) {
      clearFace(); // the menu named the face asked for: no other face beside it
      throw err;
    }
  }));
  const photo = (file) => guarded(() => openFace(file, { key: `photo:${file.name}`, query: null }));
  $("upload").addEventListener("change", (e) => e.target.files[0] && photo(e.target.files[0]));
  $("open-latent").addEventListener("change", (e) => e.target.files[0] && guarded(() => openLatent(e.target.files[0])));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    if (e.dataTransfer.files[0]) photo(e.dataTransfer.files[0]);
  });
  $("layers").addEventListener("change", scheduleRender);
  $("reset").addEventListener("click", reset);
  $("download-png").addEventListener("click", () => state.current && download("face.png", pngUrl(state.current.png)));
  $("download-npy").addEventListener("click", () => state.current &&
    download("face_latent.npy", URL.createObjectURL(npyBlob(state.current.latents))));
  $("second-seed").addEventListener("input", (e) => {
    setSecondSeed(String(Math.max(0, Math.floor(Number(e.target.value) || 0))));
    writeAddress();
  });
  $("second-upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) guarded(async () => {
      state.second = { images: [{ encoded: await fileBase64(file) }] };
      $("second-name").textContent = `second face: ${file.name}`;
      writeAddress();
    });
  });
  $("cutoff").addEventListener("input", () => {
    $("cutoff-value").textContent = $("cutoff").value;
    writeAddress();
  });
  $("mix").addEventListener("click", () => guarded(mix));
  $("interpolate").addEventListener("click", () => guarded(interpolate));
  $("play").addEventListener("click", play);
  guarded(start);
}

wire();
