// New job: base model (GET /v1/models), training and validation files, method, hyperparameters
// ("auto" when left blank), suffix, LoRA rank, and Tailor's extensions as the server's own
// OpenAPI document describes them, so a field the API gains shows up here without a change.

import { get, listAll, post } from "../api.js";
import { errorNotice, field, h, replace, select } from "../dom.js";

const STANDARD = new Set(["model", "training_file", "hyperparameters", "suffix", "validation_file", "integrations", "seed", "method", "metadata"]);
const DRAWN = new Set(["lora", "evaluation"]); // drawn by hand below; any other extension from the schema
const HYPER_ORDER = ["n_epochs", "batch_size", "learning_rate_multiplier", "beta"];

/** The job-create schema pieces, from /openapi.json (null when the server hides it). */
async function createSchema() {
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) return null;
    const doc = await response.json();
    const schemas = doc.components.schemas;
    const resolve = (s) => {
      if (!s) return null;
      if (s.$ref) return resolve(schemas[s.$ref.split("/").pop()]);
      if (s.anyOf) return resolve(s.anyOf.find((x) => x.type !== "null" && !(x.enum || x.const)) || s.anyOf[0]);
      return s;
    };
    return { create: schemas.FineTuningJobCreate, resolve, schemas };
  } catch {
    return null;
  }
}

const SCALARS = ["boolean", "integer", "number", "string"];

/** A control for one property of an extension, from its schema: "auto" (or the default)
 * when left blank, so only what the user sets is sent. */
function propertyControl(name, raw, resolve) {
  const branches = (raw.anyOf || [raw]).map((b) => (b.$ref ? resolve(b) : b)).filter(Boolean);
  const auto = branches.some((b) => b.const === "auto" || (b.enum && b.enum.includes("auto")));
  const typed = branches.find((b) => SCALARS.includes(b.type) && b.const === undefined && !b.enum);
  if (!typed) return null;
  const blank = auto ? "auto" : raw.default !== undefined && raw.default !== null ? `default: ${raw.default}` : "not set";
  if (typed.type === "boolean") {
    if (!auto && typeof raw.default === "boolean") return h("input", { type: "checkbox", name, checked: raw.default, dataset: { kind: "checkbox", default: String(raw.default) } });
    return select([["", blank], ["true", "on"], ["false", "off"]], "", { name, dataset: { kind: "boolean" } });
  }
  const props = { name, placeholder: blank, dataset: { kind: typed.type } };
  if (typed.type === "integer" || typed.type === "number") {
    Object.assign(props, { type: "number", step: typed.type === "integer" ? "1" : "any", inputmode: "decimal" });
    if (typed.minimum !== undefined) props.min = typed.minimum;
    if (typed.maximum !== undefined) props.max = typed.maximum;
  } else props.type = "text";
  return h("input", props);
}

/** The value a control holds, or undefined when it is left as it was ("auto", the default). */
function readScalar(input) {
  const kind = input.dataset.kind;
  if (kind === "checkbox") return String(input.checked) === input.dataset.default ? undefined : input.checked;
  if (kind === "boolean") return input.value === "" ? undefined : input.value === "true";
  const raw = input.value.trim();
  if (!raw || raw === "auto") return undefined;
  if (kind === "integer" || kind === "number") {
    const n = Number(raw);
    return Number.isFinite(n) ? n : raw; // the API answers a 400 naming the field
  }
  return raw;
}

const pretty = (name) => name.charAt(0).toUpperCase() + name.slice(1).replaceAll("_", " ");

