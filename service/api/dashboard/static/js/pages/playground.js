// Playground: two panes, any two models the project can use (base, fine-tuned, checkpoint),
// the same conversation sent to both, each answer streamed token by token.

import { get, streamChat } from "../api.js";
import { button, errorNotice, field, h, replace, select } from "../dom.js";

function modelOptions(models) {
  const groups = [
    ["Base models", models.filter((m) => !m.startsWith("ft:"))],
    ["Fine-tuned", models.filter((m) => m.startsWith("ft:") && !m.includes(":ckpt-step-"))],
    ["Checkpoints", models.filter((m) => m.includes(":ckpt-step-"))],
  ];
  return groups.filter(([, list]) => list.length);
}

function modelSelect(models, value, name) {
  const el = h("select", { name });
  for (const [label, list] of modelOptions(models)) {
    el.append(h("optgroup", { label }, list.map((m) => h("option", { value: m, selected: m === value }, m))));
  }
  if (value && !models.includes(value)) el.prepend(h("option", { value, selected: true }, `${value} (not listed)`));
  return el;
}

class Pane {
  constructor(side, models, initial) {
    this.side = side;
    this.history = []; // this pane's own turns: the user's messages are shared, answers differ
    this.model = modelSelect(models, initial, `model-${side}`);
    this.transcript = h("div", { class: "transcript", "aria-live": "polite", dataset: { pane: side, chunks: "0" } });
    this.meta = h("p", { class: "pane-meta" });
    this.el = h("section", { class: "pane card", "aria-label": `Pane ${side}` }, field(`Model (${side})`, this.model), this.transcript, this.meta);
    this.controller = null;
  }

  bubble(role, text) {
    const content = h("div", { class: "content" }, text);
    this.transcript.append(h("div", { class: `turn role-${role}` }, h("span", { class: "role" }, role), content));
    this.transcript.scrollTop = this.transcript.scrollHeight;
    return content;
  }

  async send(userText, sampling) {
    this.history.push({ role: "user", content: userText });
    this.bubble("user", userText);
    const content = this.bubble("assistant", "");
    content.classList.add("streaming");
    this.controller = new AbortController();
    let text = "";
    let chunks = Number(this.transcript.dataset.chunks);
    const started = performance.now();
    let firstToken = null;
    try {
      const { usage, finish } = await streamChat(
        { model: this.model.value, messages: this.history, ...sampling },
        (delta) => {
          if (firstToken === null) firstToken = performance.now() - started;
          text += delta;
          content.textContent = text;
          chunks += 1;
          this.transcript.dataset.chunks = String(chunks);
          this.transcript.scrollTop = this.transcript.scrollHeight;
        },
        this.controller.signal,
      );
      this.history.push({ role: "assistant", content: text });
      const tokens = usage ? `${usage.completion_tokens} tokens` : `${chunks} chunks`;
      this.meta.textContent = `${tokens}, first token after ${Math.round(firstToken ?? 0)} ms${finish ? `, finished: ${finish}` : ""}`;
    } catch (error) {
      if (error.name === "AbortError") {
        this.history.push({ role: "assistant", content: text });
        this.meta.textContent = "Stopped.";
      } else {
        this.history.pop();
        content.replaceWith(errorNotice(error));
      }
    } finally {
      content.classList.remove("streaming");
      this.controller = null;
    }
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  reset() {
    this.stop();
    this.history = [];
    this.transcript.dataset.chunks = "0";
    replace(this.transcript);
    this.meta.textContent = "";
  }
}

export async function render(view, { query }) {
  view.dataset.title = "Playground";
  const models = (await get("/models")).data.map((m) => m.id);
  const bases = models.filter((m) => !m.startsWith("ft:"));
  const left = new Pane("A", models, query.left || bases[0] || models[0]);
  const right = new Pane("B", models, query.right || models.find((m) => m.startsWith("ft:")) || bases[0] || models[0]);
  const system = h("input", { type: "text", name: "system", placeholder: "optional system message" });
  const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, value: "0.7" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, max: 4096, step: 1, value: "128" });
  const message = h("textarea", { name: "message", rows: 3, placeholder: "Write a message; Ctrl+Enter sends it", required: true });
  const status = h("div", { "aria-live": "polite" });
  const sendButton = h("button", { type: "submit", class: "primary" }, "Send to both");

  const form = h(
    "form",
    {
      class: "card composer",
      onsubmit: async (e) => {
        e.preventDefault();
        const text = message.value.trim();
        if (!text) return;
        message.value = "";
        replace(status);
        sendButton.disabled = true;
        for (const pane of [left, right]) {
          if (!pane.history.length && system.value.trim()) pane.history.push({ role: "system", content: system.value.trim() });
        }
        const sampling = { temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
        try {
          await Promise.all([left.send(text, sampling), right.send(text, sampling)]);
        } finally {
          sendButton.disabled = false;
          message.focus();
        }
      },
    },
    field("Message", message),
    h("div", { class: "grid" }, field("System", system), field("Temperature", temperature), field("Max tokens", maxTokens)),
    h(
      "div",
      { class: "form-actions" },
      sendButton,
      button("Stop", () => [left, right].forEach((p) => p.stop())),
      button("New conversation", () => [left, right].forEach((p) => p.reset())),
    ),
    status,
  );
  message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  view.append(h("h1", {}, "Playground"), h("div", { class: "panes" }, left.el, right.el), form);
  return () => [left, right].forEach((p) => p.stop());
}
