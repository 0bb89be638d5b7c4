// The dashboard: renders what the REST API answers and sends the user's clicks back to it.
import { api, auth, ApiError } from "./api.js";
import { openScreen } from "./screen.js";

const $ = (id) => document.getElementById(id);
const history = new Map();     // VM name -> recent {cpu, rss} samples, for the sparklines
let screen = null;
let logTimer = null;

function showError(e) {
  $("error").textContent = e ? String(e.message || e) : "";
  if (e instanceof ApiError && e.status === 401) signOut();
}

function signOut() {
  auth.clear();
  render();
}

function spark(values) {
  const v = values.filter((x) => x !== null && x !== undefined);
  if (v.length < 2) return "";
  const max = Math.max(...v, 1);
  const pts = v.map((x, i) => `${(i * 80) / (v.length - 1)},${18 - (x / max) * 16}`).join(" ");
  return `<svg class="spark" viewBox="0 0 80 18"><polyline points="${pts}"/></svg>`;
}

function button(label, action, name) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.action = action;
  b.dataset.vm = name;
  return b;
}

const ACTIONS = {
  stopped: ["start", "delete"], crashed: ["start", "delete"],
  running: ["stop", "pause", "snapshot"], paused: ["resume", "stop"],
};

function row(vm) {
  const tr = document.createElement("tr");
  tr.dataset.vm = vm.name;
  const h = history.get(vm.name) || [];
  const cells = [vm.name, vm.state, vm.machine, vm.vcpus, `${vm.memory} MiB`];
  for (const c of cells) tr.insertCell().textContent = c;
  tr.cells[1].className = `state-${vm.state}`;
  tr.insertCell().innerHTML = spark(h.map((p) => p.cpu_pct));
  tr.insertCell().innerHTML = spark(h.map((p) => p.rss_mib));
  const td = tr.insertCell();
  for (const a of ACTIONS[vm.state] || []) td.append(button(a, a, vm.name));
  td.append(button("log", "log", vm.name));
  if (vm.spec.display && ["running", "paused"].includes(vm.state)) {
    td.append(button("console", "console", vm.name));
  }
  return tr;
}

async function refresh() {
  if (!auth.token) return;
  refreshDesktops();
  try {
    const vms = await api("GET", "/vms");
    const body = $("vms").tBodies[0];
    body.replaceChildren(...vms.map(row));
    $("vm-section").hidden = $("create-section").hidden = false;
  } catch (e) {
    // A desktop user with no role in any project sees only their desktops.
    if (e instanceof ApiError && e.status === 403) {
      $("vm-section").hidden = $("create-section").hidden = true;
    } else showError(e);
  }
}

function desktopRow(d) {
  const tr = document.createElement("tr");
  tr.dataset.desktop = `${d.project}/${d.pool}`;
  for (const c of [d.vm, d.pool, d.project, d.state]) tr.insertCell().textContent = c;
  const b = document.createElement("button");
  b.textContent = "open";
  b.dataset.project = d.project;
  b.dataset.pool = d.pool;
  tr.insertCell().append(b);
  return tr;
}

async function refreshDesktops() {
  try {
    const mine = await api("GET", "/desktops");
    $("desktops").tBodies[0].replaceChildren(...mine.map(desktopRow));
    $("my-desktops").hidden = mine.length === 0;
  } catch (e) { showError(e); }
}

// The daemon starts the desktop if needed and mints a console token for its user.
async function openDesktop(project, pool) {
  showError(null);
  try {
    const path = `/desktops/${encodeURIComponent(project)}/${encodeURIComponent(pool)}/open`;
    const access = await api("POST", path);
    await showConsole(access.vm, access.token);
  } catch (e) { showError(e); }
}

async function sample() {
  if (!auth.token) return;
  try {
    const cur = await api("GET", "/metrics/current");
    for (const v of cur.vms) {
      const h = history.get(v.name) || [];
      h.push(v.point);
      history.set(v.name, h.slice(-30));
    }
  } catch (e) { /* metrics are optional: the list still works without them */ }
}

async function act(action, name) {
  showError(null);
  const path = `/vms/${encodeURIComponent(name)}`;
  try {
    if (action === "log") return showLog(name);
    if (action === "console") return showConsole(name);
    if (action === "delete") {
      if (!confirm(`Delete ${name}?`)) return;
      await api("DELETE", path);
    } else if (action === "snapshot") {
      const snap = prompt("Snapshot name", `snap-${Date.now()}`);
      if (!snap) return;
      await api("POST", `${path}/snapshots`, { name: snap });
    } else {
      await api("POST", `${path}/${action}`);
    }
  } catch (e) { showError(e); }
  await refresh();
}

async function showLog(name) {
  clearInterval(logTimer);
  $("log-panel").hidden = false;
  $("log-vm").textContent = name;
  const pull = async () => {
    try {
      const chunk = await api("GET", `/vms/${encodeURIComponent(name)}/logs?offset=-16384`);
      const pre = $("log");
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = chunk.data;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    } catch (e) { showError(e); clearInterval(logTimer); }
  };
  await pull();
  logTimer = setInterval(pull, 2000);
}

async function showConsole(name, token) {
  closeConsole();
  $("console-panel").hidden = false;
  $("console-vm").textContent = name;
  screen = await openScreen($("screen"), name, (s) => { $("console-status").textContent = s; },
                            token);
}

function closeConsole() {
  if (screen) { screen.disconnect(); screen = null; }
  $("console-panel").hidden = true;
}

async function create(ev) {
  ev.preventDefault();
  showError(null);
  const f = new FormData(ev.target);
  const spec = { name: f.get("name"), vcpus: Number(f.get("vcpus")), memory: f.get("memory") };
  if (f.get("image")) spec.image = f.get("image");
  if (f.get("template")) spec.template = f.get("template");
  if (f.get("display")) spec.display = true;
  try {
    await api("POST", "/vms", spec);
    if (f.get("start")) await api("POST", `/vms/${encodeURIComponent(spec.name)}/start`);
  } catch (e) { showError(e); }
  await refresh();
}

async function loadImages() {
  try {
    const images = await api("GET", "/images");
    $("create").elements.image.replaceChildren(
      new Option("(none)", ""), ...images.map((i) => new Option(i.name, i.name)));
    if (images.some((i) => i.name === "tiny")) $("create").elements.image.value = "tiny";
  } catch (e) { showError(e); }
}

function render() {
  const signedIn = Boolean(auth.token);
  $("login").hidden = signedIn;
  $("main").hidden = !signedIn;
  $("logout").hidden = !signedIn;
  $("who").textContent = signedIn && auth.project ? `project ${auth.project}` : "";
  if (signedIn) { loadImages(); refresh(); }
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  auth.set($("token").value.trim(), $("project").value.trim());
  try { await api("GET", "/desktops"); $("login-error").textContent = ""; }
  catch (e) { auth.clear(); $("login-error").textContent = e.message; }
  render();
});
$("logout").addEventListener("click", signOut);
$("vms").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (b) act(b.dataset.action, b.dataset.vm);
});
$("desktops").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (b) openDesktop(b.dataset.project, b.dataset.pool);
});
$("create").addEventListener("submit", create);
$("log-close").addEventListener("click", () => { clearInterval(logTimer); $("log-panel").hidden = true; });
$("console-close").addEventListener("click", closeConsole);

render();
setInterval(refresh, 3000);
setInterval(sample, 5000);
