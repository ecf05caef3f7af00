// The chat page: pick a name and a room, see its messages and who is online, send.
// rt.js does the protocol (connect, subscribe, reconnect and recover); this file the page.
"use strict";

const $ = (id) => document.getElementById(id);
let rt = null; // the connection (rtserve.js, served by rtserve), made when you join
let name = "";
let channel = null; // "chat:<room>"
let subscription = null;
const members = new Map(); // client id -> { client, user, info }
let newest = 0; // the room's newest offset known here: comings and goings are shown after it

function status(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showError(message) {
  $("error").textContent = message || "";
}

function onState(state, detail) {
  if (state === "connected") status(`online as ${detail.session?.user ?? name}`, "on");
  else if (state === "disconnected") status("reconnecting…", "wait");
  else if (state === "closed") {
    status("offline", "off");
    enable(false);
    if (detail.error) showError(detail.error.message); // on_connect refused (app.py)
    rt = null;
    channel = null;
  }
}

function join(event) {
  event.preventDefault();
  const newName = $("name").value.trim();
  const room = $("room").value.trim();
  localStorage.setItem("chat", JSON.stringify({ name: newName, room }));
  showError("");
  if (rt === null || newName !== name) {
    if (rt !== null) rt.close();
    name = newName;
    channel = null;
    subscription = null;
    rt = new Rtserve({ data: { name } });
    rt.on("state", onState);
    rt.connect();
  }
  enter(`chat:${room}`);
}

function enter(newChannel) {
  if (newChannel === channel) return;
  if (subscription !== null) subscription.unsubscribe();
  channel = newChannel;
  enable(false);
  $("messages").replaceChildren();
  newest = 0;
  members.clear();
  showMembers();
  subscription = rt.subscribe(channel, {
    onPublication: showMessage,
    onSubscribed(result) {
      newest = Math.max(newest, result.offset ?? 0);
      enable(true);
      if (!result.recovered) loadHistory(); // first time, or the gap could not be filled
      loadPresence(); // who is here now (also after a reconnect)
    },
    onUnrecovered: () => $("messages").replaceChildren(),
    onJoin(info) {
      const here = names().has(memberName(info)); // already here on another page
      members.set(info.client, info);
      showMembers();
      if (!here) showEvent(`${memberName(info)} joined`);
    },
    onLeave(info) {
      members.delete(info.client);
      showMembers();
      if (!names().has(memberName(info))) showEvent(`${memberName(info)} left`);
    },
    onError: (error) => showError(error.message),
  });
}

async function loadHistory() {
  const here = channel;
  try {
    const result = await rt.history(here, { limit: 100 });
    if (here === channel) result.publications.forEach((pub) => showMessage({ channel: here, ...pub }));
  } catch (error) {
    showError(error.message);
  }
}

async function loadPresence() {
  const here = channel;
  try {
    const result = await rt.presence(here);
    if (here !== channel) return;
    members.clear();
    for (const info of Object.values(result.clients)) members.set(info.client, info);
    showMembers();
  } catch (error) {
    showError(error.message);
  }
}

function showMessage(pub) {
  if (pub.channel !== channel) return;
  const list = $("messages");
  if (list.querySelector(`[data-offset="${pub.offset}"]`)) return; // already shown
  const data = pub.data && typeof pub.data === "object" ? pub.data : { text: JSON.stringify(pub.data) };
  const item = document.createElement("li");
  item.dataset.offset = pub.offset;
  newest = Math.max(newest, pub.offset);
  if (pub.info && rt && pub.info.client === rt.session?.client) item.className = "mine";
  const time = document.createElement("time");
  time.textContent = data.time ? new Date(data.time).toLocaleTimeString() : "";
  const author = document.createElement("b");
  author.textContent = data.name || "server";
  const text = document.createElement("span");
  text.textContent = data.text ?? "";
  item.append(time, author, text);
  insert(item, pub.offset);
}

// "Ada joined", "Ada left": after the messages seen so far, before the ones still to come.
function showEvent(text) {
  const item = Object.assign(document.createElement("li"), { className: "event", textContent: text });
  item.dataset.offset = newest + 0.5;
  insert(item, newest + 0.5);
}

// Keep offset order: history may arrive after live messages.
function insert(item, offset) {
  const list = $("messages");
  let before = null;
  for (let node = list.lastElementChild; node && Number(node.dataset.offset) > offset; node = node.previousElementSibling) {
    before = node;
  }
  list.insertBefore(item, before);
  if (before === null) list.scrollTop = list.scrollHeight;
}

function memberName(member) {
  return member.info?.name || member.user || "anonymous";
}

function names() {
  return new Set([...members.values()].map(memberName));
}

function showMembers() {
  const online = names();
  $("members").replaceChildren(
    ...[...online].sort().map((n) => Object.assign(document.createElement("li"), { textContent: n })),
  );
  $("count").textContent = online.size ? `(${online.size})` : "";
}

function enable(on) {
  for (const element of $("send").elements) element.disabled = !on;
  if (on) $("text").focus();
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim() || channel === null) return;
  try {
    await rt.publish(channel, { text });
    $("text").value = "";
    showError("");
  } catch (error) {
    showError(error.message); // refused by on_publish, rate limited, or disconnected
  }
}

$("join").addEventListener("submit", join);
$("send").addEventListener("submit", send);
const saved = JSON.parse(localStorage.getItem("chat") || "{}");
if (saved.room) $("room").value = saved.room;
if (saved.name) {
  $("name").value = saved.name;
  $("join").requestSubmit();
}
