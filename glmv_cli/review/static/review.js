// glmv review: one document at a time; every decision is saved to the server as it is made.
"use strict";

const state = { pos: 0, count: 0, doc: null, current: 0, editing: null };
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || data.detail || res.statusText);
  return data;
}

function say(text) { $("#message").textContent = text; }

// --- values: text in an input <-> the schema's types, checked as you type -----------------------
function typeOf(spec) { return spec.enum ? "enum" : (spec.format === "date" ? "date" : spec.type || "string"); }

function toText(value) { return value === null || value === undefined ? "" : String(value); }

function isDate(text) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) return false;
  const d = new Date(text + "T00:00:00Z");
  return !isNaN(d) && d.toISOString().slice(0, 10) === text;
}

// [ok, value or message]
function parse(text, spec, nullable) {
  const t = text.trim();
  if (t === "") return nullable ? [true, null] : [false, "a value is required"];
  switch (typeOf(spec)) {
    case "number":
    case "integer": {
      if (!/^-?\d+(\.\d+)?$/.test(t)) return [false, "a number, like 1234.50"];
      const n = Number(t);
      if (spec.type === "integer" && !Number.isInteger(n)) return [false, "a whole number"];
      if (spec.minimum !== undefined && n < spec.minimum) return [false, `at least ${spec.minimum}`];
      if (spec.maximum !== undefined && n > spec.maximum) return [false, `at most ${spec.maximum}`];
      return [true, n];
    }
    case "date":
      return isDate(t) ? [true, t] : [false, "a date, YYYY-MM-DD"];
    case "boolean":
      return t === "true" || t === "false" ? [true, t === "true"] : [false, "true or false"];
    case "enum":
      return spec.enum.includes(t) ? [true, t] : [false, "one of " + spec.enum.join(", ")];
    default:
      if (spec.maxLength !== undefined && t.length > spec.maxLength) return [false, `at most ${spec.maxLength} characters`];
      return [true, t];
  }
}

function check(input) {
  const [ok, result] = parse(input.value, JSON.parse(input.dataset.spec), input.dataset.nullable === "true");
  input.setAttribute("aria-invalid", ok ? "false" : "true");
  input.title = ok ? "" : result;
  const msg = input.closest(".field").querySelector(".msg");
  const bad = $$("input[aria-invalid=true]", input.closest(".field"));
  msg.textContent = bad.length ? bad[0].title : "";
  return [ok, result];
}

function makeInput(value, spec, nullable, label) {
  const input = el("input", { value: toText(value), "aria-label": label, "data-spec": JSON.stringify(spec), "data-nullable": String(nullable) });
  if (spec.enum) {
    const id = "enum-" + Math.random().toString(36).slice(2);
    input.setAttribute("list", id);
    input.after(el("datalist", { id }, ...spec.enum.map((v) => el("option", { value: v }))));
  }
  input.addEventListener("input", () => check(input));
  return input;
}

// --- the page: images and evidence boxes ------------------------------------------------------
function leaves(evidence, out = []) {
  if (!evidence) return out;
  if (Array.isArray(evidence)) evidence.forEach((e) => leaves(e, out));
  else if (evidence.box && evidence.page !== undefined) out.push(evidence);
  else if (typeof evidence === "object") Object.values(evidence).forEach((e) => leaves(e, out));
  return out;
}

function renderPages(doc) {
  const pages = $("#pages");
  pages.replaceChildren();
  for (const n of doc.pages) {
    const holder = el("div", { class: "page", "data-page": n },
      el("img", { src: `/api/doc/${doc.pos}/page/${n}.png`, alt: `page ${n} of ${doc.file}` }));
    for (const f of doc.fields) {
      for (const ev of leaves(f.evidence)) {
        if (ev.page !== n) continue;
        const [x0, y0, x1, y1] = ev.box;
        holder.append(el("div", { class: "box", "data-field": f.name,
          style: `left:${x0 * 100}%;top:${y0 * 100}%;width:${(x1 - x0) * 100}%;height:${(y1 - y0) * 100}%` }));
      }
    }
    pages.append(holder);
  }
}

