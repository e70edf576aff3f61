// The page talks to the service exactly as any client does: POST /api/object_detection with
// {"id": "<fresh UUID>", "image": "<base64 of the file>"}, then draws the answer over the image.
"use strict";

const ENDPOINT = "/api/object_detection";
// A label drawn above a box this close to the image's top edge would leave the picture, so it goes inside.
const LABEL_INSIDE_BELOW_FRACTION = 0.08;

// Readable titles for the service's error codes; the service's own message follows each title.
const ERROR_TITLES = {
  not_an_image: "That file is not an image the detector can read",
  body_too_large: "The image is too large for the service",
  invalid_base64: "The image could not be encoded for sending",
  invalid_field: "The service refused the request",
  malformed_json: "The service refused the request",
  unsupported_media_type: "The service refused the request",
  overloaded: "The service is busy: try again in a moment",
  not_ready: "The model is still loading: try again in a moment",
  internal_error: "The service failed to answer",
};

const $ = (id) => document.getElementById(id);
let current = 0; // number of the latest image; answers to older ones are dropped
let objects = [];

// crypto.randomUUID() exists only on https or localhost; getRandomValues works on a LAN address too.
function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function loadPicture(file) {
  const img = $("picture");
  if (img.src) URL.revokeObjectURL(img.src);
  return new Promise((resolve) => {
    img.onload = () => resolve(true);
    img.onerror = () => resolve(false); // the service may still read formats a browser cannot show (TIFF)
    img.src = URL.createObjectURL(file);
  });
}

async function detect(file) {
  const mine = ++current;
  const name = file.name || "the pasted image";
  showStatus(`Sending ${name} (${formatBytes(file.size)})…`);
  $("error").hidden = true;
  const shown = loadPicture(file);
  let answer;
  try {
    answer = await post(await base64Of(file));
  } catch (exc) {
    if (mine === current) showError(name, "Could not reach the service", String(exc.message || exc), null);
    return;
  }
  if (mine !== current) return;
  if (answer.ok) {
    showResult(name, answer, await shown);
  } else {
    const error = (answer.body && answer.body.error) || {};
    const title = ERROR_TITLES[error.code] || `The service answered ${answer.status}`;
    const message = error.message ? `${error.message} (${error.code}, HTTP ${answer.status})` : answer.text;
    showError(name, title, message, answer);
  }
}

async function post(image) {
  const id = uuid4();
  const started = performance.now();
  const response = await fetch(ENDPOINT, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id, image }),
  });
  const text = await response.text();
  const elapsedMs = performance.now() - started;
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // a proxy's HTML error page: shown as text
  }
  const ok = response.ok && body !== null && Array.isArray(body.objects);
  return { ok, status: response.status, id, body, text, elapsedMs };
}

function showResult(name, answer, pictureShown) {
  objects = answer.body.objects;
  $("request-id").textContent = answer.body.id;
  $("elapsed").textContent = `${Math.round(answer.elapsedMs)} ms (sending, detection and answer)`;
  $("figure").hidden = !pictureShown;
  drawBoxes();
  listObjects();
  applyThreshold();
  showRaw(answer.text, answer.body);
  $("result").hidden = false;
  const found = `${name}: ${objects.length} object${objects.length === 1 ? "" : "s"} found`;
  showStatus(pictureShown ? `${found}.` : `${found}; this browser cannot display the image, see the list below.`);
}

function drawBoxes() {
  const img = $("picture");
  const width = img.naturalWidth || 1;
  const height = img.naturalHeight || 1;
  $("boxes").replaceChildren(...objects.map((obj) => {
    const r = obj.rectangle;
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.label = obj.label;
    box.dataset.accuracy = String(obj.accuracy);
    box.style.cssText = `left:${(100 * r.left) / width}%;top:${(100 * r.top) / height}%;` +
      `width:${(100 * r.width) / width}%;height:${(100 * r.height) / height}%;--hue:${hueOf(obj.label)};` +
      `z-index:${Math.round(obj.accuracy * 1000)}`; // where labels overlap, the surest one stays readable
    const label = document.createElement("span");
    label.className = "box-label";
    if (r.top / height < LABEL_INSIDE_BELOW_FRACTION) label.classList.add("inside");
    label.textContent = `${obj.label} ${obj.accuracy.toFixed(2)}`;
    box.append(label);
    return box;
  }));
}

function listObjects() {
  $("object-rows").replaceChildren(...objects.map((obj) => {
    const r = obj.rectangle;
    const row = document.createElement("tr");
    row.dataset.accuracy = String(obj.accuracy);
    for (const text of [obj.label, obj.accuracy.toFixed(2), `${r.left}, ${r.top}`, `${r.width} × ${r.height}`]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    row.firstChild.style.setProperty("--hue", hueOf(obj.label));
    row.firstChild.className = "swatch";
    return row;
  }));
}

function applyThreshold() {
  const threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  let shown = 0;
  for (const el of document.querySelectorAll("#boxes .box, #object-rows tr")) {
    el.hidden = Number(el.dataset.accuracy) < threshold;
  }
  for (const obj of objects) if (obj.accuracy >= threshold) shown += 1;
  $("shown-count").textContent = `${shown} of ${objects.length}`;
}

function showError(name, title, message, answer) {
  $("error-title").textContent = title;
  $("error-message").textContent = message;
  $("error").hidden = false;
  $("result").hidden = true;
  if (answer) showRaw(answer.text, answer.body);
  else $("raw").hidden = true;
  showStatus(`${name}: no answer with objects.`);
}

function showRaw(text, body) {
  $("raw-json").textContent = body === null ? text : JSON.stringify(body, null, 2);
  $("raw").hidden = false;
}

function showStatus(text) {
  $("status").textContent = text;
}

// One stable colour per label, so the same class looks the same on every image.
function hueOf(label) {
  let hash = 2166136261; // FNV-1a: similar labels still get far-apart hues
  for (const ch of label) hash = Math.imul(hash ^ ch.codePointAt(0), 16777619) >>> 0;
  return hash % 360;
}

function formatBytes(n) {
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(0)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function firstFile(list) {
  return list && list.length ? list[0] : null;
}

function wire() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    const file = firstFile(event.target.files);
    if (file) detect(file);
    event.target.value = ""; // choosing the same file again sends it again
  });
  // The whole page takes drops: a file let go beside the zone would otherwise replace the page.
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) zone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = firstFile(event.dataTransfer && event.dataTransfer.files);
    if (file) detect(file);
  });
  document.addEventListener("paste", (event) => {
    const file = firstFile(event.clipboardData && event.clipboardData.files);
    if (file) {
      event.preventDefault();
      detect(file);
    }
  });
  $("threshold").addEventListener("input", applyThreshold);
}

wire();
