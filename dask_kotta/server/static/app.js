// The dask-kotta page: the user's jobs, one job's detail (#job=ID), queues and counts.
//
// Everything the server sends (names, reasons, logs, tracebacks) is put into the page as
// text (textContent, text nodes), never as markup; the server's Content-Security-Policy
// forbids any script but this file as a second line.
//
// Routes live in the URL's fragment, which the browser never sends: #job=ID opens a job,
// #token=T logs in (kept in this tab's sessionStorage, then dropped from the address bar).
// What the server can do is read once from its /openapi.json, so the page works with a
// server that lacks a route (no live log tail, no links...), saying what it cannot show.
"use strict";

const TOKEN_KEY = "kotta-token";
const REFRESH_MS = 3000; // list, counts, queues and the open job
const TAIL_MS = 1000; // a running job's logs
const MAX_LOG_CHARS = 256 * 1024; // the tail kept on the page per stream
const FAR = Number.MAX_SAFE_INTEGER; // an offset past any log: asks only for its size
const ENDED = new Set(["completed", "failed", "cancelled"]);
const RUNNING = new Set(["staging_inputs", "processing", "staging_outputs"]);
const P = {
  logs: "/api/v1/jobs/{job_id}/logs/{stream}",
  links: "/api/v1/jobs/{job_id}/links",
  resubmit: "/api/v1/jobs/{job_id}/resubmit",
  counts: "/api/v1/jobs/counts",
  info: "/api/v1/info",
};

const $ = (id) => document.getElementById(id);

// An element whose children are elements or strings (strings become text nodes).
function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...kids.filter((x) => x != null).map((x) => (typeof x === "number" ? String(x) : x)));
  return e;
}

const when = (t) => (t == null ? "-" : new Date(t * 1000).toLocaleString());
function dur(s) {
  if (s == null) return "-";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
function size(n) {
  if (n == null) return "";
  for (const [unit, k] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= k) return `${(n / k).toFixed(1)} ${unit}`;
  }
  return `${n} B`;
}
// Seconds a job has run: the server's `elapsed` when it sends one, else from its times.
function elapsed(job) {
  if (job.elapsed !== undefined) return job.elapsed;
  if (job.started_at == null) return null;
  return (job.ended_at ?? Date.now() / 1000) - job.started_at;
}
function waiting(job) {
  if (job.status !== "pending") return job.reason || "";
  const place = job.position != null ? `#${job.position} in its queue` : "";
  return [place, job.reason].filter(Boolean).join("; ");
}

// --- the API ------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
let caps = new Set(); // the paths the server publishes

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(opts.headers || {}) };
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) {
    const e = new HttpError(401, await detailOf(r));
    showLogin(`The server rejected this token: ${e.message}.`);
    throw e;
  }
  return r;
}
async function detailOf(r) {
  try {
    const body = await r.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `HTTP ${r.status}`;
  }
}
async function json(path, opts) {
  const r = await api(path, opts);
  if (!r.ok) throw new HttpError(r.status, await detailOf(r));
  return r.json();
}
const jobPath = (id, rest = "") => `/api/v1/jobs/${encodeURIComponent(id)}${rest}`;

function say(text) {
  $("msg").textContent = text || "";
  $("msg").hidden = !text;
}
function failed(e) {
  if (!(e instanceof HttpError && e.status === 401)) say(e.message || String(e));
}

// --- the token and the route --------------------------------------------------------------

// The fragment's parameters; a token among them is kept and dropped from the address bar
// (and so from the history), leaving the rest of the route.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token").trim());
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  return params;
}

function showLogin(text) {
  $("login-msg").textContent = text;
  $("login").hidden = false;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("refreshing").hidden = true;
  $("who").textContent = "";
  stopTimers();
}

const HOW_TO_LOGIN =
  ` Open this page as ${location.origin}/#token=YOUR_TOKEN (the "token" of your auth.file; after the #, ` +
  "so it never reaches the server or its logs), or paste the token here.";

// --- state --------------------------------------------------------------------------------

