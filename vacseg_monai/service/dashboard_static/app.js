// The node dashboard: reads the JSON API every few seconds and redraws; changes nothing on the node.
"use strict";

const REFRESH_MS = 3000;
const TOKEN_KEY = "vacseg-dashboard-token";
const STRUCTURE_ORDER = ["Vacbag", "Couch", "Body"];

// Build an element; text always goes in as text, never as HTML (DICOM headers are untrusted).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value; else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

class Unauthorized extends Error {}

async function api(path, asBlob) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("token needed");
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return asBlob ? response.blob() : response.json();
}

function fmtTime(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 10 ? s.toFixed(2) + " s" : s < 600 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}
function fmtBytes(b) {
  if (b === null || b === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + units[i];
}
function stateBadge(state) { return h("span", { class: "state state-" + state, "data-state": state }, state); }
function shortUid(uid) { return uid && uid.length > 24 ? "…" + uid.slice(-20) : uid || "–"; }

function scores(quality) {
  const names = Object.keys(quality || {}).sort((a, b) => {
    const ia = STRUCTURE_ORDER.indexOf(a), ib = STRUCTURE_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  if (!names.length) return "–";
  return names.map((n) => {
    const s = quality[n];
    const score = typeof s.score === "number" ? s.score.toFixed(2) : "?";
    return h("span", { class: "score" + (s.flagged ? " flagged" : ""), title: s.flagged ? "flagged" : "" },
      `${n} ${score}${s.flagged ? "!" : ""}`);
  });
}

function patientCell(job) {
  const who = [job.patient_name, job.patient_id].filter(Boolean).join(" · ") || "–";
  return [h("div", {}, who), h("div", { class: "muted", title: job.series_uid }, job.series_description || shortUid(job.series_uid))];
}

function healthCards(health) {
  const disk = health.disk || {};
  const worker = health.worker || {};
  const last = health.last_export;
  const cards = [
    ["Disk free", fmtBytes(disk.free_bytes) + " (floor " + fmtBytes(disk.floor_bytes) + ")", disk.ok ? "good" : "bad", "disk"],
    ["Queue", String(health.queue_length) + " queued, " + String(health.in_progress) + " in progress", "", "queue"],
  ];
  if (worker.pid !== undefined) {
    const state = !worker.alive ? "down" : worker.ready ? "ready" : "loading";
    cards.push(["Worker", `${state} (pid ${worker.pid}, ${worker.restarts} restarts)`, worker.alive && worker.ready ? "good" : "bad", "worker"]);
    cards.push(["Model", (worker.bundle_name || "bundle") + " " + (worker.bundle_version || "?"), "", "model"]);
  }
  const dest = (health.node || {}).destination;
  let exportText = dest ? "none yet" : "no destination";
  let exportClass = "";
  if (last) {
    exportText = (last.ok ? "sent" : "failed") + " " + fmtTime(last.time) + " to " + last.destination +
      (last.attempts > 1 ? ` (${last.attempts} attempts)` : "");
    exportClass = last.ok ? "good" : "bad";
  }
  cards.push(["Last export", exportText, exportClass, "export"]);
  const counters = health.counters || {};
  if (counters.instances_received !== undefined) {
    const refused = Object.values(counters.refused || {}).reduce((a, b) => a + b, 0);
    cards.push(["Received since start", `${counters.instances_received} instances, ${refused} refused`, refused ? "bad" : "", "received"]);
  }
  return h("div", { class: "cards", id: "health" }, cards.map(([label, value, cls, key]) =>
    h("div", { class: "card " + cls, "data-health": key }, h("div", { class: "label" }, label), h("div", { class: "value" }, value))));
}

function jobRow(job) {
  const flagged = job.flagged.length > 0 || job.held;
  const title = job.held ? "held for review" : flagged ? "flagged: " + job.flagged.join(", ") : "";
  return h("tr", { class: "job", "data-job": job.job_id, "data-state": job.state },
    h("td", { class: "flag", title }, flagged ? "⚑" : ""),
    h("td", {}, stateBadge(job.state)),
    h("td", { class: "time" }, h("a", { href: "/jobs/" + encodeURIComponent(job.job_id) }, fmtTime(job.received))),
    h("td", {}, patientCell(job)),
    h("td", { class: "num" }, job.n_instances),
    h("td", { class: "num" }, fmtSeconds(job.latency_s)),
    h("td", {}, scores(job.quality)),
    h("td", {}, job.model_version || "–"),
    h("td", { class: "reason" }, job.reason || ""));
}

async function renderList(app) {
  const [data, health] = await Promise.all([api("/api/jobs"), api("/api/health")]);
  const counts = Object.entries(data.counts).map(([s, n]) => `${n} ${s}`).join(", ") || "no jobs";
  const table = h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ["", "State", "Received", "Patient / series", "Images", "Latency", "Quality", "Model", "Reason"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, data.jobs.map(jobRow)));
  app.replaceChildren(healthCards(health), h("h2", {}, "Jobs ", h("span", { class: "muted" }, `(${counts})`)),
    data.jobs.length ? table : h("p", { class: "muted" }, "No job yet."));
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function qaPicture(jobId, present, holder) {
  if (!present) { holder.replaceChildren(h("p", { class: "muted", id: "qa-missing" }, "No QA picture (yet).")); return; }
  if (holder.querySelector("img")) return; // loaded once; the picture of a job does not change
  const img = h("img", { class: "qa", id: "qa", alt: "QA picture: contours on a few slices" });
  img.addEventListener("load", () => img.setAttribute("data-natural-width", String(img.naturalWidth)));
  img.addEventListener("error", () => img.setAttribute("data-natural-width", "0"));
  holder.replaceChildren(img);
  api("/api/jobs/" + encodeURIComponent(jobId) + "/qa.png", true)
    .then((blob) => { if (blob) img.src = URL.createObjectURL(blob); })
    .catch(showError);
}

function correctionsTable(job) {
  if (!job.corrections.length) return h("p", { class: "muted" }, "No correction received.");
  const rows = [];
  for (const c of job.corrections) {
    const rois = c.rois && c.rois.length ? c.rois : [{}];
    for (const r of rois) {
      rows.push(h("tr", {}, h("td", {}, c.file || "–"), h("td", {}, c.status || "–"), h("td", {}, r.roi || "–"),
        h("td", { class: "num" }, typeof r.dice === "number" ? r.dice.toFixed(3) : "–"),
        h("td", { class: "num" }, typeof r.added_path_mm === "number" ? r.added_path_mm.toFixed(0) + " mm" : "–"),
        h("td", {}, r.status || "")));
    }
  }
  return h("table", { id: "corrections" }, h("thead", {}, h("tr", {},
    ["File", "Status", "ROI", "Dice", "Added path", "ROI status"].map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

async function renderJob(app, jobId) {
  const job = await api("/api/jobs/" + encodeURIComponent(jobId));
  if (!job) { app.replaceChildren(h("p", { class: "error", id: "not-found" }, "No job " + jobId + ".")); return; }
  let holder = document.getElementById("qa-holder");
  if (!holder || holder.dataset.job !== jobId) holder = h("div", { id: "qa-holder", "data-job": jobId });
  const history = h("table", { id: "history" }, h("thead", {}, h("tr", {}, ["State", "Time", "Seconds in it", "Reason"].map((t) => h("th", {}, t)))),
    h("tbody", {}, job.history.map((e) => h("tr", {}, h("td", {}, stateBadge(e.state)), h("td", {}, fmtTime(e.time)),
      h("td", { class: "num" }, fmtSeconds(e.seconds)), h("td", {}, e.reason || "")))));
  const timings = Object.entries(job.timings);
  const exp = job.export;
  const details = kv([
    ["State", stateBadge(job.state)], ["Patient", patientCell(job)[0]], ["Series", job.series_uid],
    ["Study", job.study_uid], ["Sender", job.calling_aet || "–"], ["Images", String(job.n_instances)],
    ["Received", fmtTime(job.received)], ["Latency", fmtSeconds(job.latency_s)], ["Model", job.model_version || "–"],
    ["Quality", scores(job.quality)],
    ["Export", exp ? `${exp.ok ? "sent" : "failed"} to ${exp.destination}, ${exp.attempts} attempt(s), ${fmtTime(exp.time)}` : "–"],
  ]);
  const parts = [h("h2", {}, "Job ", h("code", {}, job.job_id), " ", job.flagged.length || job.held ? h("span", { class: "flag" }, "⚑") : "")];
  if (job.reason) parts.push(h("p", { class: "reason", id: "reason" }, job.reason));
  const left = [details, h("h2", {}, "History"), history,
    h("h2", {}, "Timings"), timings.length ? kv(timings.map(([k, v]) => [k, fmtSeconds(v)])) : h("p", { class: "muted" }, "–"),
    h("h2", {}, "Exported files"), job.outputs.length ? h("ul", { id: "outputs" }, job.outputs.map((o) => h("li", {}, h("code", {}, o.file), " ", h("span", { class: "muted" }, fmtBytes(o.bytes))))) : h("p", { class: "muted" }, "–"),
    h("h2", {}, "Corrections"), correctionsTable(job)];
  parts.push(h("div", { class: "columns" }, h("div", {}, left), h("div", {}, h("h2", {}, "QA picture"), holder)));
  app.replaceChildren(...parts);
  qaPicture(job.job_id, job.qa_picture, holder);
}

function showError(err) {
  const el = document.getElementById("error");
  if (err instanceof Unauthorized) {
    document.getElementById("token-form").hidden = false;
    el.textContent = "token needed";
  } else {
    el.textContent = String(err && err.message ? err.message : err);
  }
  el.hidden = false;
}

async function refresh() {
  const app = document.getElementById("app");
  const match = location.pathname.match(/^\/jobs\/([^/]+)$/);
  try {
    if (match) await renderJob(app, decodeURIComponent(match[1])); else await renderList(app);
    document.getElementById("error").hidden = true;
    document.getElementById("updated").textContent = "updated " + fmtTime(Date.now() / 1000);
    document.body.setAttribute("data-ready", "1");
  } catch (err) {
    showError(err);
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
  document.getElementById("token-form").hidden = true;
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
