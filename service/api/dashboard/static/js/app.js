// The dashboard's shell: sign-in, navigation and a hash router (#/jobs/ftjob-…), so the
// server only ever serves index.html and the page's own files.

import { forgetKey, get, savedKey, saveKey } from "./api.js";
import { button, errorNotice, field, h, replace } from "./dom.js";

const PAGES = {
  files: () => import("./pages/files.js"),
  jobs: () => import("./pages/jobs.js"),
  job: () => import("./pages/job.js"),
  "new-job": () => import("./pages/new_job.js"),
  playground: () => import("./pages/playground.js"),
  evals: () => import("./pages/evals.js"),
  models: () => import("./pages/models.js"),
};
const NAV = [
  ["jobs", "Jobs"],
  ["files", "Files"],
  ["playground", "Playground"],
  ["evals", "Evaluations"],
  ["models", "Models"],
];

const root = document.getElementById("app");
let leave = null; // the current page's clean-up (stops its polling)
let me = null;
let routing = 0; // the newest navigation: a page that finishes loading after a newer one is dropped

/** "#/jobs/ftjob-1?status=running" -> {page: "job", params: {id}, query} */
export function parseRoute(hash = location.hash) {
  const [path, search = ""] = hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = Object.fromEntries(new URLSearchParams(search));
  const [first = "jobs", second, third] = parts;
  if (first === "jobs" && second === "new") return { page: "new-job", params: {}, query };
  if (first === "jobs" && second) return { page: "job", params: { id: second }, query };
  if (first === "evals" && second) return { page: "evals", params: { id: second, view: third }, query };
  return { page: PAGES[first] ? first : "jobs", params: {}, query };
}

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signInForm(message) {
  const input = h("input", { type: "password", name: "api_key", autocomplete: "off", spellcheck: "false", required: true, placeholder: "sk-tailor-…" });
  const status = h("div", { class: "form-status" }, message ? errorNotice(message) : null);
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: async (e) => {
        e.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        replace(status, "Checking the key…");
        try {
          me = await get("/me", { key });
          saveKey(key);
          input.value = "";
          start();
        } catch (error) {
          replace(status, errorNotice(error));
        }
      },
    },
    h("h1", {}, "Tailor"),
    h("p", {}, "Sign in with a project API key. It is kept in this tab only (session storage) and sent in a header, never in a URL."),
    field("API key", input, "Create one with `tailor keys create --project NAME`."),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    status,
  );
  replace(root, h("main", { class: "signin-page" }, form));
  input.focus();
}

function signOut(message) {
  if (leave) leave();
  leave = null;
  me = null;
  forgetKey();
  signInForm(message);
}

function shell() {
  const links = NAV.map(([page, label]) => h("a", { href: `#/${page}`, dataset: { page } }, label));
  const header = h(
    "header",
    { class: "topbar" },
    h("a", { class: "brand", href: "#/jobs" }, "Tailor"),
    h("nav", { "aria-label": "Main" }, links),
    h(
      "div",
      { class: "who" },
      h("span", { class: "project", id: "project-name" }, "…"),
      button("Sign out", () => signOut(), { class: "link" }),
    ),
  );
  const main = h("main", { id: "page", tabindex: "-1" });
  replace(root, header, main);
  return main;
}

async function route() {
  const main = document.getElementById("page");
  if (!main) return;
  if (leave) leave();
  leave = null;
  const mine = ++routing;
  const { page, params, query } = parseRoute();
  for (const a of document.querySelectorAll(".topbar nav a")) {
    const current = a.dataset.page === page || (page === "job" && a.dataset.page === "jobs") || (page === "new-job" && a.dataset.page === "jobs");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main, h("p", { class: "loading" }, "Loading…"));
  try {
    const module = await PAGES[page]();
    const view = h("div", { class: "view" });
    const cleanup = await module.render(view, { params, query, me, go });
    if (mine !== routing) {
      if (typeof cleanup === "function") cleanup();
      return;
    }
    replace(main, view);
    leave = typeof cleanup === "function" ? cleanup : null;
    document.title = `${view.dataset.title || "Dashboard"} · Tailor`;
  } catch (error) {
    if (mine !== routing) return;
    console.error(error);
    replace(main, errorNotice(error));
  }
}

function showProject() {
  const el = document.getElementById("project-name");
  if (!el || !me) return;
  el.textContent = me.project.name;
  el.title = me.project.id;
  el.dataset.testid = "project-name";
}

/** The shell and the page; `who` (GET /v1/me, already sent) names the project when it answers. */
async function start(who = Promise.resolve(me)) {
  shell();
  const page = route();
  try {
    me = await who;
  } catch (error) {
    return signOut(error.status === 401 ? error : null);
  }
  showProject();
  return page;
}

window.addEventListener("hashchange", route);
window.addEventListener("tailor:unauthorized", (e) => signOut(e.detail));

async function boot() {
  const key = savedKey();
  if (!key) return signInForm();
  // The key was checked when it was saved: the page loads while /v1/me answers.
  return start(get("/me", { key }));
}

boot();
