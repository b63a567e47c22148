// The lab page: pick a model, drop its files, read the answer as a picture and a table.
// Everything it needs comes from this service (its metadata describes every model's files, options and
// answer fields); nothing is fetched from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
let models = {};
let lastAnswer = null;

function headers() {
  const key = $("api-key").value.trim();
  sessionStorage.setItem("mmax-api-key", key);
  return key ? { "X-API-Key": key } : {};
}

async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw new Error(body.message || `${response.status} ${response.statusText}`);
  return body;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function optionControl(option) {
  const label = element("label", { title: option.help });
  label.append(document.createTextNode(option.name));
  let control;
  if (option.choices) {
    control = element("select", { name: option.name });
    for (const choice of option.choices) control.append(element("option", { value: choice }, String(choice)));
    control.value = option.default;
  } else if (option.type === "bool") {
    control = element("input", { type: "checkbox", name: option.name });
    control.checked = Boolean(option.default);
  } else {
    control = element("input", { type: option.type === "str" ? "text" : "number", name: option.name });
    if (option.type === "float") control.step = "any";
    if (option.range) {
      if (option.range[0] !== null) control.min = option.range[0];
      if (option.range[1] !== null) control.max = option.range[1];
    }
    control.value = option.default;
  }
  label.append(control, element("small", {}, option.help));
  return label;
}

function showModel(id) {
  const model = models[id];
  $("model-description").textContent = model.description;
  const files = $("files");
  files.replaceChildren(element("legend", {}, "Files"));
  for (const name of model.files) {
    const label = element("label");
    label.append(document.createTextNode(name === "image" ? `image (${model.input.accepts})` : `${name} channel`));
    label.append(element("input", { type: "file", name, accept: "image/*,.tif,.tiff" }));
    files.append(label);
  }
  const options = $("options");
  options.replaceChildren(element("legend", {}, "Options"));
  for (const option of model.options) if (option.name !== "format") options.append(optionControl(option));
  const sample = element("label");
  sample.append(document.createTextNode("sample_id (optional)"), element("input", { type: "text", name: "sample_id", maxlength: "128" }));
  options.append(sample);
  $("slides").hidden = !model.whole_slides;
  $("answer").hidden = true;
  const url = new URL(location.href);
  url.searchParams.set("model", id);
  history.replaceState(null, "", url);
}

function brief(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
  if (Array.isArray(value)) {
    if (value.every((item) => item && typeof item === "object" && "label" in item))
      return value.map((item) => `${item.label} ${brief(item.probability)}`).join(", ");
    if (value.length <= 6 && value.every((item) => typeof item !== "object")) return value.map(brief).join(", ");
    return `${value.length} items`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length <= 10 && entries.every(([, v]) => v === null || typeof v !== "object"))
      return entries.map(([k, v]) => `${k}: ${brief(v)}`).join(", ");
    return "(in the JSON)";
  }
  return String(value);
}

function columnsOf(model) {
  // masks and outlines are for programs (in the JSON); the picture shows them
  return Object.keys(model.output.prediction).filter((name) => !["mask", "outline"].includes(name));
}

function showDomainWarning(id, domain) {
  // the model's own warning when the upload is unlike its training data (answer.domain, see /metadata)
  $(id).textContent = domain && domain.warning ? domain.warning : "";
  $(id).hidden = !(domain && domain.warning);
}

function render(model, answer) {
  lastAnswer = answer;
  showDomainWarning("domain-warning", answer.domain);
  $("answer").hidden = false;
  $("overlay").src = answer.overlay_png;
  $("caption").textContent = `${model.name} ${answer.version}` + (answer.sample_id ? ` · sample ${answer.sample_id}` : "");
  const summary = $("summary");
  summary.replaceChildren();
  const shown = ["image", ...Object.keys(model.output.answer)];
  for (const name of shown) {
    if (!(name in answer)) continue;
    summary.append(element("dt", {}, name.replaceAll("_", " ")), element("dd", {}, brief(answer[name])));
  }
  summary.append(element("dt", {}, "objects"), element("dd", {}, String(answer.predictions.length)));
  const columns = columnsOf(model);
  const head = element("tr");
  head.append(element("th", { scope: "col" }, "#"));
  for (const name of columns) head.append(element("th", { scope: "col" }, name));
  $("objects").tHead.replaceChildren(head);
  const body = $("objects").tBodies[0];
  body.replaceChildren();
  answer.predictions.forEach((prediction, index) => {
    const row = element("tr");
    row.append(element("td", {}, String(index + 1)));
    for (const name of columns) row.append(element("td", {}, brief(prediction[name])));
    body.append(row);
  });
  const json = new Blob([JSON.stringify(answer, null, 2)], { type: "application/json" });
  $("download-json").href = URL.createObjectURL(json);
  $("download-json").download = `${model.id}.json`;
  const csvRows = [["file", "sample_id", ...columns]].concat(answer.predictions.map((prediction) =>
    [answer.file || "", answer.sample_id || "", ...columns.map((name) => brief(prediction[name]))]));
  const csv = csvRows.map((row) => row.map((cell) => `"${String(cell).replaceAll('"', '""')}"`).join(",")).join("\n");
  $("download-csv").href = URL.createObjectURL(new Blob([csv + "\n"], { type: "text/csv" }));
  $("download-csv").download = `${model.id}.csv`;
  const geo = $("download-geojson");
  geo.hidden = !answer.geojson;
  if (answer.geojson) {
    geo.href = URL.createObjectURL(new Blob([JSON.stringify(answer.geojson)], { type: "application/geo+json" }));
    geo.download = `${model.id}.geojson`;
  }
}

