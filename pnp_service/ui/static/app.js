// The roll-out page: polls /api/rollout (or /api/device/SERIAL) every 2 s and redraws in place, never reloads.
// Every value comes from devices or operators: it is set as text, never as HTML.
"use strict";

const EVERY_MS = 2000;
let timer = null;

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(tbody, items, draw) {
  const rows = items.map((item) => { const tr = document.createElement("tr"); draw(tr, item); return tr; });
  tbody.replaceChildren(...rows);
}

function get(url) {
  return fetch(url, { credentials: "same-origin", cache: "no-store" }).then((response) => {
    if (!response.ok) throw new Error(response.status + " " + response.statusText);
    return response.json();
  });
}

function stamp(ok, text) {
  const updated = document.getElementById("updated");
  updated.textContent = ok ? "updated " + new Date().toLocaleTimeString() : "not updated: " + text;
  updated.dataset.polls = String(Number(updated.dataset.polls || 0) + 1);
}

function drawRollout(data) {
  const select = document.getElementById("state");
  if (select.options.length === 1) {
    for (const state of data.states) {
      const option = document.createElement("option"); option.value = state; option.textContent = state;
      select.appendChild(option);
    }
  }
  document.getElementById("summary").textContent = data.summary;
  document.getElementById("bar").style.width = (100 * data.progress).toFixed(1) + "%";
  const counts = document.getElementById("counts");
  counts.replaceChildren(...Object.entries(data.totals.by_state).map(([state, count]) => {
    const chip = document.createElement("span");
    chip.className = state;
    chip.dataset.state = state;
    chip.textContent = count + " " + state;
    chip.addEventListener("click", () => { document.getElementById("state").value = state; poll(); });
    return chip;
  }));
  document.getElementById("problems").replaceChildren(...data.problems.map((problem) => {
    const line = document.createElement("div"); line.textContent = problem; return line;
  }));
  document.getElementById("matched").textContent = data.matched + " shown" +
    (data.matched > data.devices.length ? " (first " + data.devices.length + ")" : "");
  fill(document.querySelector("#devices tbody"), data.devices, (tr, d) => {
    tr.dataset.serial = d.serial;
    const link = document.createElement("a");
    link.href = "#/device/" + encodeURIComponent(d.serial);
    link.textContent = d.hostname || d.serial;
    cell(tr, "").appendChild(link);
    cell(tr, d.serial);
    cell(tr, d.pid);
    cell(tr, d.state, "state-" + d.state);
    cell(tr, d.step);
    cell(tr, d.attempts);
    cell(tr, d["last-contact"]);
    cell(tr, d["last-error"]);
    cell(tr, d.handoff + (d["handoff-message"] ? ": " + d["handoff-message"] : ""));
  });
  document.getElementById("unclaimed-count").textContent = "(" + data.totals.unclaimed + ")";
  fill(document.querySelector("#unclaimed tbody"), data.unclaimed, (tr, u) => {
    cell(tr, u.serial);
    cell(tr, u.pid);
    cell(tr, u.address);
    cell(tr, u["last-seen"]);
    const code = document.createElement("code");
    code.textContent = u.claim;
    cell(tr, "").appendChild(code);
  });
}

function drawDevice(data) {
  const d = data.device;
  document.getElementById("device-title").textContent = (d.hostname ? d.hostname + " " : "") + d.serial;
  const facts = document.getElementById("device-facts");
  const shown = ["state", "pid", "step", "attempts", "last-contact", "address", "last-error", "handoff",
    "handoff-message"].filter((name) => d[name]);
  facts.replaceChildren(...shown.flatMap((name) => {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = d[name];
    return [dt, dd];
  }));
  if (data.claim) {
    const dt = document.createElement("dt"); dt.textContent = "claim it with";
    const dd = document.createElement("dd"); const code = document.createElement("code");
    code.textContent = data.claim; dd.appendChild(code); facts.append(dt, dd);
  }
  fill(document.querySelector("#timeline tbody"), data.timeline, (tr, e) => {
    cell(tr, e.at);
    cell(tr, e.event, "event-" + e.event);
    cell(tr, e.step);
    cell(tr, e.state);
    cell(tr, e.address);
    cell(tr, e.detail + (e.repeats > 1 ? " (" + e.repeats + " times, last at " + e["last-at"] + ")" : ""));
  });
}

function route() {
  const match = location.hash.match(/^#\/device\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : "";
}

function poll() {
  clearTimeout(timer);
  const serial = route();
  document.getElementById("rollout").hidden = Boolean(serial);
  document.getElementById("device").hidden = !serial;
  const url = serial ? "/api/device/" + encodeURIComponent(serial)
    : "/api/rollout?" + new URLSearchParams({ state: document.getElementById("state").value,
      q: document.getElementById("search").value });
  get(url).then((data) => { (serial ? drawDevice : drawRollout)(data); stamp(true); })
    .catch((error) => stamp(false, error.message))
    .finally(() => { timer = setTimeout(poll, EVERY_MS); });
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("state").addEventListener("change", poll);
  document.getElementById("search").addEventListener("input", poll);
  window.addEventListener("hashchange", poll);
  poll();
});