const state = {
  status: "",
  queue: "",
  name: "",
  limit: 25,
  before: null, // the cursor of the page shown (null: the newest)
  pages: [], // cursors of the newer pages, to go back
  next: null,
  job: null, // the job shown at the top
  detail: null, // its parts (see openJob)
};
let timers = [];
function stopTimers() {
  timers.forEach(clearInterval);
  timers = [];
}
const paused = () => document.hidden || !$("auto").checked;

// --- overview: counts and queues ----------------------------------------------------------

async function refreshCounts() {
  const box = $("counts");
  if (!caps.has(P.counts)) {
    box.hidden = true;
    return;
  }
  const { counts } = await json(P.counts);
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const pick = (status) => () => setFilter("status", status);
  box.replaceChildren(
    el("button", { type: "button", class: state.status === "" ? "active" : null, onclick: pick("") }, `all ${total}`),
    ...Object.entries(counts).map(([status, n]) =>
      el(
        "button",
        { type: "button", "data-status": status, class: state.status === status ? `${status} active` : status, onclick: pick(status) },
        `${status} ${n}`,
      ),
    ),
  );
}

async function refreshQueues() {
  const queues = await json("/api/v1/queues");
  const rows = Object.entries(queues).map(([name, q]) => {
    const busy = q.busy ?? null;
    return el(
      "tr",
      { "data-queue": name },
      el("td", {}, name),
      el("td", {}, q.slots),
      el("td", {}, busy ?? "-"),
      el("td", {}, busy == null ? "-" : Math.max(q.slots - busy, 0)),
      el("td", {}, q.pending ?? "-"),
      el("td", {}, q.yours?.running ?? 0),
      el("td", {}, q.yours?.pending ?? 0),
    );
  });
  $("queues").tBodies[0].replaceChildren(...rows);
  const select = $("f-queue");
  if (select.options.length === 1) {
    select.append(...Object.keys(queues).map((name) => el("option", { value: name }, name)));
  }
}

async function refreshInfo() {
  if (!caps.has(P.info)) return;
  const info = await json(P.info);
  const link = $("dashboard");
  // Only a web address: never a javascript: URL, whoever configured it.
  if (typeof info.dashboard === "string" && /^https?:\/\//i.test(info.dashboard)) {
    link.href = info.dashboard;
    link.hidden = false;
  }
}

// --- the list -----------------------------------------------------------------------------

// Without the server's filters (an older server), the page filters the newest jobs itself.
function matches(job) {
  if (state.status === "running" && !RUNNING.has(job.status)) return false;
  if (state.queue && job.queue !== state.queue) return false;
  if (state.name && !(job.name || "").includes(state.name)) return false;
  return true;
}

async function refreshList() {
  const q = new URLSearchParams({ limit: state.limit });
  const serverFilters = caps.has(P.counts); // the listing contract came with the counts
  if (state.status && (serverFilters || state.status !== "running")) q.set("status", state.status);
  if (serverFilters) {
    if (state.queue) q.set("queue", state.queue);
    if (state.name) q.set("name", state.name);
    if (state.before) q.set("before", state.before);
  }
  const data = await json(`/api/v1/jobs?${q}`);
  const jobs = serverFilters ? data.jobs : data.jobs.filter(matches);
  state.next = data.next ?? null;
  const rows = jobs.map((j) =>
    el(
      "tr",
      { "data-id": j.id, class: j.id === state.job ? "selected" : null, onclick: () => go(j.id) },
      el("td", {}, el("a", { href: `#job=${encodeURIComponent(j.id)}` }, j.id)),
      el("td", {}, j.name || ""),
      el("td", {}, j.queue),
      el("td", { class: j.status }, j.status),
      el("td", {}, when(j.submitted_at)),
      el("td", {}, dur(elapsed(j))),
      el("td", {}, waiting(j)),
    ),
  );
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No jobs here.")));
  $("jobs").tBodies[0].replaceChildren(...rows);
  $("newer").disabled = !state.pages.length;
  $("older").disabled = !state.next;
  $("page-info").textContent = serverFilters
    ? `page ${state.pages.length + 1}`
    : `the newest ${state.limit} jobs (this server has no paging)`;
}

function setFilter(key, value) {
  state[key] = value;
  state.before = null;
  state.pages = [];
  if (key === "status") $("f-status").value = value;
  refresh();
}

