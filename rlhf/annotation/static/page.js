// The ranking page. Model text is only ever set with textContent, never parsed as HTML.
// A prompt is a conversation (chat messages, rlhf/chat.py); each response is the turns after it.
"use strict";

const state = { token: "", item: null };
const $ = (id) => document.getElementById(id);

function tokenFromUrl() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  return fragment.get("token") || sessionStorage.getItem("rlhf-token") || "";
}

async function api(path, body) {
  const response = await fetch(path, {
    method: body ? "POST" : "GET",
    headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) {
    sessionStorage.removeItem("rlhf-token");
    $("task").hidden = true;
    $("login").hidden = false;
    throw new Error("Token refused.");
  }
  if (!response.ok) throw new Error("The server said: " + (await response.text()));
  return response.json();
}

function showProgress(progress) {
  $("progress").textContent = `${progress.done} of ${progress.total} done`;
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

function show(item) {
  state.item = item;
  $("task").hidden = !item;
  $("done").hidden = !!item;
  if (!item) return;
  $("prompt").replaceChildren(...turns(item.messages || [{ role: "user", content: item.prompt }], "user"));
  $("responses").replaceChildren(...item.responses.map(responseRow));
  renumber();
  rows()[0].focus();
}

async function load() {
  try {
    const next = await api("/api/next");
    $("status").textContent = "";
    showProgress(next.progress);
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

document.addEventListener("DOMContentLoaded", () => {
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("rlhf-token", state.token);
    $("login").hidden = true;
    load();
  });
  state.token = tokenFromUrl();
  if (state.token) {
    sessionStorage.setItem("rlhf-token", state.token);
    load();
  } else {
    $("login").hidden = false;
    $("progress").textContent = "";
  }
});
