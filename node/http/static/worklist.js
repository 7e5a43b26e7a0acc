// The worklist page: rows from /api/worklist, refreshed every 10 s without losing the
// scroll position. Text only through textContent: nothing from the API becomes markup.
"use strict";

const SHORT = {any: "any", epidural: "EDH", intraparenchymal: "IPH", intraventricular: "IVH",
               subarachnoid: "SAH", subdural: "SDH"};
const REFRESH_MS = 10000;
const PAGE = 50;
const state = {items: [], cursor: null};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function query(limit, cursor) {
  const q = new URLSearchParams();
  for (const [name, value] of new FormData(document.getElementById("filters"))) {
    // <input type=date> gives YYYY-MM-DD; the API takes the DICOM DA form YYYYMMDD
    if (value) q.set(name, name.startsWith("study_date") ? value.replaceAll("-", "") : value);
  }
  q.set("limit", String(Math.min(limit, 500)));
  if (cursor) q.set("cursor", cursor);
  return q;
}

function waiting(since) {
  if (!since) return "";
  const s = Math.max(0, (Date.now() - Date.parse(since)) / 1000);
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function findings(item) {
  const cell = el("td", null, "findings");
  const found = Object.keys(SHORT).filter((l) => l !== "any" && item.calls[l]);
  for (const label of found) {
    cell.append(el("span", SHORT[label] + " " + item.probabilities[label].toFixed(2),
                   "badge finding finding-" + label), " ");
  }
  if (!found.length && item.calls.any) {
    cell.append(el("span", "any " + item.probabilities.any.toFixed(2), "badge finding"));
  } else if (!found.length && "any" in item.probabilities) {
    cell.append(el("span", "none (any " + item.probabilities.any.toFixed(2) + ")", "none"));
  }
  return cell;
}

function row(item) {
  const tr = el("tr", null, "priority-" + item.priority);
  tr.dataset.uid = item.StudyInstanceUID;
  const priority = el("td");
  priority.append(el("span", item.priority, "badge priority-" + item.priority));
  tr.append(priority);
  tr.append(findings(item));
  tr.append(el("td", item.status, "status"));
  tr.append(el("td", waiting(item.last_slice_at), "waiting"));
  tr.append(el("td", item.AccessionNumber));
  const study = el("td");
  const link = el("a", item.StudyDescription || item.StudyInstanceUID, "open");
  link.href = "/studies/" + encodeURIComponent(item.StudyInstanceUID);
  study.append(link);
  if (item.reason) study.append(el("div", item.reason, "reason"));
  tr.append(study);
  tr.append(el("td", item.StudyDate));
  return tr;
}

function render() {
  const rows = document.getElementById("rows");
  rows.replaceChildren(...state.items.map(row));
  document.getElementById("empty").hidden = state.items.length > 0;
  document.getElementById("more").hidden = !state.cursor;
}

async function load(more) {
  const error = document.getElementById("error");
  const limit = more ? PAGE : Math.max(PAGE, state.items.length);
  let response;
  try {
    response = await fetch("/api/worklist?" + query(limit, more ? state.cursor : null),
                           {credentials: "same-origin", headers: {Accept: "application/json"}});
  } catch (e) {
    error.textContent = "The node does not answer; retrying.";
    error.hidden = false;
    return;
  }
  if (response.status === 401) { window.location.assign("/login"); return; }
  if (!response.ok) {
    error.textContent = "The worklist could not be read (" + response.status + ").";
    error.hidden = false;
    return;
  }
  const page = await response.json();
  const scroll = window.scrollY;  // where the reader is now, not when the request left
  state.items = more ? state.items.concat(page.items) : page.items;
  state.cursor = page.next_cursor;
  error.hidden = true;
  render();
  window.scrollTo(0, scroll);
  document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
  document.body.dataset.loaded = "yes";
}

document.getElementById("filters").addEventListener("change", () => { state.items = []; load(false); });
document.getElementById("more").addEventListener("click", () => load(true));
load(false);
setInterval(() => load(false), REFRESH_MS);