// --- one job ------------------------------------------------------------------------------

function go(id) {
  location.hash = `job=${encodeURIComponent(id)}`;
}

// The detail's parts that live as long as the job is shown: its log tails and links.
function openJob(id) {
  const box = $("detail");
  const summary = el("div");
  const outputs = el("div");
  const logs = el("div");
  box.replaceChildren(summary, outputs, logs);
  box.hidden = false;
  state.detail = { id, summary, outputs, logs, tails: null, outputsKey: null, linksUntil: 0, job: null };
  window.scrollTo(0, 0);
}

async function refreshJob() {
  const d = state.detail;
  if (!d) return;
  let job;
  try {
    job = await json(jobPath(d.id));
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) {
      d.summary.replaceChildren(
        el("h2", {}, `Job ${d.id}`),
        el("p", { class: "error" }, `No job ${d.id} here: it does not exist, or it is not yours.`),
        el("p", {}, el("a", { href: "#" }, "Back to the list")),
      );
      d.outputs.replaceChildren();
      d.logs.replaceChildren();
      return;
    }
    throw e;
  }
  if (state.detail !== d) return; // another job was opened meanwhile
  d.job = job;
  renderSummary(d, job);
  await renderOutputs(d, job);
  if (!d.tails) startTails(d, job);
  else if (ENDED.has(job.status) && !caps.has(P.logs)) await finalLogs(d, job);
  dedupeTraceback(d);
}

function renderSummary(d, job) {
  const ended = ENDED.has(job.status);
  const rows = [
    ["status", el("span", { class: job.status, id: "job-status" }, job.status)],
    ["queue", `${job.queue} (walltime ${job.walltime_min} min)`],
    ["submitted", when(job.submitted_at)],
    ["started", when(job.started_at)],
    ["ended", when(job.ended_at)],
    [ended ? "run time" : "elapsed", dur(elapsed(job))],
  ];
  if (job.status === "pending") rows.push(["waiting", waiting(job) || "-"]);
  else if (job.reason && !sameAsTraceback(job)) rows.push(["reason", job.reason]);
  if (job.attempt > 1 || job.requeues) rows.push(["attempts", `${job.attempt} (requeued ${job.requeues})`]);
  if (job.worker) rows.push(["worker", job.worker]);
  const t = job.timings || {};
  if (t.run != null) rows.push(["phases", `stage in ${dur(t.stage_in)}, run ${dur(t.run)}, stage out ${dur(t.stage_out)}`]);
  if (job.inputs?.length) rows.push(["inputs", job.inputs.join(", ")]);
  if (job.resubmit_of) rows.push(["resubmit of", el("a", { href: `#job=${encodeURIComponent(job.resubmit_of)}` }, job.resubmit_of)]);

  const actions = el("div", { class: "actions" });
  if (!ended) actions.append(el("button", { type: "button", id: "cancel", onclick: () => act(d, "/cancel") }, "Cancel"));
  if (ended && caps.has(P.resubmit)) {
    actions.append(el("button", { type: "button", id: "resubmit", onclick: () => act(d, "/resubmit") }, "Resubmit"));
  }
  actions.append(el("a", { href: "#" }, "Close"));
  d.summary.replaceChildren(
    ...[
      el("h2", {}, `Job ${job.id} `, el("span", { class: "muted" }, job.name || job.jobtype)),
      el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      actions,
      // One traceback: the remote one, once (the reason repeats its last line).
      job.traceback ? el("pre", { class: "traceback", id: "traceback" }, job.traceback) : null,
    ].filter(Boolean),
  );
}

function sameAsTraceback(job) {
  if (!job.traceback) return false;
  const last = job.traceback.trim().split("\n").pop().trim();
  return last === job.reason.trim() || last.endsWith(job.reason.trim());
}

async function act(d, what) {
  try {
    const job = await json(jobPath(d.id, what), { method: "POST" });
    if (job.id !== d.id) go(job.id); // a resubmit: the new job
    else await refreshJob();
    refreshList().catch(failed);
  } catch (e) {
    failed(e);
  }
}

