// Jobs: every job of the project with its status badge, filtered by status (the API lists
// them newest first; the filter is applied here), refreshed while any is still active.

import { listAll } from "../api.js";
import { badge, every, formatDate, formatNumber, h, replace, select, table } from "../dom.js";

export const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(["validating_files", "queued", "running"]);
const REFRESH_MS = 5000;

export async function render(view, { query, go }) {
  view.dataset.title = "Jobs";
  const wanted = STATUSES.includes(query.status) ? query.status : "";
  const filter = select([["", "All statuses"], ...STATUSES.map((s) => [s, s.replaceAll("_", " ")])], wanted, {
    name: "status",
    "aria-label": "Filter by status",
    onchange: () => go(filter.value ? `#/jobs?status=${encodeURIComponent(filter.value)}` : "#/jobs"),
  });
  const count = h("span", { class: "count", dataset: { testid: "job-count" } });
  const list = h("div", { class: "jobs-list" });
  let first = true;

  async function refresh() {
    const jobs = await listAll("/fine_tuning/jobs", {}, 5000);
    const shown = wanted ? jobs.filter((j) => j.status === wanted) : jobs;
    count.textContent = wanted ? `${shown.length} of ${jobs.length}` : `${jobs.length}`;
    replace(
      list,
      table(
        ["Job", "Status", "Base model", "Fine-tuned model", "Trained tokens", "Created"],
        shown.map((j) =>
          h(
            "tr",
            { dataset: { jobId: j.id, status: j.status } },
            h("td", { class: "mono" }, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)),
            h("td", {}, badge(j.status)),
            h("td", {}, j.model),
            h("td", { class: "mono wrap" }, j.fine_tuned_model || "–"),
            h("td", { class: "num" }, formatNumber(j.trained_tokens)),
            h("td", {}, formatDate(j.created_at)),
          ),
        ),
        { empty: wanted ? "No job has this status." : "No jobs yet." },
      ),
    );
    if (first) {
      first = false;
      performance.mark("tailor:jobs-rendered");
    }
    return jobs.some((j) => ACTIVE.has(j.status));
  }

  const active = await refresh();
  view.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Jobs ", count),
      h("div", { class: "tools" }, filter, h("a", { class: "button primary", href: "#/jobs/new" }, "New job")),
    ),
    list,
  );
  if (!active) return null;
  return every(REFRESH_MS, refresh, false);
}
