// The team chat page. rtserve.js does the protocol (connect, subscribe, reconnect, recover);
// this file shows a room: its stored messages (paged from GET /rooms/<room>/messages), live
// ones from chat:<room>, who is online (presence, join/leave) and who is typing (typing:<room>).
// Messages are ordered and de-duplicated by their database id, whichever way they came.
"use strict";

const $ = (id) => document.getElementById(id);
const TYPING_EVERY = 3000; // ms between two typing events we send while typing
const TYPING_SHOWN = 5000; // ms a typing event is shown after it arrives

let rt = null; // the connection, made when you join
let name = "";
let room = null;
let subs = []; // this room's two subscriptions
let oldest = null; // id of the oldest message shown (for "Load older")
let lastTyping = 0; // when we last said we are typing
let pending = null; // { text, nonce } of a message not yet confirmed: a retry reuses the nonce
const members = new Map(); // client id -> { client, user, info }
const typing = new Map(); // name -> timer that forgets it

function status(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showError(message) {
  $("error").textContent = message || "";
}

function onState(state, detail) {
  if (state === "connected") status(`online as ${name} (${detail.transport})`, "on");
  else if (state === "disconnected") status("reconnecting…", "wait");
  else if (state === "closed") {
    status("offline", "off");
    enable(false);
    if (detail.error) showError(detail.error.message); // refused by on_connect
    rt = null;
    room = null;
  }
}

function join(event) {
  event.preventDefault();
  const newName = $("name").value.trim();
  const newRoom = $("room").value.trim();
  localStorage.setItem("team_chat", JSON.stringify({ name: newName, room: newRoom }));
  showError("");
  if (rt === null || newName !== name) {
    if (rt !== null) rt.close();
    name = newName;
    room = null;
    subs = [];
    rt = new Rtserve({ data: { name } });
    rt.on("state", onState);
    rt.connect();
  }
  enter(newRoom);
}

function enter(newRoom) {
  if (newRoom === room) return;
  subs.forEach((sub) => sub.unsubscribe());
  room = newRoom;
  enable(false);
  $("messages").replaceChildren();
  oldest = null;
  $("older").hidden = true;
  members.clear();
  showMembers();
  typing.forEach((timer) => clearTimeout(timer));
  typing.clear();
  showTyping();
  const here = room;
  subs = [
    rt.subscribe(`chat:${here}`, {
      onPublication: (pub) => here === room && showMessage(pub.data),
      onSubscribed(result) {
        enable(true);
        // First time, or after a gap the channel's history could not fill: the database has
        // everything. (A recovered reconnect got what it missed through onPublication.)
        if (!result.recovered) loadMessages(here, null);
        loadPresence(here); // who is here now (also after a reconnect)
      },
      onJoin(info) {
        members.set(info.client, info);
        showMembers();
      },
      onLeave(info) {
        members.delete(info.client);
        showMembers();
      },
      onError: (error) => showError(error.message),
    }),
    rt.subscribe(`typing:${here}`, {
      onPublication: (pub) => here === room && sawTyping(pub.data),
    }),
  ];
}

async function loadMessages(here, before) {
  const query = new URLSearchParams({ limit: "50" });
  if (before !== null) query.set("before", String(before));
  try {
    const response = await fetch(`/rooms/${encodeURIComponent(here)}/messages?${query}`);
    if (!response.ok) throw new Error(`loading messages: HTTP ${response.status}`);
    const page = await response.json();
    if (here !== room) return;
    const list = $("messages");
    const wasEmpty = list.children.length === 0;
    const fromBottom = list.scrollHeight - list.scrollTop;
    page.messages.forEach(showMessage);
    // `more`: older messages exist before this page. It tells about the oldest one shown
    // only if this page holds it (a reload of the newest page after older ones does not).
    // Set before scrolling: the button takes room from the list.
    if (page.messages.length === 0 || page.messages[0].id === oldest) $("older").hidden = !page.more;
    if (wasEmpty) list.scrollTop = list.scrollHeight; // the newest at the bottom, in view
    else if (before !== null) list.scrollTop = list.scrollHeight - fromBottom; // stay put
  } catch (error) {
    showError(error.message);
  }
}

async function loadPresence(here) {
  try {
    const result = await rt.presence(`chat:${here}`);
    if (here !== room) return;
    members.clear();
    for (const info of Object.values(result.clients)) members.set(info.client, info);
    showMembers();
  } catch (error) {
    showError(error.message);
  }
}

function showMessage(message) {
  if (!message || typeof message.id !== "number") return; // not a stored message
  const list = $("messages");
  if (list.querySelector(`[data-id="${message.id}"]`)) return; // already shown
  forgetTyping(message.name); // they sent what they were typing
  const item = document.createElement("li");
  item.dataset.id = message.id;
  if (message.name === name) item.className = "mine";
  const time = document.createElement("time");
  time.dateTime = message.time;
  time.textContent = new Date(message.time).toLocaleString();
  const author = document.createElement("b");
  author.textContent = message.name;
  const text = document.createElement("span");
  text.textContent = message.text;
  item.append(time, author, text);
  // Keep id order: pages of older messages arrive after newer live ones.
  let before = null;
  for (let node = list.lastElementChild; node && Number(node.dataset.id) > message.id; node = node.previousElementSibling) {
    before = node;
  }
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.insertBefore(item, before);
  if (oldest === null || message.id < oldest) oldest = message.id;
  if (before === null && atBottom) list.scrollTop = list.scrollHeight;
}

function sawTyping(event) {
  if (!event || event.name === name) return;
  clearTimeout(typing.get(event.name));
  if (event.typing) typing.set(event.name, setTimeout(() => forgetTyping(event.name), TYPING_SHOWN));
  else typing.delete(event.name);
  showTyping();
}

function forgetTyping(who) {
  if (!typing.has(who)) return;
  clearTimeout(typing.get(who));
  typing.delete(who);
  showTyping();
}

function showTyping() {
  const names = [...typing.keys()].sort();
  $("typing").textContent =
    names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length <= 3 ? `${names.join(", ")} are typing…` : "several people are typing…";
}

function showMembers() {
  const names = new Set([...members.values()].map((m) => m.info?.name || m.user || "anonymous"));
  $("members").replaceChildren(
    ...[...names].sort().map((n) => Object.assign(document.createElement("li"), { textContent: n })),
  );
  $("count").textContent = names.size ? `(${names.size})` : "";
}

function enable(on) {
  for (const element of $("send").elements) element.disabled = !on;
  if (on) $("text").focus();
}

function newNonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function typed() {
  const now = Date.now();
  if (room === null || now - lastTyping < TYPING_EVERY || !$("text").value.trim()) return;
  lastTyping = now;
  // Best effort: a rate-limited or lost typing event does not matter.
  rt.publish(`typing:${room}`, { typing: true }).catch(() => {});
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim() || room === null) return;
  // The same text again (after a failure) keeps its nonce, so it is stored and shown once.
  if (pending === null || pending.text !== text) pending = { text, nonce: newNonce() };
  const { nonce } = pending;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await rt.publish(`chat:${room}`, { text, nonce }, { idempotency_key: nonce });
      if (pending?.nonce === nonce) pending = null;
      if ($("text").value === text) $("text").value = "";
      lastTyping = 0;
      showError("");
      return;
    } catch (error) {
      // Code 0: the connection dropped with the publish in flight; it may have landed.
      // Repeating it with the same nonce and idempotency key is safe, once.
      if (error.code === 0 && attempt === 0) continue;
      showError(error.message); // refused by on_publish, rate limited, too large, ...
      return;
    }
  }
}

$("join").addEventListener("submit", join);
$("send").addEventListener("submit", send);
$("text").addEventListener("input", typed);
$("older").addEventListener("click", () => room !== null && oldest !== null && loadMessages(room, oldest));
const saved = JSON.parse(localStorage.getItem("team_chat") || "{}");
if (saved.room) $("room").value = saved.room;
if (saved.name) {
  $("name").value = saved.name;
  $("join").requestSubmit();
}
