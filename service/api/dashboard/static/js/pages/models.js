// Models: every model the project can use; a fine-tuned one (or checkpoint) can be tried,
// its weights downloaded (GET /v1/models/{model}/weights, a peft directory as .tar.gz) or deleted.

import { del, download, get } from "../api.js";
import { button, errorNotice, formatBytes, formatDate, h, notice, replace, table } from "../dom.js";

const enc = encodeURIComponent;

export async function render(view) {
  view.dataset.title = "Models";
  const status = h("div", { "aria-live": "polite" });
  const list = h("div");

  async function refresh() {
    const models = (await get("/models")).data;
    const kind = (m) => (m.id.includes(":ckpt-step-") ? "checkpoint" : m.id.startsWith("ft:") ? "fine-tuned" : "base");
    replace(
      list,
      table(
        ["Model", "Kind", "Owner", "Created", ""],
        models.map((m) =>
          h(
            "tr",
            { dataset: { model: m.id } },
            h("td", { class: "mono wrap" }, m.id),
            h("td", {}, kind(m)),
            h("td", { class: "mono" }, m.owned_by),
            h("td", {}, formatDate(m.created)),
            h(
              "td",
              { class: "actions" },
              h("a", { class: "button", href: `#/playground?left=${enc(m.id)}` }, "Try it"),
              kind(m) === "base"
                ? null
                : [
                    button("Download weights", async (e) => {
                      e.target.disabled = true;
                      replace(status, `Downloading the weights of ${m.id}…`);
                      try {
                        const name = `${m.id.replaceAll(":", "_")}.tar.gz`;
                        const bytes = await download(`/models/${enc(m.id)}/weights`, name, (got) => (status.textContent = `Downloading the weights of ${m.id}: ${formatBytes(got)}`));
                        replace(status, notice("ok", `Saved ${name} (${formatBytes(bytes)}).`));
                      } catch (error) {
                        replace(status, errorNotice(error));
                      } finally {
                        e.target.disabled = false;
                      }
                    }),
                    kind(m) === "fine-tuned"
                      ? button(
                          "Delete",
                          async () => {
                            if (!window.confirm(`Delete ${m.id}? It stops answering at once.`)) return;
                            try {
                              await del(`/models/${enc(m.id)}`);
                              replace(status, notice("ok", `Deleted ${m.id}.`));
                              await refresh();
                            } catch (error) {
                              replace(status, errorNotice(error));
                            }
                          },
                          { class: "danger" },
                        )
                      : null,
                  ],
            ),
          ),
        ),
      ),
    );
  }

  await refresh();
  view.append(h("h1", {}, "Models"), status, list);
  return null;
}