function highlight(name) {
  $$(".box").forEach((b) => b.classList.toggle("active", b.dataset.field === name));
}

// --- the fields ---------------------------------------------------------------------------------
function confText(f) {
  const c = f.min_confidence;
  return c === null || c === undefined ? "" : c.toFixed(2);
}

function tableBody(f, rows) {
  const tbody = el("tbody");
  for (const row of rows || []) addRow(f, tbody, row);
  return tbody;
}

function addRow(f, tbody, row = {}) {
  const tr = el("tr");
  for (const c of f.columns) tr.append(el("td", {}, makeInput(row[c.name], c.spec, true, `${f.name} ${c.name}`)));
  tr.append(el("td", {}, el("button", { type: "button", tabindex: "-1", title: "delete this row",
    onclick: (e) => { e.preventDefault(); tr.remove(); markDirty(f.name); } }, "✕")));
  tbody.append(tr);
  return tr;
}

function markDirty(name) {
  const node = fieldNode(name);
  if (node) node.dataset.dirty = "true";
}

function renderFields(doc) {
  const list = $("#fields");
  list.replaceChildren();
  doc.fields.forEach((f, i) => {
    const low = f.min_confidence !== null && f.min_confidence !== undefined && f.min_confidence < doc.threshold;
    const head = el("div", { class: "head" },
      el("span", { class: "name" }, f.name),
      el("span", {},
        el("span", { class: "decision" + (f.decision ? " " + f.decision : "") }, f.decision ? (f.decision === "edit" ? "edited" : "accepted") : ""),
        " ", el("span", { class: "conf" + (low ? " low" : ""), title: "lowest confidence" }, confText(f))));
    const node = el("div", { class: "field", role: "listitem", tabindex: "0", "data-field": f.name, "data-index": i });
    node.append(head);
    if (f.kind === "table") {
      const table = el("table", { class: "items" },
        el("thead", {}, el("tr", {}, ...f.columns.map((c) => el("th", {}, c.name)), el("th", {}))),
        tableBody(f, f.value));
      const add = el("button", { type: "button", tabindex: "-1", class: "add-row",
        onclick: (e) => { e.preventDefault(); const tr = addRow(f, $("tbody", table)); markDirty(f.name); $("input", tr).focus(); } }, "+ row");
      node.append(table, add);
    } else {
      node.append(makeInput(f.value, f.spec, f.nullable, f.name));
    }
    node.append(el("div", { class: "msg" }));
    node.addEventListener("focus", () => { state.current = i; highlight(f.name); markCurrent(); });
    node.addEventListener("mouseenter", () => highlight(f.name));
    node.addEventListener("mouseleave", () => highlight(doc.fields[state.current] ? doc.fields[state.current].name : null));
    node.addEventListener("input", () => { node.dataset.dirty = "true"; });
    list.append(node);
  });
}

function fieldNode(name) { return $(`.field[data-field="${CSS.escape(name)}"]`); }

function markCurrent() {
  $$(".field").forEach((n) => n.classList.toggle("current", Number(n.dataset.index) === state.current));
}

function focusField(i) {
  const nodes = $$(".field");
  if (!nodes.length) return;
  state.current = Math.max(0, Math.min(nodes.length - 1, i));
  nodes[state.current].focus();
  nodes[state.current].scrollIntoView({ block: "nearest" });
}

// The field's value from its inputs: [ok, value or message]
function readField(f) {
  const node = fieldNode(f.name);
  if (f.kind !== "table") return check($("input", node));
  const rows = [];
  for (const tr of $$("tbody tr", node)) {
    const row = {};
    const inputs = $$("input", tr);
    for (let k = 0; k < f.columns.length; k++) {
      const [ok, v] = check(inputs[k]);
      if (!ok) return [false, `${f.columns[k].name}: ${v}`];
      row[f.columns[k].name] = v;
    }
    rows.push(row);
  }
  return [true, rows];
}

