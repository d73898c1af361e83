// Evaluations: the evals, an eval's runs, and two runs side by side: pass rate per criterion
// per model, then every item where they differ with both outputs. A job's base-vs-tuned
// evaluation opens the same comparison (its page links here).

import { get, listAll } from "../api.js";
import { badge, button, errorNotice, formatDate, h, percent, replace, table } from "../dom.js";

const enc = encodeURIComponent;
const MAX_ITEMS = 2000;

export async function render(view, { params, query, go }) {
  if (!params.id) return evalList(view);
  if (params.view === "compare") return compare(view, params.id, query.a, query.b, go);
  return evalPage(view, params.id, go);
}

async function evalList(view) {
  view.dataset.title = "Evaluations";
  const evals = await listAll("/evals", { order: "desc" }, 1000);
  view.append(
    h("h1", {}, "Evaluations"),
    table(
      ["Eval", "Criteria", "Created", "ID"],
      evals.map((e) =>
        h(
          "tr",
          { dataset: { evalId: e.id } },
          h("td", {}, h("a", { href: `#/evals/${enc(e.id)}` }, e.name || e.id)),
          h("td", {}, e.testing_criteria.map((c) => c.name).join(", ")),
          h("td", {}, formatDate(e.created_at)),
          h("td", { class: "mono" }, e.id),
        ),
      ),
      { empty: "No evals yet: create one with the SDK (client.evals.create) or ask a job for an evaluation." },
    ),
  );
}

function passRate(run) {
  const c = run.result_counts || {};
  return c.total ? `${c.passed}/${c.total} (${percent(c.passed, c.total)})` : "–";
}

async function evalPage(view, evalId, go) {
  const [ev, runs] = await Promise.all([get(`/evals/${enc(evalId)}`), listAll(`/evals/${enc(evalId)}/runs`, { order: "desc" }, 1000)]);
  view.dataset.title = ev.name || ev.id;
  const picked = [];
  const compareButton = button("Compare the two selected runs", () => go(`#/evals/${enc(ev.id)}/compare?a=${enc(picked[0])}&b=${enc(picked[1])}`), { class: "primary", disabled: true });
  const boxes = runs.map((r) => {
    const box = h("input", { type: "checkbox", value: r.id, "aria-label": `Select run ${r.name || r.id}` });
    box.addEventListener("change", () => {
      if (box.checked) picked.push(r.id);
      else picked.splice(picked.indexOf(r.id), 1);
      while (picked.length > 2) {
        const dropped = picked.shift();
        boxes.find((b) => b.value === dropped).checked = false;
      }
      compareButton.disabled = picked.length !== 2;
    });
    return box;
  });
  view.append(
    h("p", {}, h("a", { href: "#/evals" }, "← Evaluations")),
    h("h1", {}, ev.name || ev.id),
    h("p", { class: "mono" }, ev.id),
    h("h2", {}, "Criteria"),
    h("ul", {}, ev.testing_criteria.map((c) => h("li", {}, h("strong", {}, c.name), ` (${c.type})`))),
    h("h2", {}, "Runs"),
    table(
      ["", "Run", "Model", "Status", "Passed", "Created"],
      runs.map((r, i) =>
        h(
          "tr",
          { dataset: { runId: r.id } },
          h("td", {}, boxes[i]),
          h("td", {}, r.name || r.id, h("div", { class: "mono small" }, r.id)),
          h("td", { class: "mono wrap" }, r.model || "–"),
          h("td", {}, badge(r.status)),
          h("td", { class: "num" }, passRate(r)),
          h("td", {}, formatDate(r.created_at)),
        ),
      ),
      { empty: "No runs yet." },
    ),
    h("div", { class: "form-actions" }, compareButton),
  );
}

function criterionNames(ev) {
  const names = new Map();
  for (const c of ev.testing_criteria) names.set(c.id || c.name, c.name);
  return names;
}

function outputText(item) {
  const out = item && item.sample && item.sample.output;
  if (Array.isArray(out) && out.length) return out.map((m) => (typeof m.content === "string" ? m.content : JSON.stringify(m.content))).join("\n");
  if (item && item.sample && item.sample.error) return `(error: ${item.sample.error.message || item.sample.error.code})`;
  return "";
}

function itemPrompt(item) {
  const d = item.datasource_item || {};
  if (Array.isArray(d.messages)) return d.messages.map((m) => `${m.role}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`).join("\n");
  return JSON.stringify(d, null, 2);
}

