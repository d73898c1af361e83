// The public API, with the signed-in key. The key lives in this tab's session storage and
// travels only in the Authorization header: never in a URL, never logged.

const KEY = "tailor.api_key";
export const PART_BYTES = 8 * 1024 * 1024; // files above this go through the Uploads API, in parts of this size

export function savedKey() {
  return sessionStorage.getItem(KEY);
}

export function saveKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.type = error.type || null;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

function headers(extra = {}, key = savedKey()) {
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("tailor:unauthorized", { detail: error }));
  return error;
}

/** GET/POST/DELETE /v1{path}; a JSON body is sent as JSON. Resolves to the parsed answer. */
export async function api(method, path, body, { signal, key } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }, key), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`/v1${path}`, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body = {}, opts) => api("POST", path, body, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** Every item of a cursor-paginated list (`after` = the last id), up to `max`. */
export async function listAll(path, params = {}, max = 1000) {
  const items = [];
  let after;
  for (;;) {
    const page = await get(path + query({ limit: 100, ...params, after }));
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= max) return items;
    after = page.last_id || page.data[page.data.length - 1].id;
  }
}

/** POST a multipart form with upload progress (fetch cannot report it; XMLHttpRequest can). */
export function postForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1${path}`);
    const key = savedKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => onProgress && e.lengthComputable && onProgress(e.loaded, e.total));
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else {
        const error = new ApiError(xhr.status, xhr.response);
        if (xhr.status === 401) window.dispatchEvent(new CustomEvent("tailor:unauthorized", { detail: error }));
        reject(error);
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { error: { message: "The upload failed: no answer from the server." } })));
    xhr.send(form);
  });
}

/** Upload a file: POST /v1/files when small, else the Uploads API part by part. onProgress(sent, total). */
export async function uploadFile(file, purpose, onProgress) {
  if (file.size <= PART_BYTES) {
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    return postForm("/files", form, onProgress);
  }
  const upload = await post("/uploads", {
    filename: file.name,
    purpose,
    bytes: file.size,
    mime_type: file.type || "application/jsonl",
  });
  const partIds = [];
  try {
    for (let start = 0; start < file.size; start += PART_BYTES) {
      const form = new FormData();
      form.append("data", file.slice(start, start + PART_BYTES), "part");
      const part = await postForm(`/uploads/${encodeURIComponent(upload.id)}/parts`, form, (sent) =>
        onProgress && onProgress(start + sent, file.size),
      );
      partIds.push(part.id);
    }
    const done = await post(`/uploads/${encodeURIComponent(upload.id)}/complete`, { part_ids: partIds });
    return done.file;
  } catch (error) {
    if (error.status !== 400 || !partIds.length) {
      try {
        await post(`/uploads/${encodeURIComponent(upload.id)}/cancel`);
      } catch {
        /* it expires on its own */
      }
    }
    throw error;
  }
}

/** The first `maxBytes` of a file's content as text (the rest is never downloaded). */
export async function fileHead(fileId, maxBytes = 256 * 1024) {
  const response = await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers: headers() });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  while (size < maxBytes) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
  }
  await reader.cancel();
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return { text: new TextDecoder().decode(all), truncated: size >= maxBytes };
}

/** Download an authenticated GET as a file named `filename` (a link cannot carry the header). */
export async function download(path, filename, onProgress) {
  const response = await fetch(`/v1${path}`, { headers: headers() });
  if (!response.ok) throw await failure(response);
  const total = Number(response.headers.get("content-length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    if (onProgress) onProgress(got, total);
  }
  const url = URL.createObjectURL(new Blob(chunks, { type: response.headers.get("content-type") || "application/octet-stream" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return got;
}

/** POST /v1/chat/completions with stream: true; calls onDelta(text) per token chunk. */
export async function streamChat(body, onDelta, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  let finish = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return { usage, finish };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { usage, finish };
}