async function analyse(event) {
  event.preventDefault();
  const model = models[$("model").value];
  const form = new FormData();
  let fileName = "";
  for (const input of $("files").querySelectorAll("input[type=file]")) {
    if (input.files.length) { form.append(input.name, input.files[0]); fileName ||= input.files[0].name; }
  }
  for (const input of $("options").querySelectorAll("input, select")) {
    if (input.type === "checkbox") form.append(input.name, input.checked ? "true" : "false");
    else if (input.value !== "") form.append(input.name, input.value);
  }
  if (model.options.some((option) => option.name === "format")) form.append("format", "json_with_png");
  $("status").textContent = "analysing…";
  $("status").className = "";
  try {
    const answer = await call(`../model/${model.id}/predict`, { method: "POST", body: form });
    answer.file = fileName;
    render(model, answer);
    $("status").textContent = `done: ${answer.predictions.length} objects`;
  } catch (error) {
    $("status").textContent = error.message;
    $("status").className = "error";
  }
}

async function followJob(job) {
  $("job").hidden = false;
  while (true) {
    job = await call(`../jobs/${job.id}`);
    $("job-progress").value = job.progress;
    $("job-status").textContent = `${job.status}: ${job.message}`;
    if (!["queued", "running"].includes(job.status)) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (job.status === "done") {
    const heatmap = await call(`../jobs/${job.id}/heatmap.png`);
    $("job-heatmap").src = URL.createObjectURL(heatmap);
    $("job-heatmap").hidden = false;
    const result = await call(`../jobs/${job.id}/result`);
    showDomainWarning("job-domain-warning", result.domain);
    const summary = $("job-summary");
    summary.replaceChildren();
    for (const [name, value] of Object.entries(result)) {
      if (name === "predictions" || name === "grid") continue;
      summary.append(element("dt", {}, name.replaceAll("_", " ")), element("dd", {}, brief(value)));
    }
  }
  listJobs();
}

async function submitSlide(event) {
  event.preventDefault();
  const file = $("slide").files[0];
  if (!file) { $("job-status").textContent = "choose a slide file first"; $("job").hidden = false; return; }
  const form = new FormData();
  form.append("slide", file);
  try {
    await followJob(await call(`../model/${$("model").value}/jobs`, { method: "POST", body: form }));
  } catch (error) {
    $("job").hidden = false;
    $("job-status").textContent = error.message;
  }
}

async function listJobs() {
  try {
    const { jobs } = await call("../jobs");
    const body = $("jobs").tBodies[0];
    body.replaceChildren();
    for (const job of jobs.slice(0, 20)) {
      const row = element("tr");
      for (const value of [job.created, job.model, job.slide, job.status, `${Math.round(job.progress * 100)} %`])
        row.append(element("td", {}, value || ""));
      body.append(row);
    }
  } catch (error) { /* no key yet, or no jobs: the table stays empty */ }
}

async function start() {
  $("api-key").value = sessionStorage.getItem("mmax-api-key") || "";
  try {
    const { models: list } = await call("../model/metadata");
    for (const model of list) {
      models[model.id] = model;
      $("model").append(element("option", { value: model.id }, `${model.name} (${model.id})`));
    }
    const wanted = new URLSearchParams(location.search).get("model");
    if (wanted && models[wanted]) $("model").value = wanted;
    showModel($("model").value);
    listJobs();
  } catch (error) {
    $("model-description").textContent = `${error.message} (enter the API key, then reload)`;
  }
}

$("model").addEventListener("change", () => showModel($("model").value));
$("analyse").addEventListener("submit", analyse);
$("slide-form").addEventListener("submit", submitSlide);
$("api-key").addEventListener("change", () => { if (!Object.keys(models).length) start(); });
start();
