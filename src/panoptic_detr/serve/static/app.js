// The page of `panoptic-detr serve`: upload an image, draw its panoptic overlay from the
// COCO panoptic PNG the API returns (id = R + 256 G + 256^2 B), hover / toggle segments, move
// the threshold through the re-threshold endpoint, show a segment's attention maps.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  image: null,        // ImageBitmap of the upload
  pixels: null,       // its RGBA pixels at full size
  ids: null,          // Uint32Array of segment ids, one per pixel
  result: null,       // the last JSON answer
  hidden: new Set(),  // category ids switched off in the legend
  hover: 0,           // hovered segment id (0: none)
  explained: new Map(),
  pending: null,      // the threshold value waiting to be sent
  busy: false,
};

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  const key = $("api-key").value || sessionStorage.getItem("panoptic-detr-key") || "";
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = { detail: response.statusText }; }
  if (response.status === 401) $("key-box").hidden = false;
  if (!response.ok) throw new Error((body && body.detail) || response.statusText);
  return body;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function loadModel() {
  try {
    const m = await api("/v1/model", { headers: headers() });
    $("model").textContent = `${m.weights} · ${m.runtime} on ${m.device} · ${m.categories.length} categories`;
    $("threshold").value = m.settings.threshold;
    $("threshold-value").textContent = Number(m.settings.threshold).toFixed(2);
  } catch (e) {
    $("model").textContent = "model: " + e.message;
  }
}

