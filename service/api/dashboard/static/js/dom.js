// DOM helpers. Every string a user or the API provides goes in as a text node or a property,
// never as HTML: nothing here parses markup, and style attributes are never set (CSP).

const FORBIDDEN = new Set(["innerHTML", "outerHTML", "style", "srcdoc"]);

/** h("a", {href, class, onclick}, "text", child, [more]) -> element. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (FORBIDDEN.has(name)) throw new Error(`h(): ${name} is not allowed`);
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value" || name === "checked" || name === "selected" || name === "disabled") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatDate(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function formatNumber(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Number.isInteger(v)) return v.toLocaleString();
  return Number(v).toPrecision(digits);
}

export function percent(part, total) {
  return total ? `${Math.round((100 * part) / total)}%` : "–";
}

const STATUS_TONE = {
  validating_files: "info",
  queued: "info",
  running: "active",
  in_progress: "active",
  paused: "warn",
  succeeded: "ok",
  completed: "ok",
  processed: "ok",
  failed: "bad",
  error: "bad",
  cancelled: "muted",
  canceled: "muted",
  pending: "info",
  skipped: "muted",
  pass: "ok",
  fail: "bad",
};

export function badge(status) {
  return h("span", { class: `badge tone-${STATUS_TONE[status] || "muted"}`, dataset: { status } }, status.replaceAll("_", " "));
}

/** A message box; `error` may be an ApiError (its message names the field and the line). */
export function notice(kind, content) {
  return h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, content);
}

export function errorNotice(error) {
  const text = error && error.message ? error.message : String(error);
  const param = error && error.param ? h("span", { class: "param" }, ` (${error.param})`) : null;
  return notice("error", [text, param]);
}

export function table(headers, rows, { empty = "Nothing yet.", caption } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
  );
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", { class: "hint" }, hint) : null);
}

export function select(options, value, props = {}) {
  return h(
    "select",
    props,
    options.map((o) => {
      const [v, label] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: v, selected: v === value }, label);
    }),
  );
}

export function button(label, onclick, props = {}) {
  return h("button", { type: "button", onclick, ...props }, label);
}

/** Run `fn` now and every `ms` until the returned stop() is called or `fn` returns false;
 * a failed round is logged and the next one tried. */
export function every(ms, fn, immediate = true) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      if ((await fn()) === false) stopped = true;
    } catch (e) {
      console.warn(e);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  if (immediate) tick();
  else timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