// Outputs with links a browser opens without the token: the server's signed links where it
// makes them (made again a minute before they expire); else a download through this page.
async function renderOutputs(d, job) {
  const names = job.outputs.map((o) => `${o.name}:${o.size}`).join("\n");
  const stale = caps.has(P.links) && Date.now() > d.linksUntil - 60 * 1000;
  if (names === d.outputsKey && !stale) return;
  d.outputsKey = names;
  if (!job.outputs.length) {
    d.outputs.replaceChildren();
    return;
  }
  let links = {};
  if (caps.has(P.links)) {
    try {
      const made = await json(jobPath(d.id, "/links"), { method: "POST" });
      links = made.links || {};
      d.linksUntil = (made.expires || 0) * 1000;
    } catch (e) {
      failed(e);
    }
  }
  const items = job.outputs.map((o) => {
    const link = links[o.name];
    const a = link
      ? el("a", { href: link, download: o.name, "data-name": o.name, rel: "noreferrer" }, o.name)
      : el("a", { href: "#", "data-name": o.name, onclick: (ev) => { ev.preventDefault(); download(d.id, o.name); } }, o.name);
    return el("li", {}, a, " ", el("span", { class: "muted" }, size(o.size)));
  });
  d.outputs.replaceChildren(el("h3", {}, "Outputs"), el("ul", { id: "outputs" }, ...items));
}

async function download(id, name) {
  try {
    const r = await api(jobPath(id, `/files/${name.split("/").map(encodeURIComponent).join("/")}`));
    if (!r.ok) throw new HttpError(r.status, await detailOf(r));
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: name.split("/").pop() });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    failed(e);
  }
}

// A failed python job prints its traceback to its stderr too: shown once, above the logs.
function dedupeTraceback(d) {
  const t = d.tails?.find((x) => x.stream === "stderr");
  const tb = d.job?.traceback?.trim();
  if (!t || !tb || t.tbShown) return;
  const text = t.pre.textContent;
  const at = text.lastIndexOf(tb);
  if (at < 0 || text.slice(at + tb.length).trim()) return;
  t.pre.textContent = text.slice(0, at);
  t.tbShown = true;
  t.note.textContent = "Its traceback is shown above.";
}

// --- logs ---------------------------------------------------------------------------------

function startTails(d, job) {
  d.tails = ["stdout", "stderr"].map((stream) => {
    const pre = el("pre", { id: `log-${stream}`, class: "log" });
    const note = el("p", { class: "muted" });
    d.logs.append(el("h3", {}, stream === "stdout" ? job.stdout || "STDOUT" : job.stderr || "STDERR"), note, pre);
    return { stream, pre, note, offset: 0, probed: false, final: false, decoder: new TextDecoder(), cut: false, fetched: false };
  });
  if (caps.has(P.logs)) pollLogs(d);
  else if (ENDED.has(job.status)) finalLogs(d, job).catch(failed);
  else for (const t of d.tails) t.note.textContent = "This server does not send logs while a job runs: shown once it ends.";
}

function append(t, text) {
  if (!text) return;
  const pre = t.pre;
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  let all = pre.textContent + text;
  if (all.length > MAX_LOG_CHARS) {
    all = all.slice(all.length - MAX_LOG_CHARS);
    if (!t.cut) t.note.textContent = "Earlier lines are not shown here: download the log for all of it.";
    t.cut = true;
  }
  pre.textContent = all;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
  if (state.detail) dedupeTraceback(state.detail);
}

let tailing = false;
async function pollLogs(d) {
  if (tailing || state.detail !== d || !d.tails || !caps.has(P.logs)) return;
  tailing = true;
  try {
    for (const t of d.tails) {
      if (t.final) continue;
      if (!t.probed) {
        // A long log is read from its last MAX_LOG_CHARS bytes, not moved whole to be cut here.
        const head = await api(jobPath(d.id, `/logs/${t.stream}?offset=${FAR}`));
        const held = Number(head.headers.get("X-Kotta-Log-Size"));
        t.probed = true;
        if (head.ok && held > MAX_LOG_CHARS) {
          t.offset = held - MAX_LOG_CHARS;
          t.cut = true;
          t.note.textContent = `The first ${size(t.offset)} are not shown here: download the log for all of it.`;
        }
      }
      const r = await api(jobPath(d.id, `/logs/${t.stream}?offset=${t.offset}`));
      if (!r.ok) {
        t.final = true;
        t.note.textContent = `No log: ${await detailOf(r)}`;
        continue;
      }
      const data = await r.arrayBuffer();
      const held = Number(r.headers.get("X-Kotta-Log-Size"));
      t.offset += data.byteLength;
      t.final = r.headers.get("X-Kotta-Log-Final") === "1" && !(t.offset < held);
      if (state.detail !== d) return;
      append(t, t.decoder.decode(data, { stream: !t.final }));
      if (t.final && !t.pre.textContent && !t.tbShown) t.note.textContent = "(empty)";
    }
  } catch (e) {
    failed(e);
  } finally {
    tailing = false;
  }
}