async function decide(f, action) {
  const [ok, value] = readField(f);
  if (!ok) { say(`${f.name}: not saved (${value})`); return false; }
  const node = fieldNode(f.name);
  const changed = node.dataset.dirty === "true";
  try {
    const saved = await api(`/api/doc/${state.pos}/decide`, { field: f.name, value, action: changed ? "edit" : action });
    f.value = saved.value;
    f.decision = saved.decision;
    node.dataset.dirty = "false";
    const badge = $(".decision", node);
    badge.className = "decision " + saved.decision;
    badge.textContent = saved.decision === "edit" ? "edited" : "accepted";
    say(`${f.name}: ${badge.textContent}`);
    return true;
  } catch (err) {
    $(".msg", node).textContent = err.message;
    say(`${f.name}: not saved (${err.message})`);
    return false;
  }
}

function startEdit() {
  const node = $$(".field")[state.current];
  if (!node) return;
  state.editing = state.current;
  const input = $("input", node);
  if (input) { input.focus(); input.select(); }
}

async function finishEdit(commit) {
  const i = state.editing;
  const f = state.doc.fields[i];
  if (!commit) {
    await load(state.pos, i);  // back to the saved values
    return;
  }
  if (await decide(f, "edit")) {
    state.editing = null;
    focusField(i);
  }
}

// --- documents ----------------------------------------------------------------------------------
async function load(pos, fieldIndex = 0) {
  const doc = await api(`/api/doc/${pos}`);
  state.doc = doc;
  state.pos = doc.pos;
  state.count = doc.count;
  state.editing = null;
  $("#file").textContent = doc.file;
  const status = $("#status");
  status.textContent = doc.status;
  status.className = "status " + doc.status;
  $("#position").textContent = `${doc.pos + 1} / ${doc.count}`;
  $("#threshold").textContent = doc.threshold;
  $("#reasons").textContent = (doc.review_reasons || []).join("; ") || (doc.error || "");
  const raw = $("#raw");
  raw.hidden = !doc.raw;
  raw.textContent = doc.raw || "";
  renderPages(doc);
  renderFields(doc);
  document.title = `glmv review · ${doc.file}`;
  focusField(fieldIndex);
  document.body.dataset.loaded = String(doc.pos);
}

async function go(delta) {
  const next = state.pos + delta;
  if (next < 0 || next >= state.count) { say(delta > 0 ? "that was the last document" : "this is the first document"); return; }
  await load(next);
}

async function acceptConfident() {
  const res = await api(`/api/doc/${state.pos}/accept-confident`, {});
  await load(state.pos, state.current);
  say(`accepted ${res.accepted.length} values at or above ${state.doc.threshold}`);
}

document.addEventListener("keydown", async (e) => {
  if (!state.doc || e.ctrlKey || e.metaKey || e.altKey) return;
  const inInput = e.target instanceof HTMLInputElement;
  if (state.editing !== null || inInput) {
    if (e.key === "Enter") { e.preventDefault(); if (state.editing === null) state.editing = state.current; await finishEdit(true); }
    else if (e.key === "Escape") { e.preventDefault(); await finishEdit(false); }
    return;
  }
  const f = state.doc.fields[state.current];
  switch (e.key) {
    case "j": e.preventDefault(); focusField(state.current + 1); break;
    case "k": e.preventDefault(); focusField(state.current - 1); break;
    case "Enter": e.preventDefault(); if (f && (await decide(f, "accept"))) focusField(state.current + 1); break;
    case "e": e.preventDefault(); startEdit(); break;
    case "n": e.preventDefault(); await go(1); break;
    case "p": e.preventDefault(); await go(-1); break;
    case "a": e.preventDefault(); await acceptConfident(); break;
  }
});

$("#next").addEventListener("click", () => go(1));
$("#prev").addEventListener("click", () => go(-1));
$("#accept-confident").addEventListener("click", acceptConfident);
load(0).catch((err) => say(err.message));