async function upload(file) {
  if (!file) return;
  setStatus(`Segmenting ${file.name || "the pasted image"} …`);
  try {
    state.image = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    setStatus("This browser cannot show that file; it is still sent to the server.", true);
    state.image = null;
  }
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  const t = $("threshold").value;
  try {
    const result = await api("/v1/segment?threshold=" + encodeURIComponent(t),
                             { method: "POST", body: form, headers: headers() });
    state.hidden.clear();
    state.explained.clear();
    await show(result);
    setStatus(`${file.name || "pasted image"}: ${result.width} × ${result.height}`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function decodeIds(b64, width, height) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
                                         { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const ids = new Uint32Array(width * height);
  for (let i = 0, p = 0; i < ids.length; i++, p += 4) ids[i] = rgba[p] + 256 * rgba[p + 1] + 65536 * rgba[p + 2];
  return ids;
}

async function show(result) {
  state.result = result;
  const { width, height } = result;
  state.ids = await decodeIds(result.panoptic_png, width, height);
  const canvas = $("overlay");
  if (canvas.width !== width || canvas.height !== height || !state.pixels) {
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, width, height);
    if (state.image) ctx.drawImage(state.image, 0, 0, width, height);
    state.pixels = ctx.getImageData(0, 0, width, height).data.slice();
  }
  $("stage").hidden = false;
  $("controls").hidden = false;
  fit();
  $("threshold").value = result.threshold;
  $("threshold-value").textContent = Number(result.threshold).toFixed(2);
  const n = result.segments_info.length;
  $("count").textContent = `${n} segment${n === 1 ? "" : "s"}`;
  downloads(result);
  legend();
  draw();
}

// the picture as large as the column and 75 % of the window allow (small images up to 4x)
function fit() {
  const r = state.result;
  if (!r) return;
  const room = $("left").clientWidth;
  const scale = Math.min(room / r.width, 0.75 * window.innerHeight / r.height, 4);
  $("overlay").style.width = `${Math.max(1, Math.floor(r.width * scale))}px`;
}

function segmentById(id) {
  return state.result ? state.result.segments_info.find((s) => s.id === id) : undefined;
}

function draw() {
  const r = state.result;
  if (!r) return;
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(r.width, r.height);
  const o = out.data, src = state.pixels, ids = state.ids, w = r.width;
  const colors = new Map(), visible = new Map();
  for (const s of r.segments_info) {
    colors.set(s.id, r.colors[String(s.id)]);
    visible.set(s.id, !state.hidden.has(s.category_id));
  }
  for (let i = 0, p = 0; i < ids.length; i++, p += 4) {
    const id = ids[i];
    let a = 0, c = null;
    if (id && visible.get(id)) {
      c = colors.get(id);
      a = state.hover ? (id === state.hover ? 0.7 : 0.25) : 0.55;
    }
    const edge = id && visible.get(id) && ((i % w && ids[i - 1] !== id) || (i >= w && ids[i - w] !== id));
    if (edge) {
      o[p] = o[p + 1] = o[p + 2] = 255;
    } else if (c) {
      o[p] = src[p] * (1 - a) + c[0] * a;
      o[p + 1] = src[p + 1] * (1 - a) + c[1] * a;
      o[p + 2] = src[p + 2] * (1 - a) + c[2] * a;
    } else {
      const dim = state.hover ? 0.6 : 1;
      o[p] = src[p] * dim; o[p + 1] = src[p + 1] * dim; o[p + 2] = src[p + 2] * dim;
    }
    o[p + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
}

function legend() {
  const ul = $("legend");
  ul.replaceChildren();
  for (const s of state.result.segments_info) {
    const li = document.createElement("li");
    li.dataset.id = s.id;
    li.dataset.category = s.category_id;
    if (state.hidden.has(s.category_id)) li.classList.add("hidden");
    const sw = document.createElement("span");
    sw.className = "swatch";
    const c = state.result.colors[String(s.id)];
    sw.style.background = `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
    const name = document.createElement("span");
    name.textContent = `${s.id}: ${s.name}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${s.score.toFixed(2)} · ${s.area} px`;
    li.append(sw, name, score);
    li.addEventListener("click", () => {
      if (state.hidden.has(s.category_id)) state.hidden.delete(s.category_id);
      else state.hidden.add(s.category_id);
      legend();
      draw();
    });
    li.addEventListener("mouseenter", () => setHover(s.id, null));
    li.addEventListener("mouseleave", () => setHover(0, null));
    ul.append(li);
  }
}

function setHover(id, event) {
  const tip = $("tooltip");
  const s = segmentById(id);
  if (s && event) {
    tip.textContent = `${s.name} · score ${s.score.toFixed(2)} · ${s.area} px`;
    const rect = $("overlay").getBoundingClientRect(), stage = $("stage").getBoundingClientRect();
    tip.style.left = `${event.clientX - stage.left + 12}px`;
    tip.style.top = `${event.clientY - stage.top + 12}px`;
    tip.hidden = rect.width === 0;
  } else {
    tip.hidden = true;
  }
  if (id === state.hover) return;
  state.hover = id;
  for (const li of $("legend").children) li.classList.toggle("hovered", Number(li.dataset.id) === id);
  draw();
  if (id) explain(id);
}

function onMove(event) {
  const r = state.result;
  if (!r) return;
  const rect = $("overlay").getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) * r.width / rect.width);
  const y = Math.floor((event.clientY - rect.top) * r.height / rect.height);
  if (x < 0 || y < 0 || x >= r.width || y >= r.height) return setHover(0, null);
  const id = state.ids[y * r.width + x];
  const s = segmentById(id);
  setHover(s && !state.hidden.has(s.category_id) ? id : 0, event);
}

let explainTimer = 0;
function explain(id) {
  clearTimeout(explainTimer);
  explainTimer = setTimeout(async () => {
    const r = state.result;
    const key = `${r.request_id}/${r.threshold}/${id}`;
    const box = $("explain");
    try {
      if (!state.explained.has(key)) {
        state.explained.set(key, await api(`/v1/segment/${r.request_id}/explain/${id}`, { headers: headers() }));
      }
      if (state.hover !== id) return;
      const e = state.explained.get(key);
      box.replaceChildren();
      const title = document.createElement("div");
      title.textContent = `segment ${id}: ${e.name} (query ${e.query}, score ${e.score.toFixed(2)})`;
      const heads = document.createElement("div");
      heads.className = "heads";
      for (const h of e.heads) heads.append(picture(h.png, `attention of head ${h.head}`));
      box.append(title, heads, picture(e.mask_logits_png, "mask logits"));
      box.className = "";
    } catch (err) {
      box.textContent = err.message;
      box.className = "muted small";
    }
  }, 120);
}

function picture(b64, alt) {
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + b64;
  img.alt = alt;
  return img;
}

async function rethreshold() {
  if (state.busy || state.pending === null || !state.result) return;
  const t = state.pending;
  state.pending = null;
  state.busy = true;
  try {
    const result = await api(`/v1/segment/${state.result.request_id}/threshold`, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ threshold: t }),
    });
    await show(result);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    state.busy = false;
    if (state.pending !== null) rethreshold();
  }
}

function downloads(result) {
  const png = Uint8Array.from(atob(result.panoptic_png), (c) => c.charCodeAt(0));
  for (const [id, blob] of [["download-png", new Blob([png], { type: "image/png" })],
                            ["download-json", new Blob([JSON.stringify({
                              request_id: result.request_id, width: result.width, height: result.height,
                              threshold: result.threshold, segments_info: result.segments_info }, null, 1)],
                            { type: "application/json" })]]) {
    const a = $(id);
    if (a.href) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(blob);
  }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) upload(item.getAsFile());
  });
  window.addEventListener("resize", fit);
  $("overlay").addEventListener("mousemove", onMove);
  $("overlay").addEventListener("mouseleave", () => setHover(0, null));
  $("threshold").addEventListener("input", (e) => {
    $("threshold-value").textContent = Number(e.target.value).toFixed(2);
    state.pending = Number(e.target.value);
    rethreshold();
  });
  $("api-key").addEventListener("change", (e) => {
    sessionStorage.setItem("panoptic-detr-key", e.target.value);
    loadModel();
  });
  loadModel();
}

init();