/** A fieldset for an extension object (e.g. `training`, with its early stopping), a control per scalar property. */
function extensionFieldset(name, schema, resolve) {
  const controls = [];
  for (const [prop, raw] of Object.entries(schema.properties || {})) {
    const control = propertyControl(`${name}.${prop}`, raw, resolve);
    if (control) controls.push([prop, control, raw]);
  }
  const fs = h(
    "fieldset",
    { class: "extension", dataset: { extension: name } },
    h("legend", {}, pretty(name)),
    schema.description ? h("p", { class: "hint" }, schema.description.split("\n")[0]) : null,
    h("div", { class: "grid" }, controls.map(([prop, control, raw]) => field(raw.title || pretty(prop), control, raw.description))),
  );
  const read = () => {
    const out = {};
    for (const [prop, control] of controls) {
      const v = readScalar(control);
      if (v !== undefined) out[prop] = v;
    }
    return Object.keys(out).length ? out : undefined;
  };
  return { fs, read };
}

export async function render(view, { go, query }) {
  view.dataset.title = "New job";
  const [models, files, schema] = await Promise.all([get("/models"), listAll("/files", { purpose: "fine-tune", order: "desc" }, 2000), createSchema()]);
  const resolve = schema ? schema.resolve : () => null;
  const bases = models.data.filter((m) => !m.id.startsWith("ft:")).map((m) => m.id);
  const tuned = models.data.filter((m) => m.id.startsWith("ft:") && !m.id.includes(":ckpt-step-")).map((m) => m.id);
  const fileOptions = files.map((f) => [f.id, `${f.filename} (${f.id})`]);

  const model = select([...bases, ...tuned], query.model || bases[0], { name: "model", required: true });
  const training = select([["", "Choose a file…"], ...fileOptions], query.training_file || "", { name: "training_file", required: true });
  const validation = select([["", "None"], ...fileOptions], "", { name: "validation_file" });
  const method = select([["supervised", "Supervised"], ["dpo", "DPO (preferences)"]], "supervised", { name: "method" });
  const suffix = h("input", { type: "text", name: "suffix", maxlength: 64, pattern: "[A-Za-z0-9._\\-]+", placeholder: "optional" });
  const seed = h("input", { type: "number", name: "seed", min: 0, step: 1, placeholder: "random" });

  // Hyperparameters: what the schema lists for each method, "auto" when blank.
  const hyperSchema = (type) => resolve(schema && (type === "dpo" ? schema.schemas.DpoHyperparameters : schema.schemas.Hyperparameters));
  const hyperNames = (type) => {
    const s = hyperSchema(type);
    const names = s ? Object.keys(s.properties) : type === "dpo" ? HYPER_ORDER : HYPER_ORDER.slice(0, 3);
    const order = (n) => (HYPER_ORDER.includes(n) ? HYPER_ORDER.indexOf(n) : HYPER_ORDER.length);
    return [...names].sort((a, b) => order(a) - order(b));
  };
  const hyperInputs = new Map();
  const hyperGrid = h("div", { class: "grid" });
  const drawHyper = () => {
    const keep = new Map([...hyperInputs].map(([k, i]) => [k, i.value]));
    hyperInputs.clear();
    const s = hyperSchema(method.value);
    replace(
      hyperGrid,
      hyperNames(method.value).map((name) => {
        const prop = s && s.properties[name];
        const numeric = prop && (prop.anyOf || []).find((x) => x.type === "integer" || x.type === "number");
        const input = h("input", { type: "text", name: `hyper.${name}`, placeholder: "auto", inputmode: "decimal", value: keep.get(name) || "", dataset: { kind: numeric ? numeric.type : "number" } });
        hyperInputs.set(name, input);
        return field((prop && prop.title) || name, input, prop && prop.description);
      }),
    );
  };
  method.addEventListener("change", drawHyper);
  drawHyper();

  // LoRA (Tailor's extension).
  const loraSchema = schema ? resolve(schema.create.properties.lora) : null;
  const rank = h("input", { type: "number", name: "lora.rank", min: 1, max: 256, step: 1, placeholder: `default: ${loraSchema ? loraSchema.properties.rank.default : 16}` });
  const alpha = h("input", { type: "number", name: "lora.alpha", min: 1, step: 1, placeholder: `default: ${loraSchema ? loraSchema.properties.alpha.default : 32}` });

  // The job's evaluation against its base (Tailor's extension), when the server offers it.
  const offersEvaluation = !schema || "evaluation" in schema.create.properties;
  const testFile = select([["", "No test-file evaluation"], ...fileOptions], "", { name: "evaluation.test_file" });
  const generalKnowledge = h("input", { type: "checkbox", name: "evaluation.general_knowledge", checked: false });
  const evalTokens = h("input", { type: "number", name: "evaluation.max_tokens", min: 1, max: 4096, step: 1, placeholder: "default: 256" });

  // Any other extension the API documents (e.g. training options, early stopping).
  const extensions = [];
  if (schema) {
    for (const [name, raw] of Object.entries(schema.create.properties)) {
      if (STANDARD.has(name) || DRAWN.has(name)) continue;
      const s = resolve(raw);
      if (s && s.type === "object" && s.properties) extensions.push([name, extensionFieldset(name, s, resolve)]);
    }
  }

  const status = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create job");

  function body() {
    const hyper = {};
    for (const [name, input] of hyperInputs) {
      const v = readScalar(input);
      if (v !== undefined) hyper[name] = v;
    }
    const out = {
      model: model.value,
      training_file: training.value,
      method: { type: method.value, [method.value]: { hyperparameters: hyper } },
    };
    if (validation.value) out.validation_file = validation.value;
    if (suffix.value.trim()) out.suffix = suffix.value.trim();
    if (seed.value.trim()) out.seed = Number(seed.value);
    const lora = {};
    if (rank.value.trim()) lora.rank = Number(rank.value);
    if (alpha.value.trim()) lora.alpha = Number(alpha.value);
    if (Object.keys(lora).length) out.lora = lora;
    if (offersEvaluation && (testFile.value || generalKnowledge.checked)) {
      out.evaluation = { test_file: testFile.value || null, general_knowledge: generalKnowledge.checked };
      if (evalTokens.value.trim()) out.evaluation.max_tokens = Number(evalTokens.value);
    }
    for (const [name, ext] of extensions) {
      const v = ext.read();
      if (v !== undefined) out[name] = v;
    }
    return out;
  }

  const form = h(
    "form",
    {
      class: "card job-form",
      onsubmit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        replace(status, "Creating the job…");
        try {
          const job = await post("/fine_tuning/jobs", body());
          go(`#/jobs/${encodeURIComponent(job.id)}`);
        } catch (error) {
          replace(status, errorNotice(error));
          const bad = error.param && form.querySelector(`[name="${CSS.escape(error.param.split("[")[0])}"]`);
          if (bad) bad.focus();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("fieldset", {}, h("legend", {}, "Data and model"), h("div", { class: "grid" }, field("Base model", model), field("Training file", training), field("Validation file", validation), field("Suffix", suffix, "In the model's name: letters, digits, . _ -"))),
    h("fieldset", {}, h("legend", {}, "Method"), h("div", { class: "grid" }, field("Method", method), field("Seed", seed)), h("p", { class: "hint" }, "Hyperparameters left blank are \"auto\": the worker picks them from the data and shows what it chose on the job's page."), hyperGrid),
    h("fieldset", {}, h("legend", {}, "LoRA adapter"), h("div", { class: "grid" }, field("Rank", rank), field("Alpha", alpha))),
    offersEvaluation
      ? h(
          "fieldset",
          {},
          h("legend", {}, "Evaluation against the base"),
          h("p", { class: "hint" }, "Once the job succeeds, the tuned model and its base answer the test file's prompts (an eval worker and inference are needed)."),
          h("div", { class: "grid" }, field("Test file", testFile), field("Max tokens per answer", evalTokens), h("div", { class: "field check" }, h("label", {}, generalKnowledge, " Also check general knowledge"))),
        )
      : null,
    extensions.map(([, ext]) => ext.fs),
    h("div", { class: "form-actions" }, submit, h("a", { href: "#/jobs", class: "button" }, "Cancel")),
    status,
  );
  view.append(h("h1", {}, "New fine-tuning job"), form);
  return null;
}
