// Training curves with uPlot (vendored: vendor/VENDORED.md), loaded only by the pages that
// draw one. uPlot sizes its canvas through the CSSOM, which the CSP allows.

import { h } from "./dom.js";

let loading = null;

export function loadUplot() {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/ui/vendor/uplot/uPlot.iife.min.js";
      script.addEventListener("load", () => resolve(window.uPlot));
      script.addEventListener("error", () => reject(new Error("Could not load the chart library.")));
      document.head.append(script);
    });
  }
  return loading;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/**
 * A chart of several series by step. `series`: [{key, label, color, points, marks}] where
 * `points: true` draws markers only (the per-epoch full-validation figures) and `marks: true`
 * a line with a marker at each value (validation, measured every few steps).
 */
export class StepChart {
  constructor(container, title, series) {
    this.series = series;
    this.container = container;
    this.title = title;
    this.plot = null;
    this.rows = new Map(); // step -> {key: value}
    this.frame = h("div", { class: "chart", role: "img", "aria-label": title, dataset: { points: "0" } });
    this.empty = h("p", { class: "empty chart-empty" }, "No steps yet.");
    container.append(h("figure", { class: "chart-figure" }, h("figcaption", {}, title), this.frame, this.empty));
    this.resize = () => this.plot && this.plot.setSize(this.size());
    window.addEventListener("resize", this.resize);
  }

  size() {
    const width = Math.max(260, this.frame.clientWidth || this.container.clientWidth || 600);
    return { width, height: Math.min(280, Math.max(180, Math.round(width * 0.45))) };
  }

  /** Add metrics events' data ({step, train_loss, …}); redraws once. */
  async add(datas) {
    let changed = false;
    for (const d of datas) {
      if (d == null || d.step === undefined) continue;
      const row = this.rows.get(d.step) || {};
      for (const s of this.series) if (typeof d[s.key] === "number") row[s.key] = d[s.key];
      this.rows.set(d.step, row);
      changed = true;
    }
    if (changed) await this.draw();
  }

  data() {
    const steps = [...this.rows.keys()].sort((a, b) => a - b);
    return [steps, ...this.series.map((s) => steps.map((st) => (this.rows.get(st)[s.key] ?? null)))];
  }

  /** How many steps have a value of at least one series. */
  count() {
    let n = 0;
    for (const row of this.rows.values()) if (this.series.some((s) => row[s.key] !== undefined)) n += 1;
    return n;
  }

  async draw() {
    const data = this.data();
    const n = this.count();
    this.frame.dataset.points = String(n);
    this.empty.hidden = n > 0;
    if (!n) return;
    const uPlot = await loadUplot();
    if (this.plot) {
      this.plot.setData(data);
      return;
    }
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid") }, ticks: { stroke: cssVar("--grid") } };
    this.plot = new uPlot(
      {
        ...this.size(),
        scales: { x: { time: false } },
        axes: [{ ...axis, label: "step" }, { ...axis }],
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
        series: [
          { label: "step" },
          ...this.series.map((s) => ({
            label: s.label,
            stroke: cssVar(s.color),
            width: 2,
            spanGaps: !s.points,
            paths: s.points ? () => null : undefined,
            // Markers for sparse series (validation every few steps, full validation per epoch).
            points: s.points || s.marks ? { show: true, size: s.points ? 8 : 5, fill: cssVar(s.color) } : { show: false },
          })),
        ],
      },
      data,
      this.frame,
    );
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    if (this.plot) this.plot.destroy();
  }
}
