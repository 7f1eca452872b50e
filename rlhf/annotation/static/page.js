// The ranking page. Model text is only ever set with textContent, never parsed as HTML; the one
// HTML it inserts is the guidelines, rendered on the server from markdown with raw HTML escaped.
// A prompt is a conversation (chat messages, rlhf/chat.py); each response is the turns after it.
"use strict";

// mode: how the current order was made (rank: the list; pairwise: choices between two), or binary:
// the item is one response to judge good or bad.
// fromSuggestion: the list started from the AI judge's ranking (the store records it).
const state = { token: "", item: null, annotator: "", mode: "rank", fromSuggestion: false, guidelines: null };
const $ = (id) => document.getElementById(id);

function tokenFromUrl() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  return fragment.get("token") || sessionStorage.getItem("rlhf-token") || "";
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A busy store (503) or the rate limit (429) is waited out, as Retry-After says, a few times over;
// the ranking stays on the page meanwhile, and a network error leaves it there to resend.
async function api(path, body, attempts = 30) {
  let response;
  for (let attempt = 1; ; attempt++) {
    response = await fetch(path, {
      method: body ? "POST" : "GET",
      headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    if (![429, 503].includes(response.status) || attempt >= attempts) break;
    const wait = Math.min(10, Number(response.headers.get("Retry-After")) || 2);
    $("status").textContent = `The store is busy; trying again in ${wait} s (your ranking is kept).`;
    await sleep(wait * 1000);
  }
  if (response.status === 401) {
    const detail = (await response.json().catch(() => ({}))).detail;
    sessionStorage.removeItem("rlhf-token");
    $("task").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    throw new Error(detail === "token revoked" ? "Token revoked." : "Token refused.");
  }
  if (!response.ok) {
    const detail = (await response.json().catch(() => ({}))).detail;
    throw new Error("The server said: " + (detail || response.statusText) + " (your ranking is kept; try again)");
  }
  return response.json();
}

function showProgress(progress) {
  if (!progress) return; // the store was busy: the last figures stand
  $("progress").textContent = `${progress.done} of ${progress.total} done`;
  $("queue").textContent = `Queue: ${progress.queue_waiting} of ${progress.queue_items} items still wait for people`;
}

function rows() {
  return Array.from($("responses").children);
}

function renumber() {
  let rank = 0;
  rows().forEach((li, position) => {
    const tied = position > 0 && li.querySelector(".tie").checked;
    li.querySelector(".tie").disabled = position === 0;
    if (position === 0) li.querySelector(".tie").checked = false;
    if (!tied) rank = position + 1;
    li.classList.toggle("tied", tied);
    li.classList.toggle("unsafe", li.querySelector(".unsafe-box").checked);
    li.querySelector(".rank").textContent = String(rank);
  });
}

const ROLE_NAMES = { user: "User", assistant: "Assistant", system: "System" };

// A conversation as turns, each with its role shown. A lone message in the expected role (a
// prompt's one user turn, a response's one assistant turn) shows just its text.
function turns(messages, loneRole) {
  const lone = messages.length === 1 && messages[0].role === loneRole;
  return messages.map((message) => {
    const turn = document.createElement("div");
    turn.className = "turn";
    turn.dataset.role = message.role;
    if (!lone) {
      const role = document.createElement("div");
      role.className = "role";
      role.textContent = ROLE_NAMES[message.role] || message.role;
      turn.append(role);
    }
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = message.content; // text, never HTML
    turn.append(content);
    return turn;
  });
}

function checkbox(className, label) {
  const wrapper = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = className;
  box.addEventListener("change", renumber);
  wrapper.append(box, " " + label);
  return wrapper;
}

function responseRow(response) {
  const li = document.createElement("li");
  li.tabIndex = 0;
  li.draggable = true;
  li.dataset.id = response.response_id;
  const rank = document.createElement("span");
  rank.className = "rank";
  const text = document.createElement("div");
  text.className = "text";
  text.replaceChildren(...turns(response.messages || [{ role: "assistant", content: response.text }], "assistant"));
  const controls = document.createElement("div");
  controls.className = "controls";
  controls.append(checkbox("tie", "tie with above"), checkbox("unsafe-box", "unsafe"));
  li.append(rank, text, controls);
  li.addEventListener("dragstart", (event) => {
    event.dataTransfer.setData("text/plain", li.dataset.id);
    li.classList.add("dragging");
  });
  li.addEventListener("dragend", () => li.classList.remove("dragging"));
  li.addEventListener("dragover", (event) => event.preventDefault());
  li.addEventListener("drop", (event) => {
    event.preventDefault();
    const dragged = rows().find((row) => row.dataset.id === event.dataTransfer.getData("text/plain"));
    if (!dragged || dragged === li) return;
    const below = event.offsetY > li.offsetHeight / 2;
    li.parentNode.insertBefore(dragged, below ? li.nextSibling : li);
    renumber();
  });
  li.addEventListener("keydown", onKey);
  return li;
}

function onKey(event) {
  const li = event.currentTarget;
  if (event.key === "ArrowUp" || event.key === "ArrowDown") {
    event.preventDefault();
    const up = event.key === "ArrowUp";
    const neighbour = up ? li.previousElementSibling : li.nextElementSibling;
    if (!neighbour) return;
    if (event.shiftKey) {
      li.parentNode.insertBefore(li, up ? neighbour : neighbour.nextSibling);
      li.focus();
      renumber();
    } else {
      neighbour.focus();
    }
  } else if (/^[1-9]$/.test(event.key)) {
    moveToRank(li, Number(event.key));
  } else if (event.key === "p" || event.key === "P") {
    startPairwise();
  } else if (event.key === "t" || event.key === "T") {
    li.querySelector(".tie").click();
  } else if (event.key === "u" || event.key === "U") {
    li.querySelector(".unsafe-box").click();
  } else if (event.key === "Enter") {
    event.preventDefault();
    submit();
  } else if (event.key === "s" || event.key === "S") {
    skip();
  }
}

// Number key k puts the focused response at position k (rank k when nothing ties above it).
function moveToRank(li, rank) {
  const list = li.parentNode;
  if (rank > list.children.length) return;
  li.remove();
  list.insertBefore(li, list.children[rank - 1] || null);
  li.focus();
  renumber();
}

// Rows in a best-first order, each tied with the one above where `tiedWithAbove` says so.
function arrange(order, tiedWithAbove) {
  const byId = new Map(rows().map((li) => [li.dataset.id, li]));
  $("responses").replaceChildren(...order.map((id) => byId.get(id)));
  rows().forEach((li, position) => (li.querySelector(".tie").checked = !!tiedWithAbove[position]));
  renumber();
}

function show(item) {
  state.item = item;
  state.mode = "rank";
  state.fromSuggestion = !!(item && item.suggestion);
  $("task").hidden = !item;
  $("done").hidden = !!item;
  showRankView();
  if (!item) return;
  $("prompt").replaceChildren(...turns(item.messages || [{ role: "user", content: item.prompt }], "user"));
  if (item.responses.length === 1) return showBinary(item);
  $("responses").replaceChildren(...item.responses.map(responseRow));
  if (state.fromSuggestion) arrange(item.suggestion.order, item.suggestion.tied_with_above);
  $("suggested").hidden = !state.fromSuggestion;
  renumber();
  if (!$("guidelines-dialog").open) rows()[0].focus();
}

// --- pairwise mode: two responses at a time; the choices place each response by binary insertion
// into tie groups (best first), about K log2 K choices for K responses instead of C(K,2). ---

const pairwise = { active: false, groups: [], pending: [], candidate: null, lo: 0, hi: 0, choices: 0 };

function responseById(id) {
  return state.item.responses.find((response) => response.response_id === id);
}

function showRankView() {
  pairwise.active = false;
  $("rank-view").hidden = false;
  $("pair-view").hidden = true;
  $("binary-view").hidden = true;
  $("submit").hidden = $("pairwise").hidden = false;
}

// --- binary mode: an item of one response asks for a thumbs up or down, with an optional reason ---

function showBinary(item) {
  const response = item.responses[0];
  state.mode = "binary";
  state.fromSuggestion = false;
  $("rank-view").hidden = true;
  $("binary-view").hidden = false;
  $("submit").hidden = $("pairwise").hidden = true;
  $("suggested").hidden = true;
  $("responses").replaceChildren();
  $("binary-response").replaceChildren(
    ...turns(response.messages || [{ role: "assistant", content: response.text }], "assistant")
  );
  $("binary-reason").value = "";
  if (!$("guidelines-dialog").open) $("thumb-up").focus();
}

async function label(desirable) {
  if (!state.item || state.mode !== "binary") return;
  try {
    await api("/api/label", {
      item_id: state.item.item_id,
      response_id: state.item.responses[0].response_id,
      desirable,
      reason: $("binary-reason").value.trim() || null,
    });
    await load();
  } catch (error) {
    $("status").textContent = error.message;
  }
}

// G, B and S outside the reason's box (in it, they are letters of the reason) and the guidelines.
function onBinaryKey(event) {
  if (state.mode !== "binary" || event.target === $("binary-reason") || $("guidelines-dialog").open) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const action = { g: () => label(true), b: () => label(false), s: skip }[event.key.toLowerCase()];
  if (action) {
    event.preventDefault();
    action();
  }
}

function startPairwise() {
  if (!state.item) return;
  const ids = state.item.responses.map((response) => response.response_id); // display order, not a suggestion
  Object.assign(pairwise, { active: true, groups: [[ids[0]]], pending: ids.slice(1), choices: 0 });
  $("rank-view").hidden = true;
  $("pair-view").hidden = false;
  $("suggested").hidden = true;
  nextCandidate();
}

function nextCandidate() {
  if (!pairwise.pending.length) return finishPairwise();
  pairwise.candidate = pairwise.pending.shift();
  pairwise.lo = 0;
  pairwise.hi = pairwise.groups.length;
  showPair();
}

function opponent() {
  return pairwise.groups[Math.floor((pairwise.lo + pairwise.hi) / 2)][0];
}

function showPair() {
  for (const [side, id] of [["pair-a", pairwise.candidate], ["pair-b", opponent()]]) {
    const response = responseById(id);
    $(side).dataset.id = id;
    $(side).querySelector(".text").replaceChildren(
      ...turns(response.messages || [{ role: "assistant", content: response.text }], "assistant")
    );
  }
  $("pair-progress").textContent = `${pairwise.choices} choices made; ${pairwise.pending.length + 1} responses to place`;
  $("choose-a").focus();
}

// outcome: "a" (the candidate, on the left, is better), "b" (the one it is compared with), "tie".
function choose(outcome) {
  if (!pairwise.active) return;
  pairwise.choices += 1;
  const middle = Math.floor((pairwise.lo + pairwise.hi) / 2);
  if (outcome === "tie") {
    pairwise.groups[middle].push(pairwise.candidate);
    return nextCandidate();
  }
  if (outcome === "a") pairwise.hi = middle;
  else pairwise.lo = middle + 1;
  if (pairwise.lo === pairwise.hi) {
    pairwise.groups.splice(pairwise.lo, 0, [pairwise.candidate]);
    return nextCandidate();
  }
  showPair();
}

function finishPairwise() {
  const order = pairwise.groups.flat();
  const tied = pairwise.groups.flatMap((group) => group.map((_, n) => n > 0));
  showRankView();
  arrange(order, tied);
  state.mode = "pairwise";
  state.fromSuggestion = false;
  $("status").textContent = "Your choices as a ranking: check it, then press Enter or Submit.";
  rows()[0].focus();
}

function onPairKey(event) {
  if (!pairwise.active) return;
  const key = event.key.toLowerCase();
  const outcome = { a: "a", arrowleft: "a", b: "b", arrowright: "b", t: "tie" }[key];
  if (outcome) {
    event.preventDefault();
    choose(outcome);
  } else if (key === "escape") {
    showRankView();
    rows()[0].focus();
  }
}

// --- guidelines: beside the task, and in a dialog the first time an annotator opens the page
// (and again whenever they change) ---

function fillGuidelines(container, guidelines) {
  const list = document.createElement("dl");
  for (const principle of guidelines.principles) {
    const name = document.createElement("dt");
    name.textContent = principle.name.replaceAll("_", " ");
    const description = document.createElement("dd");
    description.textContent = principle.description;
    list.append(name, description);
  }
  const text = document.createElement("div");
  text.className = "guidelines-text";
  text.innerHTML = guidelines.html; // server-rendered markdown with raw HTML escaped (guidelines.py)
  container.replaceChildren(...(guidelines.principles.length ? [list] : []), text);
}

async function loadGuidelines() {
  const guidelines = await api("/api/guidelines");
  if (!guidelines.principles.length && !guidelines.html) return;
  state.guidelines = guidelines;
  for (const container of document.querySelectorAll(".guidelines")) fillGuidelines(container, guidelines);
  $("guidelines-panel").hidden = false;
  $("show-guidelines").hidden = false;
  const seenKey = `rlhf-guidelines-seen-${state.annotator}`;
  if (localStorage.getItem(seenKey) !== guidelines.digest) $("guidelines-dialog").showModal();
}

function closeGuidelines() {
  if (state.guidelines) localStorage.setItem(`rlhf-guidelines-seen-${state.annotator}`, state.guidelines.digest);
  $("guidelines-dialog").close();
  if (state.mode === "binary") $("thumb-up").focus();
  else if (rows().length && !pairwise.active) rows()[0].focus();
}

async function load() {
  try {
    const next = await api("/api/next");
    $("status").textContent = "";
    const first = state.annotator !== next.annotator;
    state.annotator = next.annotator;
    $("who").textContent = `Signed in as ${next.annotator}`;
    showProgress(next.progress);
    if (first) await loadGuidelines();
    show(next.item);
  } catch (error) {
    $("status").textContent = error.message;
  }
}

async function submit() {
  if (!state.item) return;
  const ordered = rows();
  try {
    await api("/api/submit", {
      item_id: state.item.item_id,
      order: ordered.map((li) => li.dataset.id),
      tied_with_above: ordered.map((li, i) => i > 0 && li.querySelector(".tie").checked),
      unsafe: ordered.filter((li) => li.querySelector(".unsafe-box").checked).map((li) => li.dataset.id),
      from_suggestion: state.fromSuggestion,
      mode: state.mode,
    });
    await load();
  } catch (error) {
    $("status").textContent = error.message;
  }
}

async function skip() {
  if (!state.item) return;
  try {
    await api("/api/skip", { item_id: state.item.item_id });
    await load();
  } catch (error) {
    $("status").textContent = error.message;
  }
}

function signInFromUrl() {
  state.token = tokenFromUrl();
  if (state.token) {
    sessionStorage.setItem("rlhf-token", state.token);
    $("login").hidden = true;
    load();
  } else {
    $("login").hidden = false;
    $("progress").textContent = "";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("pairwise").addEventListener("click", startPairwise);
  $("choose-a").addEventListener("click", () => choose("a"));
  $("choose-b").addEventListener("click", () => choose("b"));
  $("choose-tie").addEventListener("click", () => choose("tie"));
  document.addEventListener("keydown", onPairKey);
  document.addEventListener("keydown", onBinaryKey);
  $("thumb-up").addEventListener("click", () => label(true));
  $("thumb-down").addEventListener("click", () => label(false));
  $("show-guidelines").addEventListener("click", () => $("guidelines-dialog").showModal());
  $("guidelines-ok").addEventListener("click", closeGuidelines);
  $("guidelines-dialog").addEventListener("cancel", closeGuidelines);
  window.addEventListener("hashchange", signInFromUrl); // another person's link in the same tab
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("rlhf-token", state.token);
    $("login").hidden = true;
    load();
  });
  signInFromUrl();
});
