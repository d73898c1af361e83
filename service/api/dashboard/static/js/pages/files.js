// Files: the list (purpose, size, date), upload by drop or picker with progress (the Uploads
// API for large files), the validation error with its line, a preview as chat turns, delete.

import { del, fileHead, listAll, uploadFile } from "../api.js";
import { button, errorNotice, field, formatBytes, formatDate, h, notice, replace, select, table } from "../dom.js";

const PURPOSES = ["fine-tune", "evals", "batch", "user_data", "assistants", "vision"];
const PREVIEW_EXAMPLES = 5;

export async function render(view) {
  view.dataset.title = "Files";
  const list = h("div", { class: "files-list" });
  const preview = h("section", { class: "preview", "aria-live": "polite" });

  async function refresh() {
    const files = await listAll("/files", { order: "desc" }, 2000);
    replace(
      list,
      table(
        ["Name", "Purpose", "Size", "Created", "ID", ""],
        files.map((f) =>
          h(
            "tr",
            { dataset: { fileId: f.id } },
            h("td", { class: "filename" }, f.filename),
            h("td", {}, f.purpose),
            h("td", { class: "num" }, formatBytes(f.bytes)),
            h("td", {}, formatDate(f.created_at)),
            h("td", { class: "mono" }, f.id),
            h(
              "td",
              { class: "actions" },
              button("Preview", () => showPreview(f), { "aria-label": `Preview ${f.filename}` }),
              button(
                "Delete",
                async () => {
                  if (!window.confirm(`Delete ${f.filename} (${f.id})?`)) return;
                  try {
                    await del(`/files/${encodeURIComponent(f.id)}`);
                    await refresh();
                  } catch (error) {
                    replace(preview, errorNotice(error));
                  }
                },
                { class: "danger", "aria-label": `Delete ${f.filename}` },
              ),
            ),
          ),
        ),
        { empty: "No files yet: upload a JSONL file above." },
      ),
    );
  }

  async function showPreview(file) {
    replace(preview, h("p", { class: "loading" }, `Reading ${file.filename}…`));
    try {
      const { text } = await fileHead(file.id);
      const lines = text.split("\n").filter((l) => l.trim());
      const shown = [];
      for (const [i, line] of lines.slice(0, PREVIEW_EXAMPLES).entries()) {
        let value;
        try {
          value = JSON.parse(line);
        } catch {
          continue; // the last line may be cut off by the preview's byte limit
        }
        shown.push(example(value, i + 1));
      }
      replace(
        preview,
        h("h2", {}, "Preview: ", h("span", { class: "filename" }, file.filename)),
        h("p", { class: "hint" }, `The first ${shown.length} example(s).`),
        shown.length ? shown : h("p", { class: "empty" }, "Nothing to show."),
        button("Close preview", () => replace(preview)),
      );
    } catch (error) {
      replace(preview, errorNotice(error));
    }
  }

  const purpose = select(PURPOSES, "fine-tune", { name: "purpose" });
  const input = h("input", { type: "file", accept: ".jsonl,.json,.txt,application/jsonl", class: "visually-hidden", tabindex: "-1" });
  const progress = h("progress", { max: 100, value: 0, hidden: true });
  const status = h("div", { class: "upload-status", "aria-live": "polite" });
  const zone = h(
    "div",
    { class: "dropzone", role: "button", tabindex: "0", "aria-label": "Upload a file: drop it here or press Enter to choose one" },
    h("strong", {}, "Drop a JSONL file here"),
    h("span", {}, " or click to choose one"),
  );

  async function upload(file) {
    progress.hidden = false;
    progress.value = 0;
    replace(status, `Uploading ${file.name} (${formatBytes(file.size)})…`);
    try {
      const created = await uploadFile(file, purpose.value, (sent, total) => {
        progress.value = total ? Math.round((100 * sent) / total) : 0;
      });
      progress.value = 100;
      replace(status, notice("ok", ["Uploaded ", h("span", { class: "filename" }, created.filename), ` as ${created.id}.`]));
      await refresh();
    } catch (error) {
      progress.hidden = true;
      replace(status, h("div", { class: "upload-error" }, errorNotice(error)));
    }
  }

  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) upload(file);
  });
  input.addEventListener("change", () => {
    if (input.files[0]) upload(input.files[0]);
    input.value = "";
  });

  await refresh();
  view.append(
    h("h1", {}, "Files"),
    h("section", { class: "card upload" }, h("h2", {}, "Upload"), field("Purpose", purpose), zone, input, progress, status),
    h("section", {}, h("h2", {}, "Your files"), list),
    preview,
  );
}

function turn(message) {
  const content = typeof message.content === "string" ? message.content : JSON.stringify(message.content);
  return h(
    "div",
    { class: `turn role-${["system", "user", "assistant", "tool"].includes(message.role) ? message.role : "other"}` },
    h("span", { class: "role" }, message.role || "?"),
    h("div", { class: "content" }, content || ""),
  );
}

/** One line of a file, drawn as chat turns when it is a chat or preference example. */
function example(value, n) {
  const box = h("article", { class: "example" }, h("h3", {}, `Example ${n}`));
  if (value && Array.isArray(value.messages)) {
    box.append(...value.messages.map(turn));
  } else if (value && value.input && Array.isArray(value.input.messages)) {
    box.append(...value.input.messages.map(turn));
    box.append(h("p", { class: "label" }, "Preferred"), ...(value.preferred_output || []).map(turn));
    box.append(h("p", { class: "label" }, "Not preferred"), ...(value.non_preferred_output || []).map(turn));
  } else {
    box.append(h("pre", { class: "json" }, JSON.stringify(value, null, 2)));
  }
  return box;
}