function verdicts(item) {
  return new Map((item.results || []).map((r) => [r.name, r.passed]));
}

async function compare(view, evalId, a, b, go) {
  view.dataset.title = "Compare runs";
  if (!a || !b) {
    view.append(errorNotice({ message: "Pick two runs to compare." }));
    return go(`#/evals/${enc(evalId)}`);
  }
  const [ev, runA, runB, itemsA, itemsB] = await Promise.all([
    get(`/evals/${enc(evalId)}`),
    get(`/evals/${enc(evalId)}/runs/${enc(a)}`),
    get(`/evals/${enc(evalId)}/runs/${enc(b)}`),
    listAll(`/evals/${enc(evalId)}/runs/${enc(a)}/output_items`, {}, MAX_ITEMS),
    listAll(`/evals/${enc(evalId)}/runs/${enc(b)}/output_items`, {}, MAX_ITEMS),
  ]);
  const names = criterionNames(ev);
  const label = (r) => r.model || r.name || r.id;
  const perCriterion = (run) => new Map((run.per_testing_criteria_results || []).map((c) => [c.testing_criteria, c]));
  const pa = perCriterion(runA);
  const pb = perCriterion(runB);
  const rate = (c) => (c ? `${percent(c.passed, c.passed + c.failed)} (${c.passed}/${c.passed + c.failed})` : "–");
  const criteria = [...new Set([...pa.keys(), ...pb.keys(), ...names.keys()])];

  const byIndex = new Map(itemsB.map((i) => [i.datasource_item_id, i]));
  const differing = [];
  for (const ia of [...itemsA].sort((x, y) => x.datasource_item_id - y.datasource_item_id)) {
    const ib = byIndex.get(ia.datasource_item_id);
    if (!ib) continue;
    const va = verdicts(ia);
    const vb = verdicts(ib);
    const differs = ia.status !== ib.status || [...va.keys()].some((k) => va.get(k) !== vb.get(k));
    if (differs) differing.push([ia, ib]);
  }

  const side = (item, run) =>
    h(
      "div",
      { class: "side" },
      h("div", { class: "side-head" }, h("span", { class: "mono wrap" }, label(run)), " ", badge(item.status)),
      h("pre", { class: "output" }, outputText(item) || "(empty)"),
      h("ul", { class: "verdicts" }, (item.results || []).map((r) => h("li", { class: r.passed ? "pass" : "fail" }, `${names.get(r.name) || r.name}: ${r.passed ? "pass" : "fail"}${typeof r.score === "number" ? ` (${r.score.toFixed(2)})` : ""}`))),
    );

  view.append(
    h("p", {}, h("a", { href: `#/evals/${enc(evalId)}` }, `← ${ev.name || ev.id}`)),
    h("h1", {}, "Compare runs"),
    table(
      ["", h("span", { class: "mono wrap" }, label(runA)), h("span", { class: "mono wrap" }, label(runB))],
      [
        h("tr", {}, h("th", { scope: "row" }, "Run"), h("td", {}, runA.name || runA.id, " ", badge(runA.status)), h("td", {}, runB.name || runB.id, " ", badge(runB.status))),
        h("tr", { class: "total" }, h("th", { scope: "row" }, "All criteria"), h("td", { class: "num" }, passRate(runA)), h("td", { class: "num" }, passRate(runB))),
        criteria.map((c) => h("tr", { dataset: { criterion: names.get(c) || c } }, h("th", { scope: "row" }, names.get(c) || c), h("td", { class: "num" }, rate(pa.get(c))), h("td", { class: "num" }, rate(pb.get(c))))),
      ],
      { caption: "Pass rate per criterion" },
    ),
    h("h2", {}, `Items where the runs differ (${differing.length} of ${Math.min(itemsA.length, itemsB.length)})`),
    differing.length
      ? h(
          "div",
          { class: "diffs" },
          differing.map(([ia, ib]) =>
            h("article", { class: "diff card", dataset: { item: ia.datasource_item_id } }, h("h3", {}, `Item ${ia.datasource_item_id}`), h("pre", { class: "prompt" }, itemPrompt(ia)), h("div", { class: "sides" }, side(ia, runA), side(ib, runB))),
          ),
        )
      : h("p", { class: "empty" }, "The two runs agree on every item."),
  );
  return null;
}
