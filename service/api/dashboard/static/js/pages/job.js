// One job: live curves (train and validation loss, token accuracy, the full-validation points
// of each epoch) from its metrics events, the events log, resolved hyperparameters, trained
// tokens, ETA, checkpoints with a "try it" link, its evaluation, and the actions the API's
// rules allow in its status. Polled every two seconds while anything can still change.

import { get, post } from "../api.js";
import { StepChart } from "../chart.js";
import { badge, button, errorNotice, every, formatDate, formatDuration, formatNumber, h, percent, replace, table } from "../dom.js";

const POLL_MS = 2000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// service/jobs/lifecycle.py: which statuses each action may start from.
const ACTIONS = [
  ["cancel", "Cancel", new Set(["validating_files", "queued", "running", "paused"]), "danger"],
  ["pause", "Pause", new Set(["validating_files", "queued", "running"]), ""],
  ["resume", "Resume", new Set(["paused"]), "primary"],
];
const EVALUATION_SETTLED = new Set(["completed", "skipped", "failed"]);
const enc = encodeURIComponent;

export async function render(view, { params }) {
  const id = params.id;
  view.dataset.title = id;
  let job = await get(`/fine_tuning/jobs/${enc(id)}`);
  const seen = new Set(); // every event id seen
  let events = []; // newest first, in the API's order
  let newest = null; // the newest event id seen: polling stops paging there

  const head = h("div", { class: "page-head" });
  const actionsBox = h("div", { class: "tools actions", role: "group", "aria-label": "Job actions" });
  const actionStatus = h("div", { "aria-live": "polite" });
  const facts = h("dl", { class: "facts" });
  const errorBox = h("div");
  const charts = h("div", { class: "charts" });
  const evaluationBox = h("section", { class: "evaluation", hidden: true });
  const checkpointsBox = h("div");
  const eventsBox = h("ol", { class: "events", "aria-live": "off" });
  const hyperBox = h("dl", { class: "facts small" });

  view.append(
    head,
    actionsBox,
    actionStatus,
    errorBox,
    h("section", { class: "card" }, facts),
    h("section", {}, h("h2", {}, "Training curves"), charts),
    evaluationBox,
    h("section", { class: "checkpoints" }, h("h2", {}, "Checkpoints"), checkpointsBox),
    h("section", { class: "hyperparameters" }, h("h2", {}, "Hyperparameters"), hyperBox),
    h("section", {}, h("h2", {}, "Events"), eventsBox),
  );

  const loss = new StepChart(charts, "Loss by step", [
    { key: "train_loss", label: "train loss", color: "--series-1" },
    { key: "valid_loss", label: "validation loss", color: "--series-2", marks: true },
    { key: "full_valid_loss", label: "full validation (epoch)", color: "--series-3", points: true },
  ]);
  const accuracy = new StepChart(charts, "Token accuracy by step", [
    { key: "train_mean_token_accuracy", label: "train accuracy", color: "--series-1" },
    { key: "valid_mean_token_accuracy", label: "validation accuracy", color: "--series-2", marks: true },
    { key: "full_valid_mean_token_accuracy", label: "full validation (epoch)", color: "--series-3", points: true },
  ]);
  loss.frame.dataset.testid = "loss-chart";

  function drawHead() {
    replace(head, h("h1", { class: "mono wrap" }, job.id), badge(job.status));
    replace(
      actionsBox,
      ACTIONS.filter(([, , from]) => from.has(job.status)).map(([verb, label, , tone]) =>
        button(
          label,
          async (e) => {
            e.target.disabled = true;
            try {
              job = await post(`/fine_tuning/jobs/${enc(job.id)}/${verb}`);
              replace(actionStatus);
              drawAll();
              restart();
            } catch (error) {
              replace(actionStatus, errorNotice(error));
              e.target.disabled = false;
            }
          },
          { class: tone, dataset: { action: verb } },
        ),
      ),
    );
  }

  function drawFacts() {
    const eta = job.estimated_finish && !TERMINAL.has(job.status) ? formatDuration(job.estimated_finish - Date.now() / 1000) : "–";
    const rows = [
      ["Status", badge(job.status)],
      ["Base model", job.model],
      ["Fine-tuned model", job.fine_tuned_model ? [h("span", { class: "mono wrap" }, job.fine_tuned_model), " ", h("a", { href: `#/playground?left=${enc(job.model)}&right=${enc(job.fine_tuned_model)}` }, "Try it")] : "–"],
      ["Training file", h("span", { class: "mono" }, job.training_file)],
      ["Validation file", job.validation_file ? h("span", { class: "mono" }, job.validation_file) : "–"],
      ["Trained tokens", h("span", { dataset: { testid: "trained-tokens" } }, formatNumber(job.trained_tokens))],
      ["ETA", h("span", { dataset: { testid: "eta" } }, eta)],
      ["Created", formatDate(job.created_at)],
      ["Finished", formatDate(job.finished_at)],
      ["Result files", job.result_files.length ? job.result_files.map((f) => h("span", { class: "mono" }, f, " ")) : "–"],
    ];
    if (job.user_provided_suffix) rows.splice(3, 0, ["Suffix", job.user_provided_suffix]);
    replace(facts, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    replace(errorBox, job.error ? errorNotice({ message: `${job.error.code}: ${job.error.message}`, param: job.error.param }) : null);
    const hyper = (job.method && job.method[job.method.type] && job.method[job.method.type].hyperparameters) || job.hyperparameters || {};
    const shown = [["Method", job.method ? job.method.type : "supervised"], ...Object.entries(hyper)];
    if (job.lora) shown.push(...Object.entries(job.lora).map(([k, v]) => [`LoRA ${k}`, v]));
    if (job.training) shown.push(...Object.entries(job.training).map(([k, v]) => [k.replaceAll("_", " "), String(v)]));
    shown.push(["Seed", job.seed]);
    replace(hyperBox, shown.map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", { dataset: { hyper: k } }, typeof v === "number" ? formatNumber(v) : String(v))]));
  }

  function drawEvaluation() {
    const ev = job.evaluation;
    evaluationBox.hidden = !ev;
    if (!ev) return;
    const parts = [];
    for (const [key, title] of [["test", "Test file"], ["general_knowledge_check", "General knowledge"]]) {
      const part = ev[key];
      if (!part) continue;
      const runs = part.runs || {};
      const compare = h("a", { href: `#/evals/${enc(part.eval_id)}/compare?a=${enc(runs.base || "")}&b=${enc(runs.tuned || "")}` }, "Compare item by item");
      if (!part.base || !part.tuned) {
        const state = ev.status === "completed" ? "The runs did not complete (their events say why)." : "Runs in progress.";
        parts.push(h("div", { class: "card" }, h("h3", {}, title), h("p", {}, state, " "), compare));
        continue;
      }
      const criteria = [...new Set([...Object.keys(part.base.per_criterion || {}), ...Object.keys(part.tuned.per_criterion || {})])];
      parts.push(
        h(
          "div",
          { class: "card", dataset: { evaluation: key } },
          h("h3", {}, title),
          table(
            ["", "Base", "Tuned"],
            [
              h("tr", {}, h("th", { scope: "row" }, "Model"), h("td", { class: "mono wrap" }, part.base.model), h("td", { class: "mono wrap" }, part.tuned.model)),
              h("tr", {}, h("th", { scope: "row" }, "Passed"), h("td", { class: "num" }, `${part.base.passed}/${part.base.total} (${percent(part.base.passed, part.base.total)})`), h("td", { class: "num" }, `${part.tuned.passed}/${part.tuned.total} (${percent(part.tuned.passed, part.tuned.total)})`)),
              criteria.map((c) => h("tr", {}, h("th", { scope: "row" }, c), h("td", { class: "num" }, percent(part.base.per_criterion[c] || 0, part.base.total)), h("td", { class: "num" }, percent(part.tuned.per_criterion[c] || 0, part.tuned.total)))),
            ],
          ),
          part.lost !== undefined ? h("p", {}, `Lost ${part.lost} the base knew.`) : null,
          compare,
        ),
      );
    }
    replace(evaluationBox, h("h2", {}, "Evaluation against the base ", badge(ev.status)), ev.message ? h("p", {}, ev.message) : null, parts);
  }

  function drawCheckpoints(checkpoints) {
    const keys = [...new Set(checkpoints.flatMap((c) => Object.keys(c.metrics)).filter((k) => k !== "step"))];
    replace(
      checkpointsBox,
      table(
        ["Step", "Model", ...keys.map((k) => k.replaceAll("_", " ")), ""],
        checkpoints.map((c) =>
          h(
            "tr",
            { dataset: { step: c.step_number } },
            h("td", { class: "num" }, c.step_number),
            h("td", { class: "mono wrap" }, c.fine_tuned_model_checkpoint),
            keys.map((k) => h("td", { class: "num" }, formatNumber(c.metrics[k]))),
            h("td", {}, h("a", { href: `#/playground?left=${enc(job.model)}&right=${enc(c.fine_tuned_model_checkpoint)}` }, "Try it")),
          ),
        ),
        { empty: "No checkpoint yet (one is saved at the end of each epoch)." },
      ),
    );
  }

  function drawEvents() {
    const sorted = events;
    replace(
      eventsBox,
      sorted.slice(0, 500).map((e) =>
        h("li", { class: `event level-${e.level} type-${e.type}` }, h("time", {}, formatDate(e.created_at)), h("span", { class: "level" }, e.level), h("span", { class: "message" }, e.message)),
      ),
    );
    if (!sorted.length) eventsBox.append(h("li", { class: "empty" }, "No events yet."));
  }

  function drawAll() {
    drawHead();
    drawFacts();
    drawEvaluation();
  }

  /** New events since the last poll: pages newest first until a known id (or the first time, all). */
  async function pullEvents() {
    const fresh = [];
    let after;
    for (;;) {
      const page = await get(`/fine_tuning/jobs/${enc(job.id)}/events?limit=${newest ? 100 : 1000}${after ? `&after=${enc(after)}` : ""}`);
      let reachedKnown = false;
      for (const e of page.data) {
        if (seen.has(e.id)) {
          reachedKnown = true;
          break;
        }
        fresh.push(e);
      }
      if (reachedKnown || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    if (fresh.length) newest = fresh[0].id;
    for (const e of fresh) seen.add(e.id);
    events = [...fresh, ...events];
    return fresh;
  }

  async function poll() {
    const [latest, fresh, checkpoints] = await Promise.all([get(`/fine_tuning/jobs/${enc(id)}`), pullEvents(), get(`/fine_tuning/jobs/${enc(id)}/checkpoints?limit=100`)]);
    job = latest;
    drawAll();
    drawCheckpoints(checkpoints.data);
    if (fresh.length) {
      drawEvents();
      const metrics = fresh.filter((e) => e.type === "metrics").map((e) => e.data);
      await Promise.all([loss.add(metrics), accuracy.add(metrics)]);
    } else if (!events.length) drawEvents();
    const settled = !job.evaluation || EVALUATION_SETTLED.has(job.evaluation.status);
    return !(TERMINAL.has(job.status) && settled);
  }

  let stop = null;
  const restart = (immediate = true) => {
    if (stop) stop();
    stop = every(POLL_MS, poll, immediate);
  };
  drawAll();
  await poll();
  restart(false);
  return () => {
    if (stop) stop();
    loss.destroy();
    accuracy.destroy();
  };
}