// Without live logs: the streams' files, once the job has ended.
async function finalLogs(d, job) {
  for (const t of d.tails) {
    if (t.fetched) continue;
    t.fetched = true;
    const name = t.stream === "stdout" ? job.stdout || "STDOUT.txt" : job.stderr || "STDERR.txt";
    if (!job.outputs.some((o) => o.name === name)) {
      t.note.textContent = "(none kept)";
      continue;
    }
    const r = await api(jobPath(d.id, `/files/${encodeURIComponent(name)}`));
    t.note.textContent = r.ok ? "" : `Could not read it: ${await detailOf(r)}`;
    if (r.ok) append(t, await r.text());
  }
}

// --- the loop -----------------------------------------------------------------------------

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    await Promise.all([refreshList(), refreshCounts(), refreshQueues(), refreshJob()]);
    say("");
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    failed(e);
  } finally {
    refreshing = false;
  }
}

function route() {
  const params = readFragment();
  if (!token()) return false;
  const id = params.get("job");
  if (id !== state.job) {
    state.job = id;
    if (id) openJob(id);
    else {
      state.detail = null;
      $("detail").hidden = true;
      $("detail").replaceChildren();
    }
  }
  return true;
}

async function start() {
  stopTimers();
  if (!route()) return showLogin(`No token.${HOW_TO_LOGIN}`);
  let me;
  try {
    me = await json("/api/v1/whoami");
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) {
      $("login-msg").textContent += HOW_TO_LOGIN;
    } else say(`The server did not answer: ${e.message}`);
    return;
  }
  try {
    const schema = await (await fetch("/openapi.json")).json();
    caps = new Set(Object.keys(schema.paths || {}));
  } catch {
    caps = new Set(); // the plainest page: list, detail, cancel, final logs
  }
  $("who").textContent = `— ${me.name}`;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("refreshing").hidden = false;
  refreshInfo().catch(failed);
  await refresh();
  timers.push(setInterval(() => paused() || refresh(), REFRESH_MS));
  timers.push(setInterval(() => paused() || (state.detail && pollLogs(state.detail)), TAIL_MS));
}

$("save").addEventListener("click", () => {
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
});
$("token").addEventListener("keydown", (ev) => ev.key === "Enter" && $("save").click());
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(`No token.${HOW_TO_LOGIN}`);
});
$("f-status").addEventListener("change", (ev) => setFilter("status", ev.target.value));
$("f-queue").addEventListener("change", (ev) => setFilter("queue", ev.target.value));
let typing;
$("f-name").addEventListener("input", (ev) => {
  clearTimeout(typing);
  typing = setTimeout(() => setFilter("name", ev.target.value), 300);
});
$("f-limit").addEventListener("change", (ev) => setFilter("limit", Number(ev.target.value)));
$("filters").addEventListener("submit", (ev) => ev.preventDefault());
$("older").addEventListener("click", () => {
  if (!state.next) return;
  state.pages.push(state.before);
  state.before = state.next;
  refresh();
});
$("newer").addEventListener("click", () => {
  if (!state.pages.length) return;
  state.before = state.pages.pop();
  refresh();
});
window.addEventListener("hashchange", () => {
  // A new token (#token=...) or none: start again; else only the route changed.
  if (!token() || location.hash.includes("token=") || $("app").hidden) return start();
  route();
  refresh();
});
document.addEventListener("visibilitychange", () => document.hidden || paused() || refresh());
start();
